"""GET /healthz: are the database and the broker reachable? GET /readyz: can a job on the default model run?"""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from shared.resources.jobs import Health, Ready
from shared.worker_registry import live_workers, starting_in
from web.apidoc import RETRY_AFTER, Reply, operation
from web.context import db, services

bp = Blueprint("health", __name__)


def _checks() -> dict[str, str]:
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
    return checks


def _answer(status: str, checks: dict[str, str]):
    resp = jsonify({"status": status, **checks})
    resp.status_code = 200 if status == "ok" else 503
    if status != "ok":
        resp.headers["Retry-After"] = "5"
    return resp


@bp.get("/healthz")
@operation("health", {200: Reply("Both reachable.", Health), 503: Reply("One is unreachable.", Health,
                                                                         headers=(RETRY_AFTER,))}, public=True)
def healthz():
    """Answer 200 when the database and Redis answer, 503 (naming the failing one) otherwise."""
    checks = _checks()
    return _answer("ok" if all(v == "ok" for v in checks.values()) else "unavailable", checks)


@bp.get("/readyz")
@operation("ready", {200: Reply("Ready.", Ready), 503: Reply("Not ready; says what is missing.", Ready,
                                                             headers=(RETRY_AFTER,))}, public=True,
           description="200 when the database and broker answer and a live worker serves the default model; "
                       "otherwise 503 with status 'starting' (a worker is loading it: jobs are accepted and wait) or "
                       "'unavailable', and what is missing.")
def readyz():
    """Answer 200 when, besides /healthz, a live worker serves the default model; else 503 saying what is missing.

    status "starting": a worker is loading the model (jobs submitted now are accepted and wait in the queue).
    """
    s = services()
    checks = _checks()
    model = s.settings.model.name
    status = "unavailable"
    beats = None
    if checks["broker"] == "ok":
        try:
            beats = live_workers(s.redis, s.settings.redis.namespace)
        except Exception as exc:  # Redis went away since the ping
            checks["broker"] = f"unreachable: {type(exc).__name__}"
    if beats is None:
        checks["model"] = f"{model}: unknown while the broker is unreachable"
    else:
        ready = sum(model in b["models"] for b in beats)
        loading = sum(model in starting_in(b) for b in beats)
        if ready:
            checks["model"] = f"{model}: served by {ready} worker{'s' if ready > 1 else ''}"
            status = "ok" if checks["database"] == "ok" else "unavailable"
        elif loading:
            checks["model"] = (f"{model}: starting ({loading} worker{'s are' if loading > 1 else ' is'} loading it); "
                               "jobs submitted now wait in the queue")
            status = "starting" if checks["database"] == "ok" else "unavailable"
        else:
            checks["model"] = f"{model}: no worker serves it; start one with INSTABOOST_WORKER_MODELS={model}"
    return _answer(status, checks)
