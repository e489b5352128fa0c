"""The queue and its workers: GET /queue (a page) and GET /api/queue (the same as JSON).

Live workers (from their heartbeats: host, models, the jobs each runs now), and per model the jobs and
broker messages waiting and a rough wait before a new job starts (shared.monitoring.overview).
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, jsonify, render_template
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from shared.errors import Unavailable
from shared.monitoring import overview
from shared.resources.jobs import Queue
from web.apidoc import COMMON, RETRY_AFTER, Reply, operation, problem
from web.context import db, services

bp = Blueprint("queue", __name__)


def _overview() -> dict:
    s = services()
    try:
        return overview(db(), s.redis, s.settings)
    except (RedisError, SQLAlchemyError) as exc:  # a source is away: say so, not a traceback
        db().rollback()
        raise Unavailable(f"the queue cannot be read now ({type(exc).__name__}): the broker (Redis) or the "
                          "database is unreachable; retry shortly") from None


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@bp.get("/queue")
def queue_page():
    """Show live workers, what each runs now, and per model the queue depth and a rough wait."""
    return render_template("queue.html", view=_overview())


@bp.get("/api/queue")
@operation("queue", {200: Reply("Workers and models.", Queue),
                     503: problem("Redis or the database is unreachable.", RETRY_AFTER), **COMMON},
           description="The queue page's data (/queue): each live worker (from its heartbeat) with the jobs it runs "
                       "now, and per model the queued and running jobs, the broker's waiting messages, recent "
                       "throughput and a rough wait before a new job starts.")
def queue_json():
    """Return the queue page's data: {"workers": [...], "models": [...]} (no per-worker histograms)."""
    view = _overview()
    workers = [{k: v for k, v in w.items() if k != "metrics"} for w in view["workers"]]
    return jsonify(_jsonable({"generated_at": view["generated_at"], "workers": workers, "models": view["models"]}))
