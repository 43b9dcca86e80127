"""The command line: a thin layer over the Python API, one grammar for every task."""
