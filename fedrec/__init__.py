"""fedrec: the `fedrec` command line, grouped by user job."""

__version__ = "0.1.0"
