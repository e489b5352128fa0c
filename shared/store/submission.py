"""Submission: store a queued job and hand its id to the broker (the only part of the store that talks to it)."""

from __future__ import annotations

import logging
import math
import threading
from datetime import timedelta
from typing import Any, Mapping

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import deployment
from shared.errors import ModelError, TooManyJobs, Unavailable, ValidationError
from shared.requests.fit import fit_problems
from shared.job_request import JobRequest
from shared.settings import Settings
from shared.store import idempotency
from shared.store.lifecycle import transition
from shared.store.tables import Job, JobStatus, utcnow

log = logging.getLogger(__name__)

# Serializes "count queued jobs, then insert one" so concurrent submissions cannot overshoot
# limits.max_queued_jobs, across processes (gunicorn runs several): a transaction-level advisory lock on
# PostgreSQL, the database's write lock taken first (BEGIN IMMEDIATE) on SQLite. The thread lock only spares
# this process's threads from polling SQLite's busy handler against each other.
SUBMIT_LOCK_KEY = 0x1B005701
_submit_lock = threading.Lock()
# A model a worker started a job of this recently is probably coming back when no heartbeat names it (its worker
# restarting, or Redis restarted empty and the other workers beat first): 503, not 422.
RECENTLY_SERVED_SECONDS = 600


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


def served_model_facts(model: str, redis, namespace: str, retry_after: float | None = None,
                       database_url: str | None = None) -> dict[str, int]:
    """Return what live workers advertise about model, or raise: Unavailable (Redis down, or no heartbeat yet),
    ModelError (not served)."""
    beats, served, starting = _served(redis, namespace, database_url)
    check_served(model, beats, served, starting, retry_after)
    return model_facts(beats, model)


def _begin_immediate(session: Session) -> None:
    """Start the session's SQLite transaction with the write lock held, so the count below is still true at insert.

    pysqlite opens a transaction only before a write, so a plain count reads outside any transaction and another
    process can insert between the count and our insert. BEGIN IMMEDIATE waits (busy_timeout) for the lock.
    """
    if session.connection().connection.dbapi_connection.in_transaction:
        session.commit()  # finish what this session wrote before: the lock must open the transaction
    session.execute(text("BEGIN IMMEDIATE"))


