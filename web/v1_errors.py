"""OpenAI-shaped error answers of the /v1 API: {"error": {"message", "type", "param", "code"}}, and the error
handlers each /v1 blueprint registers on itself (register).

The app's own handlers (web.errors) answer with these too for a /v1 path no route matched (404, 405).
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from shared.errors import InstaBoostError, JobErrorCode, ModelError, Unavailable, ValidationError
from shared.store.tables import Job, JobStatus
from web.problems import scrub

log = logging.getLogger(__name__)

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
               404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "server_error"}
ERROR_CODES = {401: "invalid_api_key", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "request_too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded",
               503: "service_unavailable", 504: "timeout"}


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None, retry: bool | None = None) -> Response:
    """Return an error in OpenAI's shape (secrets scrubbed); retry False tells the openai SDK not to retry it."""
    body = {"error": {"message": scrub(message), "type": ERROR_TYPES.get(status, "invalid_request_error"
                                                                          if status < 500 else "server_error"),
                      "param": param, "code": code if code is not None else ERROR_CODES.get(status)}}
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="instaboost"'
    if retry is not None:
        resp.headers["x-should-retry"] = "true" if retry else "false"
    return resp


# A failed job's code (jobs.error_code) -> the 400 it answers: (param, OpenAI code). Any other failure is a 500.
JOB_ERRORS = {
    JobErrorCode.context_length_exceeded: ("messages", "context_length_exceeded"),
    # the worker could not compile the schema for the model's tokenizer
    JobErrorCode.response_format: ("response_format", "invalid_value"),
    JobErrorCode.out_of_range: ("instaboost", "invalid_value"),
}


def job_failure(job: Job) -> Response:
    """Return the error for a chat job that failed or was cancelled."""
    if job.status is JobStatus.cancelled:
        return openai_error(409, f"job {job.id} was cancelled before it finished", code="cancelled", retry=False)
    error = job.error or "the job failed"
    if job.error_code in JOB_ERRORS:
        param, code = JOB_ERRORS[job.error_code]
        return openai_error(400, f"job {job.id} failed: {error}", param=param, code=code, retry=False)
    return openai_error(500, f"job {job.id} failed: {error}", code="job_failed", retry=False)


def timeout_error(job_id: int, waited: float, path: str | None = None) -> Response:
    """Return the 504 for a completion whose job did not finish within waited seconds (not retried: poll path)."""
    path = path or f"/v1/chat/completions/{job_id}"
    return openai_error(504, f"job {job_id} did not finish within {waited:g} s (v1.wait_seconds); it is still "
                             f"queued or running: poll GET {path} (or GET /api/jobs/{job_id}) "
                             "for its result", code="timeout", param=None, retry=False,
                        headers={"Location": path})


# -- handlers ------------------------------------------------------------------------------------------------


def error_from_exception(exc: InstaBoostError) -> Response:
    """Map a service error onto OpenAI's: invalid values are 400 (as OpenAI answers them), an unserved model 404."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else {}
    param = exc.errors[0]["field"] if exc.errors and exc.errors[0].get("field") else exc.field
    message = exc.message
    if len(exc.errors) > 1:
        message += ": " + "; ".join(str(e.get("message")) for e in exc.errors)
    elif exc.errors and exc.errors[0].get("message") and exc.errors[0]["message"] != exc.message:
        message += ": " + str(exc.errors[0]["message"])
    if isinstance(exc, ModelError):
        return openai_error(404, message, param=param or "model", code="model_not_found")
    if isinstance(exc, ValidationError) or exc.status == 422:
        return openai_error(400, message, param=param, code="invalid_value")
    return openai_error(exc.status, message, param=param, code=getattr(exc, "code", None), headers=headers)


def http_error(exc: HTTPException) -> Response:
    """Answer an HTTP error (404, 405, 413...) in OpenAI's shape, keeping its Allow and Retry-After headers."""
    status = exc.code or 500
    detail = exc.description or exc.name
    if status == 413:
        detail = "The request body is too large (limits.max_request_bytes; files: limits.max_file_bytes)."
    headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
    return openai_error(status, detail, headers=headers)


def database_down(exc: Exception) -> Response:
    """Answer 503 when the database cannot be reached (the driver's message may name the host, never more)."""
    log.warning("database unreachable on %s %s: %s", request.method, request.path, type(exc).__name__)
    return error_from_exception(Unavailable("the database is unreachable; retry shortly", retry_after=5))


def unexpected(exc: Exception) -> Response:
    """Answer 500 for an unhandled error (logged with its traceback; the client learns nothing of it)."""
    if isinstance(exc, HTTPException):
        return http_error(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return openai_error(500, "An unexpected error occurred; it has been logged. Retry, and report it if it persists.")


def register(bp: Blueprint) -> None:
    """Install the OpenAI-shaped error handlers on a /v1 blueprint."""
    bp.register_error_handler(InstaBoostError, error_from_exception)
    bp.register_error_handler(OperationalError, database_down)
    bp.register_error_handler(HTTPException, http_error)
    bp.register_error_handler(Exception, unexpected)
