"""Domain errors. The web layer maps each class to an HTTP status in one table."""


class NopardError(Exception):
    """Base of every error a client is told about; the message is for a human."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(NopardError):
    """The request is malformed: bad JSON, bad name, bad field."""


class AuthenticationRequired(NopardError):
    """No credentials were given where they are needed."""


class BadCredentials(NopardError):
    """The credentials given are wrong, unknown or revoked."""

    def __init__(self, message: str, scheme: str = "Basic") -> None:
        super().__init__(message)
        self.scheme = scheme


class OneTimePasswordRequired(NopardError):
    """Two-factor authentication wants a one-time password that was not sent, or was wrong or used.

    Answered 401 with ``WWW-Authenticate: OTP``, which npm turns into EOTP (and a prompt on a
    terminal); the message says "one-time password" for the clients that look for it instead.
    """


class PermissionDenied(NopardError):
    """The user is known but may not do this."""


class NotFound(NopardError):
    """No such package, version, tarball, user or token."""


class Conflict(NopardError):
    """The request contradicts what is stored (e.g. a different tarball for a version)."""


class HistoryGone(NopardError):
    """What was asked for is older than the history kept (a changes feed's ``since``)."""


class VersionExists(NopardError):
    """A publish names a version that is already published."""


class IntegrityMismatch(NopardError):
    """Bytes do not match the checksum that was declared for them."""


class PayloadTooLarge(NopardError):
    """The request body is larger than the configured limit."""


class UpstreamUnavailable(NopardError):
    """The upstream did not answer (timeout, refused, 5xx) and nothing cached can stand in."""


class UpstreamBadContent(NopardError):
    """The upstream answered with something nopard refuses to keep (e.g. a corrupt tarball)."""


class TooManyAttempts(NopardError):
    """Too many failed password checks lately (brute force); try again in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class VersionWithheld(NopardError):
    """A version the firewall withholds; ``details`` (kind, reason, until...) go into the JSON answer."""

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class VersionQuarantined(VersionWithheld):
    """A mirrored version younger than NOPARD_MIN_RELEASE_AGE (or without a time): not served yet."""


class VersionBlocked(VersionWithheld):
    """A version an admin or an advisory blocked."""
