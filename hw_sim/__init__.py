"""Simulated hardware: camera, pins, battery and USB link, behind the same seams as the real ones."""
