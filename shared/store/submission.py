"""Submission: store a queued job and hand its id to the broker (the only part of the store that talks to it)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from shared.errors import ModelError, TooManyJobs, Unavailable
from shared.schemas import JobRequest
from shared.store.lifecycle import transition
from shared.store.tables import Job, JobStatus, utcnow

log = logging.getLogger(__name__)

# Serializes "count queued jobs, then insert one" so concurrent submissions cannot overshoot
# limits.max_queued_jobs, across processes (gunicorn runs several): a transaction-level advisory lock on
# PostgreSQL, the database's write lock taken first (BEGIN IMMEDIATE) on SQLite. The thread lock only spares
# this process's threads from polling SQLite's busy handler against each other.
SUBMIT_LOCK_KEY = 0x1B005701
_submit_lock = threading.Lock()


def queued_count(session: Session) -> int:
    """Return how many jobs wait in the queue."""
    return session.execute(select(func.count()).select_from(Job).where(Job.status == JobStatus.queued)).scalar_one()


def model_facts(beats: list[dict], model: str) -> dict[str, int]:
    """Return what live workers advertise about model: n_layers, n_heads, max_context (those known).

    Heartbeats may carry {"model_info": {model: {"n_layers": .., "n_heads": .., "max_context": ..}}};
    when workers disagree the smallest value wins, so a job accepted here fits every one of them.
    """
    facts: dict[str, int] = {}
    for beat in beats:
        info = beat.get("model_info")
        info = info.get(model) if isinstance(info, Mapping) else None
        if not isinstance(info, Mapping):
            continue
        for key in ("n_layers", "n_heads", "max_context"):
            value = info.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                facts[key] = min(value, facts.get(key, value))
    return facts


def served_model_facts(model: str, redis, namespace: str) -> dict[str, int]:
    """Return what live workers advertise about model, or raise: Unavailable (Redis down), ModelError (not served)."""
    from shared import workers

    try:
        beats = workers.live_workers(redis, namespace)
    except Exception as exc:  # redis-py raises ConnectionError/TimeoutError subclasses
        log.warning("broker unreachable on submit: %s", type(exc).__name__)
        raise Unavailable(f"the broker (Redis) is unreachable ({type(exc).__name__}); retry shortly") from None
    served = {m for beat in beats for m in beat["models"]}
    # A worker that is loading the model will run the job once loaded: it waits in the queue meanwhile.
    starting = {m for beat in beats for m in workers.starting_in(beat)} - served
    if model not in served | starting:
        hints = [f"models served now: {', '.join(sorted(served))}"] if served else []
        hints += [f"models starting: {', '.join(sorted(starting))}"] if starting else []
        hint = "; ".join(hints) or "no worker is running"
        raise ModelError(f"no live worker serves model {model!r} ({hint}); choose a served model or "
                         f"start a worker with INSTABOOST_WORKER_MODELS={model}", field="model")
    return model_facts(beats, model)


def _begin_immediate(session: Session) -> None:
    """Start the session's SQLite transaction with the write lock held, so the count below is still true at insert.

    pysqlite opens a transaction only before a write, so a plain count reads outside any transaction and another
    process can insert between the count and our insert. BEGIN IMMEDIATE waits (busy_timeout) for the lock.
    """
    if session.connection().connection.dbapi_connection.in_transaction:
        session.commit()  # finish what this session wrote before: the lock must open the transaction
    session.execute(text("BEGIN IMMEDIATE"))


def _insert_queued(session: Session, request: JobRequest, limit: int) -> Job:
    """Insert the queued job unless limit jobs already wait (TooManyJobs); commit."""
    with _submit_lock:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(SUBMIT_LOCK_KEY)))
        elif dialect == "sqlite":
            _begin_immediate(session)
        if queued_count(session) >= limit:
            session.rollback()  # releases the advisory lock
            raise TooManyJobs(f"{limit} jobs are already queued; retry when some have finished", retry_after=30)
        job = Job(status=JobStatus.queued, model=request.model, params=request.to_params(),
                  progress_done=0, progress_total=len(request.variants()))
        session.add(job)
        session.commit()
    return job


def submit_job(session: Session, request: JobRequest, *, settings: Mapping[str, Any] | None = None,
               celery_app=None, redis=None) -> Job:
    """Store a queued job, then enqueue ``instaboost.run_job`` on the model's queue; return the job.

    Refuses (ModelError) a model no live worker serves or is loading, (ValidationError) a job that cannot fit the
    model the workers advertise (layers, context), (TooManyJobs) a full queue and (Unavailable) an
    unreachable broker; a job the broker refused is failed at once, so no row waits forever.
    """
    from shared import celery_config, workers

    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    redis = redis if redis is not None else workers.redis_client(settings["redis.url"])
    celery_app = celery_app if celery_app is not None else celery_config.get_celery()
    namespace = settings["redis.namespace"]

    request.check_model(served_model_facts(request.model, redis, namespace))
    job = _insert_queued(session, request, settings["limits.max_queued_jobs"])
    try:
        celery_app.send_task(celery_config.TASK_NAME, args=[job.id], queue=celery_config.model_queue(job.model))
    except Exception as exc:
        # The exception text may hold the broker URL (and its password): log the type only.
        log.warning("broker refused job %s: %s", job.id, type(exc).__name__)
        session.rollback()
        transition(session, job, JobStatus.failed,
                   error=f"could not enqueue: the broker is unreachable ({type(exc).__name__})")
        session.commit()
        raise Unavailable(f"the broker (Redis) is unreachable, job {job.id} was not queued; retry shortly") from None
    session.execute(update(Job).where(Job.id == job.id).values(enqueued_at=utcnow())
                    .execution_options(synchronize_session=False))
    session.commit()
    return session.get(Job, job.id, populate_existing=True)
