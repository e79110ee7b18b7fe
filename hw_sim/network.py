"""A simulated network between the dock and the evidence store: a TCP relay with faults.

The dock talks to ``relay.endpoint`` instead of the store's; the relay copies bytes both
ways over real sockets and can

* ``cut()`` the network: close every connection and refuse new ones (an outage),
* ``restore()`` it,
* ``stall_after(n)``: forward the next ``n`` bytes towards the store, then hold everything
  (a link that goes dead mid-upload); ``stalled`` is set once it holds, so a test can act
  at exactly that moment (e.g. SIGKILL the dock) without guessing a time.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)


class TcpRelay:
    """``with TcpRelay(("127.0.0.1", store_port)) as net: ...net.endpoint...``"""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._up = True
        self._budget: int | None = None       # bytes still allowed towards the store; None: no limit
        self._budget_changed = threading.Condition(self._lock)
        self.stalled = threading.Event()
        self.bytes_up = 0                     # towards the store, over all connections
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while up and data:
                    n = self._take(len(data))
                    if n == 0:
                        return
                    dst.sendall(data[:n])
                    data = data[n:]
                if data:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _take(self, want: int) -> int:
        """How many of ``want`` bytes may go towards the store now; holds (blocks) while the
        stall budget is spent; 0 once the network is cut."""
        with self._lock:
            while self._budget is not None and self._budget <= 0 and self._up:
                self.stalled.set()
                self._budget_changed.wait()
            if not self._up:
                return 0
            n = want if self._budget is None else min(want, self._budget)
            if self._budget is not None:
                self._budget -= n
            self.bytes_up += n
            return n

    def stall_after(self, n: int) -> None:
        """Let ``n`` more bytes through towards the store, then hold everything."""
        with self._lock:
            self._budget = n
            self.stalled.clear()
            self._budget_changed.notify_all()

    def unstall(self) -> None:
        with self._lock:
            self._budget = None
            self.stalled.clear()
            self._budget_changed.notify_all()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        with self._lock:
            self._up = False
            conns, self._conns = self._conns, []
            self._budget_changed.notify_all()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        with self._lock:
            self._up = True
            self._budget = None
            self.stalled.clear()

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def __enter__(self) -> "TcpRelay":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
