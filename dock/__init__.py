"""The dock-station side: pull, verify and export evidence."""
