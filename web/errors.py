"""Error responses: application/problem+json under /api, an HTML page elsewhere."""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException

from shared.errors import InstaBoostError, Unavailable

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"

HINTS = {
    404: "No such resource; check the URL (see /api/openapi.json).",
    405: "This method is not allowed here; see the Allow header.",
    413: "The request body is too large; send a smaller one (limits.max_request_bytes).",
    415: "Send the body as JSON with 'Content-Type: application/json'.",
}


def wants_problem() -> bool:
    """Return True when the request should get problem+json rather than HTML."""
    return request.path.startswith("/api") or request.path == "/healthz"


def problem(status: int, title: str, detail: str, errors: list[dict] | None = None,
            headers: dict | None = None) -> Response:
    """Return an RFC 9457 problem response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    resp = Response(json.dumps(body), status=status, mimetype=PROBLEM)
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _html(status: int, title: str, detail: str, errors: list[dict] | None = None):
    return render_template("error.html", status=status, title=title, detail=detail, errors=errors or []), status


def handle_instaboost(exc: InstaBoostError):
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="instaboost"'
    if wants_problem():
        body = exc.to_problem()
        return problem(exc.status, body["title"], body["detail"], body.get("errors"), headers)
    page, status = _html(exc.status, exc.title, exc.message, exc.errors)
    return page, status, headers


def handle_http(exc: HTTPException):
    status = exc.code or 500
    detail = HINTS.get(status) or exc.description or exc.name
    headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
    if wants_problem():
        return problem(status, exc.name, detail, headers=headers)
    page, status = _html(status, exc.name, detail)
    return page, status, headers


def handle_unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        return handle_http(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    detail = "An unexpected error occurred; it has been logged. Retry, and report it if it persists."
    if wants_problem():
        return problem(500, "Internal server error", detail)
    return _html(500, "Internal server error", detail)


def register(app: Flask) -> None:
    """Install the error handlers on app."""
    app.register_error_handler(InstaBoostError, handle_instaboost)
    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(Exception, handle_unexpected)
