"""Errors that cross module boundaries, importable without torch."""


class DataError(RuntimeError):
    """A data file is missing, truncated or not what it should be; the message names it."""
