"""GET /healthz: is the database and the broker reachable?"""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from web.context import db, services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Answer 200 when the database and Redis answer, 503 (naming the failing one) otherwise."""
    checks = {}
    try:
        db().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not reachable" here
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        services().redis.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    resp = jsonify({"status": "ok" if ok else "unavailable", **checks})
    resp.status_code = 200 if ok else 503
    if not ok:
        resp.headers["Retry-After"] = "5"
    return resp
