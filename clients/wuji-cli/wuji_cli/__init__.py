"""wuji: the command-line client of the Wuji platform (五集) for staff and department systems."""
__version__ = "0.1.0"
