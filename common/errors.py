"""Errors that cross module boundaries, importable without torch."""


class DataError(RuntimeError):
    """A data file is missing, truncated or not what it should be; the message names it."""


class MissingExtra(RuntimeError):
    """A library that an optional feature needs is not installed here; the message names the package."""


# The read side's errors (common/reads.py): the CLI turns them into exit codes, the API into statuses.
class NotFound(LookupError):
    """An unknown experiment or sample (API 404)."""


class NotReady(RuntimeError):
    """Not computed yet, or in the wrong state for this (API 409)."""


class Conflict(NotReady):
    """A name already taken (API 409, as any state that forbids the request)."""


class Invalid(ValueError):
    """A value that cannot be used; the message names the field (API 422, CLI exit 2)."""
