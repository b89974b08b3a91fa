"""Domain errors. Their messages are safe to show to clients; gateway/errors.py maps each
class to one gRPC status code."""

from __future__ import annotations


class InterestError(Exception):
    """Base of every error a client may see, with a message that says what was wrong."""


class InvalidInput(InterestError):
    """Malformed request or event (-> INVALID_ARGUMENT)."""


class NotFound(InterestError):
    """Unknown user or platform (-> NOT_FOUND)."""


class Unavailable(InterestError):
    """A dependency (Triton, the catalogue) is not ready (-> UNAVAILABLE)."""


class Overloaded(InterestError):
    """Too much in flight (-> RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(InterestError):
    """The caller's deadline passed before the work finished (-> DEADLINE_EXCEEDED)."""


class Unauthenticated(InterestError):
    """Missing or wrong credentials (-> UNAUTHENTICATED)."""


class PermissionDenied(InterestError):
    """Credentials valid but out of scope (-> PERMISSION_DENIED)."""
