"""The dock link: framed, windowed, authenticated messages over USB serial (docs/PROTOCOL.md).

Both ends import it: the device (``firmware.offload``) and the dock station (``dock.client``).
"""
