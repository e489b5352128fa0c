"""A small exception hierarchy; each error carries the HTTP status the web layer answers with."""

from __future__ import annotations

from enum import StrEnum

# Messages may quote the input: bound what one error can echo back (a page, a problem body, a stored error).
MAX_MESSAGE_CHARS = 1000
MAX_ERRORS = 50


def clip(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Return text cut to about limit characters, saying how much was left out."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class JobErrorCode(StrEnum):
    """Why a job failed, machine-readable: stored with the failed job (``jobs.error_code``) next to its message."""

    context_length_exceeded = "context_length_exceeded"  # the prompt and its new tokens exceed the context
    response_format = "response_format"  # the model's tokenizer cannot enforce the response_format schema
    out_of_range = "out_of_range"  # a layer, head or token id past the model's
    time_limit = "time_limit"  # ran past worker.job_time_limit
    poison = "poison"  # delivered worker.max_attempts times, never finished
    worker_error = "worker_error"  # an unexpected error in the worker


class InstaBoostError(Exception):
    """Base error: a message that says how to fix the input, plus an HTTP status (and, for a job, its code)."""

    status = 400
    title = "Bad request"

    def __init__(self, message: str, *, field: str | None = None, errors: list[dict] | None = None,
                 status: int | None = None, code: JobErrorCode | None = None):
        message = clip(message)
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code  # stored with a job this error fails
        # Field-level detail: [{"field": "multipliers[0]", "message": "..."}], at most MAX_ERRORS of them.
        errors = list(errors or ([{"field": field, "message": message}] if field else []))[:MAX_ERRORS]
        self.errors = [{**e, "message": clip(e["message"])} if isinstance(e, dict) and "message" in e else e
                       for e in errors]
        if status is not None:
            self.status = status

    def to_problem(self) -> dict:
        """Return an RFC 9457 problem body."""
        body = {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


class ValidationError(InstaBoostError):
    """The input is well-formed but a value is not acceptable."""

    status = 422
    title = "Invalid input"


class BadRequest(InstaBoostError):
    """The request itself is malformed (not JSON, wrong content type)."""

    status = 400
    title = "Bad request"


class NotFound(InstaBoostError):
    status = 404
    title = "Not found"


class Conflict(InstaBoostError):
    status = 409
    title = "Conflict"


class ModelError(InstaBoostError):
    """A model name or path cannot be resolved or loaded."""

    status = 422
    title = "Model unavailable"


class Unavailable(InstaBoostError):
    """A backing service (broker, database) cannot be reached; retry later."""

    status = 503
    title = "Service unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TooManyJobs(Unavailable):
    status = 429
    title = "Too many queued jobs"


class TooManySweeps(TooManyJobs):
    title = "Too many running sweeps"


class Unauthorized(InstaBoostError):
    status = 401
    title = "Unauthorized"


class Forbidden(InstaBoostError):
    """A request this service refuses whoever sends it (e.g. one sent by another site's page)."""

    status = 403
    title = "Forbidden"


class UnsupportedMediaType(InstaBoostError):
    status = 415
    title = "Unsupported media type"