def lock_queue(session: Session) -> None:
    """Take the admission lock in the session's transaction (PostgreSQL; on SQLite the caller holds the write lock).

    Whoever counts queued jobs before adding some (submissions, batches, sweep stages) holds it until commit or
    rollback, so two of them cannot both see room for the last slot.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(SUBMIT_LOCK_KEY)))


def check_room(session: Session, n: int, limit: int,
               hint: str = "retry when some have finished, or split the batch") -> None:
    """Raise TooManyJobs (after rolling back, which releases the lock) when n more queued jobs would pass limit."""
    waiting = queued_count(session)
    if waiting + n > limit:
        session.rollback()
        if n == 1:
            raise TooManyJobs(f"{limit} jobs are already queued; retry when some have finished", retry_after=30)
        raise TooManyJobs(f"{n} more jobs would pass the queue's limit of {limit} (limits.max_queued_jobs; "
                          f"{waiting} wait now); {hint}", retry_after=30)


def _insert_queued(session: Session, rows: list[dict], limit: int, with_rows: tuple = ()) -> list[Job]:
    """Insert the queued jobs (Job column values), and with_rows in the same transaction, unless the queue would pass
    limit (TooManyJobs); commit."""
    with _submit_lock:
        if session.get_bind().dialect.name == "sqlite":
            _begin_immediate(session)
        lock_queue(session)
        check_room(session, len(rows), limit)
        jobs = [Job(status=JobStatus.queued, progress_done=0, **row) for row in rows]
        session.add_all(with_rows)
        session.add_all(jobs)
        session.commit()
    return jobs


def _insert_once(session: Session, row: dict, settings: Settings, key: str | None,
                 digest: str) -> tuple[Job, bool]:
    """Insert one queued job and return (it, True); (its job, False) when a concurrent try with the same
    idempotency key inserted first."""
    try:
        job, = _insert_queued(session, [row], settings.limits.max_queued_jobs)
        return job, True
    except IntegrityError:
        session.rollback()
        earlier = idempotency.by_key(session, key, digest, settings) if key else None
        if earlier is None:
            raise
        return earlier, False


def _served(redis, namespace: str, database_url: str | None = None) -> tuple[list[dict], set[str], set[str]]:
    """Return (live heartbeats, models served, models starting); Unavailable when Redis cannot be read.

    With database_url: DeploymentConflict (503) when the Redis prefix belongs to another deployment, whose
    workers would take the job (the prefix is claimed for this one when nobody owns it, e.g. an emptied Redis).
    """
    from shared import worker_registry

    own = deployment.identity_or_none(database_url)  # unknown while the database is down: its insert fails anyway
    try:
        if own is not None:
            deployment.claim(redis, namespace, database_url)
        beats = worker_registry.live_workers(redis, namespace)
    except deployment.DeploymentConflict:
        raise
    except Exception as exc:  # redis-py raises ConnectionError/TimeoutError subclasses
        log.warning("broker unreachable on submit: %s", type(exc).__name__)
        raise Unavailable(f"the broker (Redis) is unreachable ({type(exc).__name__}); retry shortly") from None
    served = {m for beat in beats for m in beat["models"]}
    # A worker that is loading the model will run the job once loaded: it waits in the queue meanwhile.
    starting = {m for beat in beats for m in worker_registry.starting_in(beat)} - served
    return beats, served, starting


def check_served(model: str, beats: list[dict], served: set[str], starting: set[str],
                 retry_after: float | None = None, session: Session | None = None) -> None:
    """Raise unless a live worker serves or loads model: Unavailable (503, Retry-After) while that may be transient,
    ModelError (422) otherwise.

    Transient: no heartbeat at all (Redis just came back empty, or the workers are starting: each beats within
    worker.heartbeat_interval), or (with a session) a model whose job a worker started within
    RECENTLY_SERVED_SECONDS.
    """
    if model in served | starting:
        return
    from shared.worker_registry import HEARTBEAT_INTERVAL

    wait = max(1, math.ceil(HEARTBEAT_INTERVAL if retry_after is None else retry_after))
    fix = f"if this lasts, start a worker with INSTABOOST_WORKER_MODELS={model}"
    if not beats:
        raise Unavailable(f"no live worker has sent a heartbeat (workers starting, or Redis just restarted and they "
                          f"have not beaten yet); retry in {wait} s; {fix}", retry_after=wait, field="model")
    if session is not None and _recently_served(session, model):
        raise Unavailable(f"no live worker serves model {model!r} now, though one ran its jobs in the last "
                          f"{RECENTLY_SERVED_SECONDS // 60} minutes (restarting?); retry in {wait} s; {fix}",
                          retry_after=wait, field="model")
    raise unserved_error(model, served, starting)


def _recently_served(session: Session, model: str) -> bool:
    cutoff = utcnow() - timedelta(seconds=RECENTLY_SERVED_SECONDS)
    return session.execute(select(Job.id).where(Job.model == model, Job.started_at >= cutoff).limit(1)).first() \
        is not None


def unserved_error(model: str, served: set[str], starting: set[str]) -> ModelError:
    """Return the error for a model no live worker serves or is loading."""
    hints = [f"models served now: {', '.join(sorted(served))}"] if served else []
    hints += [f"models starting: {', '.join(sorted(starting))}"] if starting else []
    hint = "; ".join(hints) or "no worker is running"
    return ModelError(f"no live worker serves model {model!r} ({hint}); choose a served model or "
                      f"start a worker with INSTABOOST_WORKER_MODELS={model}", field="model")


def _enqueue(session: Session, job: Job, celery_app, *, fail_on_error: bool = True) -> bool:
    """Send the job's message (at its priority) and stamp enqueued_at; on a broker error fail the job (or leave
    it to the recovery loop's outbox when fail_on_error is False) and return False."""
    from shared import celery_config

    try:
        celery_app.send_task(celery_config.TASK_NAME, args=[job.id], queue=celery_config.model_queue(job.model),
                             priority=celery_config.job_priority(job.kind, job.batch_id))
    except Exception as exc:
        # The exception text may hold the broker URL (and its password): log the type only.
        log.warning("broker refused job %s: %s", job.id, type(exc).__name__)
        session.rollback()
        if fail_on_error:
            transition(session, job, JobStatus.failed,
                       error=f"could not enqueue: the broker is unreachable ({type(exc).__name__})")
            session.commit()
        return False
    session.execute(update(Job).where(Job.id == job.id).values(enqueued_at=utcnow())
                    .execution_options(synchronize_session=False))
    session.commit()
    return True


def _defaults(settings, celery_app, redis):
    from shared import celery_config, worker_registry

    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    redis = redis if redis is not None else worker_registry.redis_client(settings.redis.url)
    celery_app = celery_app if celery_app is not None else celery_config.get_celery()
    return settings, celery_app, redis


