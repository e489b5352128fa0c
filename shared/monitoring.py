"""What the queue looks like now: live workers, what each runs, queue depth and a rough wait per model.

Read at request time from Redis (heartbeats, queue lists) and the store (shared.store.stats), so every web
process answers the same: the queue page, /api/queue and /metrics (web/monitoring.py) all use overview().
Torch-free.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.celery_config import model_queue
from shared.settings import Settings
from shared.store import stats
from shared.store.tables import Job
from shared.worker_registry import live_workers, queued_messages, starting_in

MAX_LISTED_JOBS = 200  # jobs looked up in the store for the workers' "running now" (a batch holds up to its rows)
ACTIVE = ("running", "cancelling")


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _held_jobs(session: Session, beats: list[dict]) -> dict[int, dict]:
    ids = sorted({int(j) for b in beats for j in (b.get("jobs") or []) if isinstance(j, int)})[:MAX_LISTED_JOBS]
    if not ids:
        return {}
    rows = session.execute(select(Job.id, Job.kind, Job.started_at, Job.progress_done, Job.progress_total)
                           .where(Job.id.in_(ids))).all()
    return {r.id: {"id": r.id, "kind": r.kind or "instaboost", "started_at": r.started_at,
                   "progress": [r.progress_done, r.progress_total]} for r in rows}


def _wait(model: str, queued: int, serving: int, starting: int, idle: int, jobs_per_second: float) -> dict:
    """Return a rough wait before a new job of model starts: {"seconds": float | None, "basis": why}."""
    if not serving and not starting:
        return {"seconds": None, "basis": f"no worker serves {model}: start one with INSTABOOST_WORKER_MODELS={model}"}
    if not serving:
        return {"seconds": None, "basis": "a worker is loading the model; jobs wait until it is ready"}
    if queued == 0 and idle:
        return {"seconds": 0.0, "basis": "a worker is idle: a new job starts at once"}
    if jobs_per_second > 0:
        return {"seconds": round(queued / jobs_per_second, 1),
                "basis": f"{queued} queued job(s) ahead at {jobs_per_second * 60:.1f} jobs/min "
                         f"(the last {stats.RECENT_WINDOW / 60:.0f} min)"}
    return {"seconds": None, "basis": f"no job of this model finished in the last {stats.RECENT_WINDOW / 60:.0f} "
                                      "min to estimate from"}


def worker_view(beat: dict, held: dict[int, dict], now: datetime) -> dict:
    """Return one live worker as the queue page shows it (the heartbeat, and what it runs now)."""
    seen = _when(beat.get("seen_at"))
    jobs = [j for j in (beat.get("jobs") or []) if isinstance(j, int)]
    numbers = beat.get("metrics") if isinstance(beat.get("metrics"), dict) else {}
    return {"worker": beat.get("worker") or beat.get("hostname"), "hostname": beat.get("hostname"),
            "pid": beat.get("pid"), "models": list(beat.get("models") or []), "starting": starting_in(beat),
            "started_at": _when(beat.get("started_at")), "seen_at": seen,
            "heartbeat_age_seconds": round((now - seen).total_seconds(), 1) if seen else None,
            "running": [held.get(j, {"id": j, "kind": None, "started_at": None, "progress": None}) for j in jobs],
            "jobs_done": dict(numbers.get("jobs") or {}), "tokens_per_second": numbers.get("tokens_per_second"),
            "metrics": numbers}


def overview(session: Session, client, settings: Settings, now: datetime | None = None) -> dict:
    """Return {"workers": [...], "models": [...]}: live workers and, per model, its queue and a rough wait."""
    now = now or datetime.now(timezone.utc)
    ns = settings.redis.namespace
    beats = sorted(live_workers(client, ns), key=lambda b: (str(b.get("hostname")), str(b.get("worker"))))
    counts = stats.jobs_by_status(session)
    rates = stats.recent_throughput(session, now)
    oldest = stats.oldest_queued(session)
    held = _held_jobs(session, beats)
    session.commit()  # no transaction held open while the caller renders
    by_status: dict[str, dict[str, int]] = {}
    for model, status, n in counts:
        by_status.setdefault(model, {})[status] = n
    waiting = {m for m, s in by_status.items() if any(s.get(k) for k in ("queued", *ACTIVE))}
    names = ({m for b in beats for m in b["models"]} | {m for b in beats for m in starting_in(b)} | waiting
             | {settings.model.name})
    models = []
    for model in sorted(names):
        serving = [b for b in beats if model in b["models"]]
        starting = sum(model in starting_in(b) for b in beats)
        idle = sum(not b.get("jobs") for b in serving)
        queued = by_status.get(model, {}).get("queued", 0)
        rate = rates.get(model, {"jobs_per_second": 0.0, "rows_per_second": 0.0})
        first = oldest.get(model)
        models.append({
            "model": model, "queue": model_queue(model), "workers": len(serving), "starting": starting,
            "idle_workers": idle, "queued": queued,
            "running": sum(by_status.get(model, {}).get(s, 0) for s in ACTIVE),
            "messages": queued_messages(client, model_queue(model), ns),
            "oldest_queued_seconds": round((now - first).total_seconds(), 1) if first else None,
            "jobs_per_second": rate["jobs_per_second"], "rows_per_second": rate["rows_per_second"],
            "wait": _wait(model, queued, len(serving), starting, idle, rate["jobs_per_second"]),
        })
    return {"generated_at": now, "workers": [worker_view(b, held, now) for b in beats], "models": models,
            "jobs_by_status": counts}
