"""OpenAI-shaped error answers of the /v1 API: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json

from flask import Response

from shared.errors import JobErrorCode
from shared.store.tables import Job, JobStatus

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
    from web.errors import scrub

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