def submit_job(session: Session, request: JobRequest, *, settings: Settings | None = None,
               celery_app=None, redis=None, idempotency_key: str | None = None) -> Job:
    """Store a queued job, then enqueue ``instaboost.run_job`` on the model's queue; return the job.

    Refuses (ModelError) a model no live worker serves or is loading (Unavailable while that may be transient,
    see check_served), (ValidationError) a job that cannot fit the
    model the workers advertise (layers, context), (TooManyJobs) a full queue and (Unavailable) an
    unreachable broker; a job the broker refused is failed at once, so no row waits forever. With an
    idempotency_key already stored, returns that key's job instead (shared.store.idempotency).
    """
    settings, celery_app, redis = _defaults(settings, celery_app, redis)
    params = request.to_params()
    digest = idempotency.request_hash(params)
    if idempotency_key is not None:
        earlier = idempotency.by_key(session, idempotency_key, digest, settings)
        if earlier is not None:
            return earlier
    beats, served, starting = _served(redis, settings.redis.namespace, settings.database.url)
    check_served(request.model, beats, served, starting, settings.worker.heartbeat_interval, session)
    request.check_model(model_facts(beats, request.model))
    row = dict(model=request.model, params=params, progress_total=len(request.variants()),
               idempotency_key=idempotency_key, request_hash=digest if idempotency_key else None)
    job, created = _insert_once(session, row, settings, idempotency_key, digest)
    if not created:
        return job  # a concurrent try with the same key made it
    if not _enqueue(session, job, celery_app):
        raise Unavailable(f"the broker (Redis) is unreachable, job {job.id} was not queued; retry shortly") from None
    return session.get(Job, job.id, populate_existing=True)


def check_chat_fits(params: Mapping[str, Any], facts: Mapping[str, int]) -> None:
    """Raise ValidationError when a chat job cannot fit the model the workers advertise (shared.requests.fit)."""
    errors = fit_problems(facts, params["model"], max_new_tokens=params["max_new_tokens"], tokens_field="max_tokens",
                          start_layer=params["start_layer"] if params["layers"] == "middle" else None,
                          layers=params["layers"], heads=params.get("heads"), boost="instaboost.")
    if errors:
        raise ValidationError(errors[0]["message"], errors=errors)


def submit_chat(session: Session, params: Mapping[str, Any], *, settings: Settings | None = None,
                celery_app=None, redis=None, idempotency_key: str | None = None, is_retry: bool = False) -> Job:
    """Store a queued chat or completion job (shared.chat.chat_params, shared.completions.completion_params) and
    enqueue it ahead of other work; return the job.

    A retry (idempotency_key already stored, or is_retry: an openai SDK retry) returns the job its earlier try
    created instead, while that job may still be reused (shared.store.idempotency).
    """
    settings, celery_app, redis = _defaults(settings, celery_app, redis)
    digest = idempotency.request_hash(params)
    if idempotency_key is not None:
        earlier = idempotency.by_key(session, idempotency_key, digest, settings)
    else:
        earlier = idempotency.by_retry(session, digest, settings) if is_retry else None
    if earlier is not None:
        return earlier
    beats, served, starting = _served(redis, settings.redis.namespace, settings.database.url)
    check_served(params["model"], beats, served, starting, settings.worker.heartbeat_interval, session)
    check_chat_fits(params, model_facts(beats, params["model"]))
    row = dict(model=params["model"], params=dict(params), progress_total=len(params.get("prompts") or [None]),
               kind=params.get("kind", "chat"), idempotency_key=idempotency_key, request_hash=digest)
    job, created = _insert_once(session, row, settings, idempotency_key, digest)
    if not created:
        return job  # a concurrent try with the same key made it
    if not _enqueue(session, job, celery_app):
        raise Unavailable(f"the broker (Redis) is unreachable, job {job.id} was not queued; retry shortly") from None
    return session.get(Job, job.id, populate_existing=True)


def submit_batch_jobs(session: Session, batch, lines: list[tuple[str, Mapping[str, Any]]], *,
                      settings: Settings | None = None, celery_app=None) -> list[int]:
    """Store a batch row with one queued chat job per (custom_id, params) line in one transaction, then enqueue each
    behind other work; return the job ids.

    A message the broker refuses leaves its job in the outbox (enqueued_at NULL): the recovery loop sends it.
    """
    settings, celery_app, _ = _defaults(settings, celery_app, object())
    rows = [dict(model=p["model"], params=dict(p), progress_total=1, kind="chat", batch_id=batch.id, custom_id=cid)
            for cid, p in lines]
    jobs = _insert_queued(session, rows, settings.limits.max_queued_jobs, with_rows=(batch,))
    ids = [j.id for j in jobs]
    for job in jobs:
        _enqueue(session, job, celery_app, fail_on_error=False)
    return ids


def served_models(settings: Settings, redis) -> tuple[list[dict], set[str], set[str]]:
    """Return (live heartbeats, models served, models starting) for a batch's per-line model checks; Unavailable
    while no worker has a heartbeat (a transient state: see check_served)."""
    beats, served, starting = _served(redis, settings.redis.namespace, settings.database.url)
    if not beats:
        wait = max(1, math.ceil(settings.worker.heartbeat_interval))
        raise Unavailable(f"no live worker has sent a heartbeat (workers starting, or Redis just restarted); retry in "
                          f"{wait} s; if this lasts, start a worker", retry_after=wait)
    return beats, served, starting
