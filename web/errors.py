"""Error responses: application/problem+json under /api, an HTML page elsewhere."""

from __future__ import annotations

import json
import logging
from urllib.parse import unquote, urlsplit

from flask import Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException

from shared.errors import InstaBoostError, Unavailable
from shared.settings import SETTINGS

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"

HINTS = {
    404: "No such resource; check the URL (see /api/openapi.json).",
    405: "This method is not allowed here; see the Allow header.",
    413: "The request body is too large; send a smaller one (limits.max_request_bytes).",
    415: "Send the body as JSON with 'Content-Type: application/json'.",
}


def is_v1() -> bool:
    """Return True for the OpenAI-compatible API, whose errors take OpenAI's shape (web/v1.py)."""
    return request.path == "/v1" or request.path.startswith("/v1/")


def wants_problem() -> bool:
    """Return True when the request should get problem+json rather than HTML (the API, probes, .json routes)."""
    return request.path.startswith("/api") or request.path in ("/healthz", "/readyz") or request.path.endswith(".json")


# Errors about the request as a whole still name what to fix.
HTTP_FIELDS = {413: "body", 415: "Content-Type"}
# Every setting declared secret (API token, secret key, judge API key, HF token...): declared once, in SETTINGS.
SECRET_SETTINGS = tuple(s.name for s in SETTINGS if s.secret)
URL_SETTINGS = ("database.url", "redis.url", "judge.url")  # their passwords are secrets too


def scrub(text: str) -> str:
    """Replace any configured secret (secret settings, passwords in the database, Redis and judge URLs) with ***."""
    try:
        from web.context import services

        settings = services().settings
    except RuntimeError:  # outside an app context
        return text
    secrets = [settings[name] for name in SECRET_SETTINGS]
    for name in URL_SETTINGS:
        try:
            password = urlsplit(str(settings[name])).password
        except ValueError:  # an unparsable URL holds no password we could find
            continue
        if password:
            secrets += [password, unquote(password)]
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def problem(status: int, title: str, detail: str, errors: list[dict] | None = None,
            headers: dict | None = None) -> Response:
    """Return an RFC 9457 problem response (secrets scrubbed, should an error message ever hold one)."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    resp = Response(scrub(json.dumps(body)), status=status, mimetype=PROBLEM)
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _html(status: int, title: str, detail: str, errors: list[dict] | None = None):
    errors = [{"field": e.get("field"), "message": scrub(str(e.get("message")))} for e in errors or []]
    return render_template("error.html", status=status, title=title, detail=scrub(detail), errors=errors), status


def handle_instaboost(exc: InstaBoostError):
    if is_v1():
        from web.v1 import error_from_exception

        return error_from_exception(exc)
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
    if is_v1():
        from web.v1 import openai_error

        detail = exc.description or exc.name
        if status == 413:
            detail = "The request body is too large (limits.max_request_bytes; files: limits.max_file_bytes)."
        headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
        return openai_error(status, detail, headers=headers)
    detail = HINTS.get(status) or exc.description or exc.name
    headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
    errors = [{"field": HTTP_FIELDS[status], "message": detail}] if status in HTTP_FIELDS else None
    if wants_problem():
        return problem(status, exc.name, detail, errors, headers=headers)
    page, status = _html(status, exc.name, detail, errors)
    return page, status, headers


def handle_database_down(exc: Exception):
    """Answer 503 when the database cannot be reached (the driver's message may name the host, never more)."""
    log.warning("database unreachable on %s %s: %s", request.method, request.path, type(exc).__name__)
    return handle_instaboost(Unavailable("the database is unreachable; retry shortly", retry_after=5))


def handle_unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        return handle_http(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    detail = "An unexpected error occurred; it has been logged. Retry, and report it if it persists."
    if is_v1():
        from web.v1 import openai_error

        return openai_error(500, detail)
    if wants_problem():
        return problem(500, "Internal server error", detail)
    return _html(500, "Internal server error", detail)


def register(app: Flask) -> None:
    """Install the error handlers on app."""
    from sqlalchemy.exc import OperationalError

    app.register_error_handler(InstaBoostError, handle_instaboost)
    app.register_error_handler(OperationalError, handle_database_down)
    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(Exception, handle_unexpected)
