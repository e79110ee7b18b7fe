"""Opening the dock link's serial port, and the errors both ends of the link raise.

A body camera's USB serial port is shared by nothing: a second program on the same tty would
read half of the other's frames, so the port is opened exclusively and a second opener gets
one line saying so (``PortBusy``), never a confusing authentication failure.
"""

from __future__ import annotations

import errno
import time

import serial


class LinkError(Exception):
    """The dock link failed: the port vanished, the peer went silent, or it misbehaved."""


class LinkClosed(LinkError):
    """The peer closed the session or the cable was pulled."""


class LinkTimeout(LinkError):
    """Nothing arrived in time."""


class PortBusy(LinkError):
    """Another program already has the port open (a second pull, a terminal, a daemon)."""


def open_port(url: str, timeout: float = 0.1) -> serial.SerialBase:
    """Open a serial port by path or pyserial URL (``/dev/ttyACM0``, ``loop://`` ...), exclusively.

    Two programs on one tty would each read half of the other's frames (a second pull would
    look like an impostor to the first), so the port is locked (``flock``, pyserial's
    ``exclusive``) and a second opener gets PortBusy. The kernel also answers a non-blocking
    open of a tty with EAGAIN while that tty is being closed or hung up elsewhere, so EAGAIN
    is tried again for a moment before it is taken to mean "busy".
    """
    for attempt in range(_BUSY_TRIES):
        try:
            return serial.serial_for_url(url, baudrate=115200, timeout=timeout, write_timeout=None, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            code = getattr(exc, "errno", None)
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) and attempt + 1 < _BUSY_TRIES:
                time.sleep(_BUSY_PAUSE)
                continue
            _raise_open_error(url, exc)
    raise AssertionError("the last attempt raises")


_BUSY_TRIES, _BUSY_PAUSE = 10, 0.05   # half a second before "port busy"


def _raise_open_error(url: str, exc: BaseException) -> None:
    """One line for a port that would not open."""
    code = getattr(exc, "errno", None)
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
        raise PortBusy(f"port busy: {url} is already open in another program (another pull or a "
                       "terminal?)") from None
    if code == errno.ENOENT:
        raise LinkError(f"cannot open {url}: no such port") from None
    raise LinkError(f"cannot open {url}: {exc}") from None
