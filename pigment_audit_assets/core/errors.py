"""Errors the core raises. Each message names what the user should fix and never holds a key."""


class PigmentAuditError(Exception):
    """Base class of the project's own errors."""


class ConfigError(PigmentAuditError):
    """A setting is missing or invalid; the message names the variable or field."""


class PigmentApiError(PigmentAuditError):
    """Pigment answered with an error that retrying will not fix (400, 401, 403, 404, ...)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PigmentUnavailableError(PigmentAuditError):
    """Pigment kept failing (429, 5xx, broken answers) for longer than the retry patience."""


class LookbackError(PigmentAuditError):
    """A day lies beyond the 180 days the Audit API can reach."""


class ImportFailedError(PigmentAuditError):
    """Pigment reported a pushed import as Failed, or it did not finish in time."""


class PushAnswerLostError(PigmentAuditError):
    """Pigment answered 200 ("Import started") to a push, but the body with the id was cut.

    The import exists in Pigment, so pushing the chunk again would import its rows twice.
    """


class StorageError(PigmentAuditError, OSError):
    """A file or object could not be read or written; the message names it and the setting."""


class DayLeaseHeldError(PigmentAuditError):
    """Another run holds one of the day's leases (raw file or import); the message names
    it."""
