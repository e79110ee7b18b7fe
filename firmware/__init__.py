"""bodycam firmware: the device daemon, its controls and state machine, offload and updates."""

__version__ = "0.1.0"
