"""Shared foundations: errors, atomic file I/O, paths, devices, distributed processes, option names."""
