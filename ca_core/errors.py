"""The error tree shared by every component.

Each error carries a stable ``code`` (part of the API contract), a message a person can act on and,
where one field is at fault, the name of that field. The HTTP layer maps the classes below to status
codes in one place (plumbing/http.py); domain code never speaks HTTP.
"""
from __future__ import annotations


class ShomeiError(Exception):
    """Base class: a rejection with a stable code."""

    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None,
                 message_ja: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.message_ja = message_ja
        if code is not None:
            self.code = code

    def as_dict(self) -> dict:
        body = {"code": self.code, "message": self.message, "field": self.field}
        if self.message_ja:
            body["message_ja"] = self.message_ja
        return body


class InvalidRequest(ShomeiError):
    """The request is malformed or a value breaks a rule (HTTP 400/422)."""

    code = "invalid_request"


class PolicyViolation(InvalidRequest):
    """Well-formed, but a domain rule forbids it (e.g. a signing certificate for a minor)."""

    code = "policy_violation"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class RequestTimeout(InvalidRequest):
    """The request did not arrive in time (a slow sender); nothing was done."""

    code = "request_timeout"


class UnsupportedMediaType(InvalidRequest):
    code = "unsupported_media_type"


class Unauthenticated(ShomeiError):
    code = "unauthenticated"


class Forbidden(ShomeiError):
    code = "forbidden"


class NotFound(ShomeiError):
    code = "not_found"


class Conflict(ShomeiError):
    """The request contradicts recorded state (idempotency key reuse, already revoked, ...)."""

    code = "conflict"


class Unavailable(ShomeiError):
    """A dependency (token, database) cannot serve now; nothing was recorded. Retry later."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class HSMError(Unavailable):
    """The token refused or failed an operation."""

    code = "hsm_unavailable"


class ConfigError(ShomeiError):
    """The configuration is invalid; raised at start, never during a request."""

    code = "config_error"
