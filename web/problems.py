"""Error rendering, with no blueprint behind it: problem+json under /api, an HTML page elsewhere, secrets scrubbed.

A leaf module: the app's handlers (web.errors), the /v1 handlers (web.v1_errors) and the blueprints all render
errors through it, and it imports none of them.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

from flask import Response, render_template, request

from shared.settings import SETTINGS
from web.context import services

PROBLEM = "application/problem+json"

HINTS = {
    404: "No such resource; check the URL (see /api/openapi.json).",
    405: "This method is not allowed here; see the Allow header.",
    413: "The request body is too large; send a smaller one (limits.max_request_bytes).",
    415: "Send the body as JSON with 'Content-Type: application/json'.",
}
# Errors about the request as a whole still name what to fix.
HTTP_FIELDS = {413: "body", 415: "Content-Type"}
# Every setting declared secret (API token, secret key, judge API key, HF token...): declared once, in SETTINGS.
SECRET_SETTINGS = tuple(s.name for s in SETTINGS if s.secret)
URL_SETTINGS = ("database.url", "redis.url", "judge.url")  # their passwords are secrets too


def is_v1() -> bool:
    """Return True for the OpenAI-compatible API, whose errors take OpenAI's shape (web/v1_errors.py)."""
    return request.path == "/v1" or request.path.startswith("/v1/")


def wants_problem() -> bool:
    """Return True when the request should get problem+json rather than HTML (the API, probes, .json routes)."""
    return request.path.startswith("/api") or request.path in ("/healthz", "/readyz") or request.path.endswith(".json")


def scrub(text: str) -> str:
    """Replace any configured secret (secret settings, passwords in the database, Redis and judge URLs) with ***."""
    try:
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


def error_page(status: int, title: str, detail: str, errors: list[dict] | None = None) -> tuple[str, int]:
    """Return the HTML error page (secrets scrubbed) and its status."""
    errors = [{"field": e.get("field"), "message": scrub(str(e.get("message")))} for e in errors or []]
    return render_template("error.html", status=status, title=title, detail=scrub(detail), errors=errors), status
