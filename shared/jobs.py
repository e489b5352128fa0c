"""The job service: submit, cancel, list, record runs and move jobs through their lifecycle.

Torch-free, shared by the web app and the worker. Every status change goes through ``transition``;
mutating functions commit their own transaction so a state change is visible to other processes
(and is never half-written) as soon as they return.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.errors import BadRequest, Conflict, ModelError, NotFound, TooManyJobs, Unavailable, ValidationError
from shared.models import ALLOWED, FINAL, Job, JobStatus, Run, utcnow
from shared.schemas import JobRequest, show

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
EXPORT_BATCH = 500
MAX_ID = 2**31 - 1  # INTEGER primary keys; larger ids cannot exist (and would overflow on PostgreSQL)
# Serializes "count queued jobs, then insert one" so concurrent submissions cannot overshoot
# limits.max_queued_jobs: a transaction-level advisory lock on PostgreSQL (across processes), a lock here.
SUBMIT_LOCK_KEY = 0x1B005701
_submit_lock = threading.Lock()


# -- lifecycle -----------------------------------------------------------------------------------

def predecessors(status: JobStatus) -> set[JobStatus]:
    """Return the statuses a job may move to ``status`` from."""
    return {s for s, nexts in ALLOWED.items() if status in nexts}


def transition(session: Session, job: Job | int, new_status: JobStatus, *, expect: Mapping[str, Any] | None = None,
               **fields: Any) -> Job:
    """Move a job to new_status (and set fields) or raise Conflict; safe against concurrent updates.

    The UPDATE only matches while the row is in an allowed predecessor status (and, with expect, while
    those columns hold those values), so of two processes racing (a cancel and a worker's start, say)
    exactly one wins and the other gets Conflict.
    started_at / finished_at are stamped here so every path records them the same way.
    """
    job_id = job.id if isinstance(job, Job) else int(job)
    new_status = JobStatus(new_status)
    values = dict(fields)
    now = utcnow()
    if new_status is JobStatus.running:
        values.setdefault("started_at", now)
    if new_status in FINAL:
        values.setdefault("finished_at", now)
    conditions = [getattr(Job, name) == value for name, value in (expect or {}).items()]
    stmt = (update(Job).where(Job.id == job_id, Job.status.in_(predecessors(new_status)), *conditions)
            .values(status=new_status, **values).execution_options(synchronize_session=False))
    if session.execute(stmt).rowcount != 1:
        current = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
        if current is None:
            raise NotFound(f"job {job_id} does not exist", field="id")
        raise Conflict(f"job {job_id} is {current.value}; it cannot become {new_status.value}", field="status")
    return session.get(Job, job_id, populate_existing=True)


def _get_for_update(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"job {job_id} does not exist", field="id")
    return job


# -- submission ----------------------------------------------------------------------------------

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


def _insert_queued(session: Session, request: JobRequest, limit: int) -> Job:
    """Insert the queued job unless limit jobs already wait (TooManyJobs); commit."""
    with _submit_lock:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(SUBMIT_LOCK_KEY)))
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

    Refuses (ModelError) a model no live worker serves, (ValidationError) a job that cannot fit the
    model the workers advertise (layers, context), (TooManyJobs) a full queue and (Unavailable) an
    unreachable broker; a job the broker refused is failed at once, so no row waits forever.
    """
    from shared import celery_config as cc

    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    redis = redis if redis is not None else cc.redis_client(settings["redis.url"])
    celery_app = celery_app if celery_app is not None else cc.get_celery()
    namespace = settings["redis.namespace"]

    try:
        beats = cc.live_workers(redis, namespace)
    except Exception as exc:  # redis-py raises ConnectionError/TimeoutError subclasses
        log.warning("broker unreachable on submit: %s", type(exc).__name__)
        raise Unavailable(f"the broker (Redis) is unreachable ({type(exc).__name__}); retry shortly") from None
    served = {m for beat in beats for m in beat["models"]}
    if request.model not in served:
        hint = f"models served now: {', '.join(sorted(served))}" if served else "no worker is running"
        raise ModelError(f"no live worker serves model {request.model!r} ({hint}); choose a served model or "
                         f"start a worker with INSTABOOST_WORKER_MODELS={request.model}", field="model")
    request.check_model(model_facts(beats, request.model))
    job = _insert_queued(session, request, settings["limits.max_queued_jobs"])
    try:
        celery_app.send_task(cc.TASK_NAME, args=[job.id], queue=cc.model_queue(job.model))
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


def cancel_job(session: Session, job_id: int) -> Job:
    """Cancel a job: queued -> cancelled (never runs), running -> cancelling; repeat calls are no-ops."""
    job = _get_for_update(session, job_id)
    for _ in range(3):  # the job may change state under us; re-read and decide again
        if job.status in (JobStatus.cancelled, JobStatus.cancelling):
            return job
        if job.status in FINAL:
            raise Conflict(f"job {job_id} already {job.status.value}; only queued or running jobs can be cancelled",
                           field="status")
        target = JobStatus.cancelled if job.status is JobStatus.queued else JobStatus.cancelling
        try:
            job = transition(session, job, target)
            session.commit()
            return job
        except Conflict:
            session.rollback()
            job = _get_for_update(session, job_id)
    raise Conflict(f"job {job_id} changed state while being cancelled; retry", field="status")


# -- worker side ---------------------------------------------------------------------------------

def mark_running(session: Session, job_id: int, worker: str,
                 is_alive: Callable[[str], bool] | None = None) -> Job | None:
    """Claim a delivered job for worker; return None when it must be skipped (cancelled or finished).

    A job still marked running is a redelivery after its worker died: it goes back through queued
    (the documented transition) and is claimed again. A cancelling one is finished as cancelled.
    With is_alive (worker id -> bool), a job that another live worker is running is left to it (a
    duplicate delivery), and the takeover only matches while the row still names the dead worker, so
    two claimants of one dead worker's job cannot both win.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return None
    try:
        if job.status is JobStatus.cancelling:
            transition(session, job, JobStatus.cancelled)
            session.commit()
            return None
        if job.status is JobStatus.running:
            if is_alive is not None and job.worker and job.worker != worker and is_alive(job.worker):
                session.rollback()
                return None
            transition(session, job, JobStatus.queued, expect={"worker": job.worker})
        job = transition(session, job, JobStatus.running, worker=worker, started_at=utcnow(),
                         attempts=Job.attempts + 1, error=None)
    except Conflict:
        session.rollback()  # cancelled or finished by someone else meanwhile
        return None
    session.commit()
    return job


def mark_progress(session: Session, job_id: int, done: int, total: int | None = None) -> JobStatus:
    """Record progress and return the job's status (``cancelling`` tells the worker to stop)."""
    values: dict[str, Any] = {"progress_done": done}
    if total is not None:
        values["progress_total"] = total
    session.execute(update(Job).where(Job.id == job_id, Job.status.in_([JobStatus.running, JobStatus.cancelling]))
                    .values(**values).execution_options(synchronize_session=False))
    session.commit()
    return job_status(session, job_id)


def job_status(session: Session, job_id: int) -> JobStatus:
    """Return a job's current status from the database."""
    status = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
    if status is None:
        raise NotFound(f"job {job_id} does not exist", field="id")
    return status


def cancel_requested(session: Session, job_id: int) -> bool:
    """Return True once a cancel was requested for a job (checked at variant boundaries)."""
    return job_status(session, job_id) in (JobStatus.cancelling, JobStatus.cancelled)


def mark_succeeded(session: Session, job_id: int) -> Job:
    """Finish a job as succeeded."""
    job = transition(session, job_id, JobStatus.succeeded, progress_done=Job.progress_total, error=None)
    session.commit()
    return job


def mark_failed(session: Session, job_id: int, error: str) -> Job:
    """Finish a job as failed with a message saying what went wrong."""
    job = transition(session, job_id, JobStatus.failed, error=str(error)[:10_000])
    session.commit()
    return job


def finish_cancel(session: Session, job_id: int) -> Job:
    """Finish a cancelling (or still queued) job as cancelled."""
    job = transition(session, job_id, JobStatus.cancelled)
    session.commit()
    return job


def requeue(session: Session, job_id: int, error: str | None = None) -> Job:
    """Put a running job back to queued (its worker died; the message will be delivered again)."""
    job = transition(session, job_id, JobStatus.queued, error=error)
    session.commit()
    return job


def _heads_text(heads: Any) -> str | None:
    if heads is None or isinstance(heads, str):
        return heads
    if isinstance(heads, Mapping):
        heads = {str(k): list(v) for k, v in heads.items()}
    return json.dumps(heads, separators=(",", ":"), sort_keys=True)


def _layers_text(layers: Any) -> str:
    if isinstance(layers, str):
        return layers
    return ",".join(str(int(i)) for i in layers)


def record_run(session: Session, job_id: int, variant: str, *, multiplier: float, layers: Any,
               output_text: str, heads: Any = None, prompt_tokens: int = 0, output_tokens: int = 0,
               seconds: float = 0.0, attention_mass: dict | None = None) -> Run:
    """Store one variant's output once (a redelivered job recording it again keeps the first row).

    Also sets the job's progress_done to the number of stored runs, so progress survives redelivery.
    """
    existing = session.execute(select(Run).where(Run.job_id == job_id, Run.variant == variant)).scalar_one_or_none()
    if existing is None:
        values = dict(job_id=job_id, variant=variant, multiplier=float(multiplier), layers=_layers_text(layers),
                      heads=_heads_text(heads), output_text=output_text, prompt_tokens=int(prompt_tokens),
                      output_tokens=int(output_tokens), seconds=float(seconds), attention_mass=attention_mass,
                      created_at=utcnow())
        dialect = session.get_bind().dialect.name
        if dialect in ("postgresql", "sqlite"):
            # INSERT .. ON CONFLICT DO NOTHING: two concurrent deliveries cannot both insert.
            mod = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            stmt = mod.insert(Run).values(**values).on_conflict_do_nothing(index_elements=["job_id", "variant"])
            session.execute(stmt)
        else:  # pragma: no cover - other backends: check-then-insert in a savepoint
            from sqlalchemy.exc import IntegrityError

            try:
                with session.begin_nested():
                    session.add(Run(**values))
            except IntegrityError:
                pass
    count = select(func.count()).select_from(Run).where(Run.job_id == job_id).scalar_subquery()
    session.execute(update(Job).where(Job.id == job_id).values(progress_done=count)
                    .execution_options(synchronize_session=False))
    session.commit()
    return session.execute(select(Run).where(Run.job_id == job_id, Run.variant == variant)
                           .execution_options(populate_existing=True)).scalar_one()


# -- reading -------------------------------------------------------------------------------------

def get_job(session: Session, job_id: Any, with_runs: bool = True) -> Job:
    """Return a job (and its runs) or raise NotFound."""
    try:
        jid = _parse_int("id", job_id, lo=1, hi=MAX_ID)
    except ValidationError:
        raise NotFound(f"job {show(job_id)} does not exist: job ids are positive integers", field="id") from None
    job = session.get(Job, jid, populate_existing=True)
    if job is None:
        raise NotFound(f"job {jid} does not exist", field="id")
    if with_runs:
        _ = job.runs  # load now so the caller can close the session
    return job


def encode_cursor(kind: str, last_id: int) -> str:
    """Return an opaque cursor pointing after row last_id (kind letter + hex id, e.g. "j1f")."""
    return f"{kind}{last_id:x}"


def cursor_pattern(kind: str) -> str:
    """Return the regular expression every valid cursor of kind matches (for the OpenAPI document)."""
    return f"^{kind}[0-9a-f]{{1,8}}$"


def decode_cursor(kind: str, cursor: str | None) -> int | None:
    """Return the id a cursor points after, or raise BadRequest naming the cursor field."""
    if cursor in (None, ""):
        return None
    if not re.fullmatch(cursor_pattern(kind), cursor):
        raise BadRequest("cursor is not valid: pass the next_cursor of a previous page unchanged",
                         field="cursor")
    return min(int(cursor[1:], 16), MAX_ID)  # ids never reach MAX_ID; a larger cursor means the first page


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            # "100.0" is an integer too (JSON Schema counts numbers by value, and clients write it so).
            x = float(text)
            if not x.is_integer():
                raise
            return int(x)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _parse_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    try:
        n = _as_int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(f"{name} must be an integer, got {show(value)}", field=name) from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise ValidationError(f"{name} must be between {lo} and {hi}, got {show(n)}" if hi is not None
                              else f"{name} must be >= {lo}, got {n}", field=name)
    return n


def parse_limit(value: Any) -> int:
    """Return a page size in [1, MAX_LIMIT] (default DEFAULT_LIMIT) or raise naming the limit field."""
    if value in (None, ""):
        return DEFAULT_LIMIT
    return _parse_int("limit", value, lo=1, hi=MAX_LIMIT)


def _parse_status(value: Any) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        raise ValidationError(f"status must be one of {', '.join(s.value for s in JobStatus)}; got {show(value)}",
                              field="status") from None


JOB_FILTERS = ("status", "model")
RUN_FILTERS = ("job_id", "model", "variant", "status")


def clean_filters(kind: str, filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate list filters (jobs: status, model; runs: job_id, model, variant, status); drop empty ones."""
    allowed = JOB_FILTERS if kind == "jobs" else RUN_FILTERS
    out: dict[str, Any] = {}
    for key in allowed:
        value = (filters or {}).get(key)
        if value in (None, ""):
            continue
        if key == "status":
            out[key] = _parse_status(value)
        elif key == "job_id":
            out[key] = _parse_int("job_id", value, lo=1, hi=MAX_ID)
        else:
            if "\x00" in str(value):  # PostgreSQL text cannot hold NUL; no stored value matches one
                raise ValidationError(f"{key} must not contain NUL characters", field=key)
            out[key] = str(value)
    return out


def list_jobs(session: Session, filters: Mapping[str, Any] | None = None, limit: Any = None,
              cursor: str | None = None) -> tuple[list[Job], str | None]:
    """Return one page of jobs, newest first, and the cursor of the next page (None at the end)."""
    f = clean_filters("jobs", filters)
    size = parse_limit(limit)
    after = decode_cursor("j", cursor)
    stmt = select(Job).order_by(Job.id.desc()).limit(size + 1)
    if after is not None:
        stmt = stmt.where(Job.id < after)
    if "status" in f:
        stmt = stmt.where(Job.status == f["status"])
    if "model" in f:
        stmt = stmt.where(Job.model == f["model"])
    rows = list(session.execute(stmt).scalars())
    nxt = encode_cursor("j", rows[size - 1].id) if len(rows) > size else None
    return rows[:size], nxt


def _runs_query(f: Mapping[str, Any]):
    stmt = select(Run, Job).join(Job, Run.job_id == Job.id)
    if "job_id" in f:
        stmt = stmt.where(Run.job_id == f["job_id"])
    if "model" in f:
        stmt = stmt.where(Job.model == f["model"])
    if "variant" in f:
        stmt = stmt.where(Run.variant == f["variant"])
    if "status" in f:
        stmt = stmt.where(Job.status == f["status"])
    return stmt


def list_runs(session: Session, filters: Mapping[str, Any] | None = None, limit: Any = None,
              cursor: str | None = None) -> tuple[list[tuple[Run, Job]], str | None]:
    """Return one page of (run, job) pairs, newest first, and the next cursor."""
    f = clean_filters("runs", filters)
    size = parse_limit(limit)
    after = decode_cursor("r", cursor)
    stmt = _runs_query(f).order_by(Run.id.desc()).limit(size + 1)
    if after is not None:
        stmt = stmt.where(Run.id < after)
    rows = [tuple(r) for r in session.execute(stmt)]
    nxt = encode_cursor("r", rows[size - 1][0].id) if len(rows) > size else None
    return rows[:size], nxt


PARAM_COLUMNS = ("model", "engine", "placement", "instruction", "query", "max_new_tokens", "temperature",
                 "top_p", "seed", "start_layer", "num_middle_layers", "head_boost_percentage")
EXPORT_COLUMNS = ("run_id", "job_id", "job_status", "variant", "multiplier", "layers", "heads",
                  *PARAM_COLUMNS, "output_text", "prompt_tokens", "output_tokens", "seconds",
                  "attention_unboosted", "attention_boosted", "created_at")


def _mean_mass(mass: Any, key: str) -> float | None:
    """Return the mean over layers of a run's attention on the instruction, or None when not recorded."""
    values = mass.get(key) if isinstance(mass, Mapping) else None
    if not isinstance(values, list) or not values:
        return None
    try:
        return round(sum(float(v) for v in values) / len(values), 6)
    except (TypeError, ValueError):
        return None


def export_row(run: Run, job: Job) -> list[Any]:
    """Return one CSV row (EXPORT_COLUMNS) for a run and its job's parameters."""
    params = job.params or {}
    values = {"run_id": run.id, "job_id": job.id, "job_status": job.status.value, "variant": run.variant,
              "multiplier": run.multiplier, "layers": run.layers, "heads": run.heads,
              "output_text": run.output_text, "prompt_tokens": run.prompt_tokens,
              "output_tokens": run.output_tokens, "seconds": run.seconds,
              "attention_unboosted": _mean_mass(run.attention_mass, "unboosted"),
              "attention_boosted": _mean_mass(run.attention_mass, "boosted"),
              "created_at": run.created_at.isoformat() if isinstance(run.created_at, datetime) else run.created_at}
    for name in PARAM_COLUMNS:
        values[name] = job.model if name == "model" else params.get(name)
    return [values[c] for c in EXPORT_COLUMNS]


def iter_runs_for_export(session: Session, filters: Mapping[str, Any] | None = None) -> Iterator[list[Any]]:
    """Yield export rows for every run matching filters, oldest first, streaming in batches."""
    f = clean_filters("runs", filters)
    stmt = _runs_query(f).order_by(Run.id.asc()).execution_options(yield_per=EXPORT_BATCH)
    for run, job in session.execute(stmt):
        yield export_row(run, job)


# -- serialization -------------------------------------------------------------------------------

def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def run_to_dict(run: Run) -> dict[str, Any]:
    """Return a run as JSON-able data."""
    return {"id": run.id, "job_id": run.job_id, "variant": run.variant, "multiplier": run.multiplier,
            "layers": run.layers, "heads": run.heads, "output_text": run.output_text,
            "prompt_tokens": run.prompt_tokens, "output_tokens": run.output_tokens, "seconds": run.seconds,
            "attention_mass": run.attention_mass, "created_at": _iso(run.created_at)}


def job_to_dict(job: Job, runs: bool = True) -> dict[str, Any]:
    """Return a job (and its runs so far) as JSON-able data."""
    d = {"id": job.id, "status": job.status.value, "finished": job.status in FINAL, "model": job.model,
         "params": job.params,
         "progress": {"done": job.progress_done, "total": job.progress_total},
         "error": job.error, "attempts": job.attempts, "worker": job.worker,
         "created_at": _iso(job.created_at), "enqueued_at": _iso(job.enqueued_at),
         "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at)}
    if runs:
        d["runs"] = [run_to_dict(r) for r in job.runs]
    return d
