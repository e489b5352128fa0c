"""Numbers for operators read from the store: jobs by status, failures by kind, recent throughput.

Each query is bounded: the counts are GROUP BY aggregates (no rows leave the database) and the throughput
reads at most the newest RECENT_JOBS finished jobs and RECENT_RUNS runs, through the primary key.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from shared.store.tables import FINAL, Job, JobStatus, Run

RECENT_WINDOW = 600.0  # seconds of history behind the throughput (and the queue page's wait estimate)
RECENT_JOBS = 1000
RECENT_RUNS = 2000

# A failed job's kind, from the start of its error text (the messages shared.store, worker/jobs write).
FAILURE_KINDS = (
    ("time_limit", "time limit%"),
    ("poison", "poison job%"),
    ("worker_error", "internal error%"),
    ("broker", "could not enqueue%"),
    ("no_worker", "%no worker%"),
)
OTHER_FAILURE = "job_error"  # the job's own input or prompt was refused by the worker (its error says why)


def jobs_by_status(session: Session) -> list[tuple[str, str, int]]:
    """Return (model, status, count) for every model and status that has jobs."""
    rows = session.execute(select(Job.model, Job.status, func.count()).group_by(Job.model, Job.status)).all()
    return [(model, status.value if isinstance(status, JobStatus) else str(status), n) for model, status, n in rows]


def failures_by_kind(session: Session) -> dict[str, int]:
    """Return how many failed jobs there are of each kind (FAILURE_KINDS, else OTHER_FAILURE); every kind listed."""
    kind = case(*[(Job.error.like(pattern), name) for name, pattern in FAILURE_KINDS], else_=OTHER_FAILURE)
    rows = session.execute(select(kind, func.count()).where(Job.status == JobStatus.failed).group_by(kind)).all()
    out = {name: 0 for name, _ in FAILURE_KINDS} | {OTHER_FAILURE: 0}
    out.update({k: n for k, n in rows})
    return out


def _rate(stamps: list[datetime], full: bool, now: datetime, window: float) -> float:
    """Return events per second over the window (or over the span a full sample covers, when shorter)."""
    since = now - timedelta(seconds=window)
    recent = [t for t in stamps if t is not None and t >= since]
    if not recent:
        return 0.0
    span = window
    if full:  # the sample was cut by its limit: it covers only from its oldest event
        span = min(window, max(1.0, (now - min(t for t in stamps if t is not None)).total_seconds()))
    return len(recent) / span


def recent_throughput(session: Session, now: datetime | None = None,
                      window: float = RECENT_WINDOW) -> dict[str, dict[str, float]]:
    """Return {model: {"jobs_per_second", "rows_per_second"}} over the last window seconds."""
    now = now or datetime.now(timezone.utc)
    jobs = session.execute(select(Job.model, Job.finished_at).where(Job.status.in_(list(FINAL)))
                           .order_by(Job.id.desc()).limit(RECENT_JOBS)).all()
    runs = session.execute(select(Job.model, Run.created_at).join(Job, Run.job_id == Job.id)
                           .order_by(Run.id.desc()).limit(RECENT_RUNS)).all()
    by_model: dict[str, dict[str, list[datetime]]] = {}
    for model, at in jobs:
        by_model.setdefault(model, {"jobs": [], "rows": []})["jobs"].append(at)
    for model, at in runs:
        by_model.setdefault(model, {"jobs": [], "rows": []})["rows"].append(at)
    return {model: {"jobs_per_second": _rate(v["jobs"], len(jobs) >= RECENT_JOBS, now, window),
                    "rows_per_second": _rate(v["rows"], len(runs) >= RECENT_RUNS, now, window)}
            for model, v in by_model.items()}


def oldest_queued(session: Session) -> dict[str, datetime]:
    """Return, per model, when its oldest queued job was submitted."""
    rows = session.execute(select(Job.model, func.min(Job.created_at)).where(Job.status == JobStatus.queued)
                           .group_by(Job.model)).all()
    return {model: _utc(at) for model, at in rows if at is not None}


def _utc(value) -> datetime:
    # func.min bypasses UTCDateTime's result processing: SQLite gives a naive datetime or a string.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
