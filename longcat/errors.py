"""Exception types shared by the engine, the services and the CLI.

Each carries the request field at fault, so a gRPC servicer can map it to a canonical status code with
a message that names the field (INVALID_ARGUMENT, NOT_FOUND, ...), and the CLI can print one clear line.
"""

from __future__ import annotations


class LongCatError(Exception):
    """Base class. ``field`` names the request field at fault, when there is one."""

    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class InvalidArgument(LongCatError, ValueError):
    code = "INVALID_ARGUMENT"


class InvalidImage(InvalidArgument):
    """Image bytes that cannot be decoded, or an image we cannot use."""


class PromptTooLong(InvalidArgument):
    """A prompt over the model's 512-token limit, with truncation disabled."""


class NotFound(LongCatError, LookupError):
    code = "NOT_FOUND"


class AdapterNotFound(NotFound):
    pass


class AdapterMismatch(InvalidArgument):
    """An adapter trained for another architecture (its tensor shapes or modules don't fit)."""


class UnsupportedPrecision(InvalidArgument):
    """A precision the machine cannot run (fp8 without a CUDA GPU, say)."""


class Cancelled(LongCatError):
    code = "CANCELLED"


class Unavailable(LongCatError):
    """Not ready yet (model loading) or a dependency is down: retry later."""

    code = "UNAVAILABLE"


class ResourceExhausted(LongCatError):
    """A queue or a limit is full: retry later."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(LongCatError):
    code = "UNAUTHENTICATED"


class DeadlineExceeded(LongCatError):
    code = "DEADLINE_EXCEEDED"


class AlreadyExists(LongCatError):
    """A name that is taken (an adapter uploaded without ``overwrite``)."""

    code = "ALREADY_EXISTS"


class TooLarge(InvalidArgument):
    """An upload over its size limit (HTTP 413)."""


class FailedPrecondition(LongCatError):
    """The server is not set up for this request (and retrying will not help): an adapter upload to a gateway
    started without the model to check it against."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(LongCatError):
    """Visible, but not the caller's to change or take: another tenant's adapter (delete, visibility,
    download of one shared for use only)."""

    code = "PERMISSION_DENIED"
