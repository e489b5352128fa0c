"""The app's error handlers: application/problem+json under /api, an HTML page elsewhere (web.problems renders).

The /v1 blueprints install their own OpenAI-shaped handlers (web.v1_errors.register); the app's handlers answer
in that shape too for a /v1 path no route matched (404, 405), which no blueprint sees.
"""

from __future__ import annotations

import logging

from flask import Flask, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from shared.errors import InstaBoostError, Unavailable
from web.v1_errors import error_from_exception, http_error as v1_http_error, unexpected as v1_unexpected
from web.problems import HINTS, HTTP_FIELDS, error_page, is_v1, problem, wants_problem

log = logging.getLogger(__name__)


def handle_instaboost(exc: InstaBoostError):
    if is_v1():
        return error_from_exception(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="instaboost"'
    if wants_problem():
        body = exc.to_problem()
        return problem(exc.status, body["title"], body["detail"], body.get("errors"), headers)
    page, status = error_page(exc.status, exc.title, exc.message, exc.errors)
    return page, status, headers


def handle_http(exc: HTTPException):
    if is_v1():
        return v1_http_error(exc)
    status = exc.code or 500
    detail = HINTS.get(status) or exc.description or exc.name
    headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
    errors = [{"field": HTTP_FIELDS[status], "message": detail}] if status in HTTP_FIELDS else None
    if wants_problem():
        return problem(status, exc.name, detail, errors, headers=headers)
    page, status = error_page(status, exc.name, detail, errors)
    return page, status, headers


def handle_database_down(exc: Exception):
    """Answer 503 when the database cannot be reached (the driver's message may name the host, never more)."""
    log.warning("database unreachable on %s %s: %s", request.method, request.path, type(exc).__name__)
    return handle_instaboost(Unavailable("the database is unreachable; retry shortly", retry_after=5))


def handle_unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        return handle_http(exc)
    if is_v1():
        return v1_unexpected(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    detail = "An unexpected error occurred; it has been logged. Retry, and report it if it persists."
    if wants_problem():
        return problem(500, "Internal server error", detail)
    return error_page(500, "Internal server error", detail)


def register(app: Flask) -> None:
    """Install the error handlers on app."""
    app.register_error_handler(InstaBoostError, handle_instaboost)
    app.register_error_handler(OperationalError, handle_database_down)
    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(Exception, handle_unexpected)
