"""A job's lifecycle: every status change, the worker's claims and progress, and storing runs.

Every status change goes through ``transition``, a conditional UPDATE (the allowed moves are in
``JobStatus``'s docstring); mutating functions commit, so a change is visible to other processes (and
never half-written) as soon as they return.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.store.tables import ALLOWED, FINAL, Job, JobStatus, Run, store_text, utcnow


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
        row = session.execute(select(Job.status, Job.worker).where(Job.id == job_id)).one_or_none()
        if row is None:
            raise NotFound(f"job {job_id} does not exist", field="id")
        if expect and "worker" in expect and row.worker != expect["worker"] and row.status in predecessors(new_status):
            raise Conflict(f"job {job_id} is no longer {expect['worker']}'s (it is {row.status.value} under "
                           f"{row.worker or 'no worker'}); it cannot become {new_status.value}", field="worker")
        raise Conflict(f"job {job_id} is {row.status.value}; it cannot become {new_status.value}", field="status")
    return session.get(Job, job_id, populate_existing=True)


def _get_for_update(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"job {job_id} does not exist", field="id")
    return job


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
                         attempts=Job.attempts + 1, error=None, error_code=None)
    except Conflict:
        session.rollback()  # cancelled or finished by someone else meanwhile
        return None
    session.commit()
    return job


def claim_queued(session: Session, job_ids: Iterable[int], model: str, worker: str,
                 take: Callable[[Job], bool]) -> list[Job]:
    """Claim for worker the queued jobs of model among job_ids that take(job) accepts; return them.

    Jobs are offered to take in the order the broker would deliver them (priority step, then age), and
    each one taken moves queued -> running under worker with an attempt counted, as a delivery's claim
    does. One transaction: on PostgreSQL rows another worker is claiming are skipped (FOR UPDATE SKIP
    LOCKED), and every claim is a conditional UPDATE, so no job is claimed twice on any database. Jobs
    among job_ids already running under worker are returned too: only a retried claim whose first commit
    went through (its answer lost) leaves such rows, since job_ids never holds a job the worker runs.
    """
    from shared.celery_config import job_priority

    ids = sorted({int(j) for j in job_ids})
    if not ids:
        return []
    # Already running under worker: this claim's commit went through but its answer was lost (a retry).
    held = list(session.scalars(select(Job).where(Job.id.in_(ids), Job.status == JobStatus.running,
                                                  Job.worker == worker)
                                .execution_options(populate_existing=True)))
    stmt = select(Job).where(Job.id.in_(ids), Job.status == JobStatus.queued, Job.model == model)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    offered = sorted(session.scalars(stmt.execution_options(populate_existing=True)).all(),
                     key=lambda j: (job_priority(j.kind, j.batch_id), j.id))
    won: list[Job] = held
    for job in offered:
        if not take(job):
            continue
        try:
            won.append(transition(session, job.id, JobStatus.running, worker=worker, started_at=utcnow(),
                                  attempts=Job.attempts + 1, error=None, error_code=None))
        except Conflict:  # taken or cancelled meanwhile (SQLite has no row locks to skip)
            continue
    session.commit()
    return won


def _owner(worker: str | None) -> dict[str, str] | None:
    # A worker finalizing its job names itself: the UPDATE then only matches while the row still names it,
    # so a worker whose job was taken over (requeued by the recovery loop, claimed by another) changes nothing.
    return {"worker": worker} if worker is not None else None


def mark_progress(session: Session, job_id: int, done: int, total: int | None = None,
                  worker: str | None = None) -> JobStatus:
    """Record progress and return the job's status (``cancelling`` tells the worker to stop).

    With worker, only while the row still names that worker.
    """
    values: dict[str, Any] = {"progress_done": done}
    if total is not None:
        values["progress_total"] = total
    owner = [Job.worker == worker] if worker is not None else []
    session.execute(update(Job).where(Job.id == job_id, Job.status.in_([JobStatus.running, JobStatus.cancelling]),
                                      *owner)
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


def mark_succeeded(session: Session, job_id: int, worker: str | None = None) -> Job:
    """Finish a job as succeeded; with worker, only while the row still names it (else Conflict)."""
    job = transition(session, job_id, JobStatus.succeeded, expect=_owner(worker), progress_done=Job.progress_total,
                     error=None, error_code=None)
    session.commit()
    return job


def mark_failed(session: Session, job_id: int, error: str, worker: str | None = None,
                code: str | None = None) -> Job:
    """Finish a job as failed with a message saying what went wrong, and its code (``shared.errors.JobErrorCode``).

    With worker, only while the row still names it (else Conflict). The message is stored as text on
    every database: NUL characters (which PostgreSQL refuses) become U+2400 (see ``store_text``).
    """
    job = transition(session, job_id, JobStatus.failed, expect=_owner(worker),
                     error=store_text(str(error))[0][:10_000], error_code=None if code is None else str(code))
    session.commit()
    return job


def finish_cancel(session: Session, job_id: int, worker: str | None = None) -> Job:
    """Finish a cancelling (or still queued) job as cancelled; with worker, only while the row names it."""
    job = transition(session, job_id, JobStatus.cancelled, expect=_owner(worker))
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
               seconds: float = 0.0, attention_mass: dict | None = None, finish_reason: str | None = None,
               scores: dict | None = None, logprobs: dict | None = None) -> Run:
    """Store one variant's output once (a redelivered job recording it again keeps the first row).

    Also sets the job's progress_done to the number of stored runs, so progress survives redelivery.
    Any output is stored, NUL characters included (see ``store_text``; ``Run.produced_text`` gives it back).
    """
    existing = session.execute(select(Run).where(Run.job_id == job_id, Run.variant == variant)).scalar_one_or_none()
    if existing is None:
        stored, nuls = store_text(output_text)
        values = dict(job_id=job_id, variant=variant, multiplier=float(multiplier), layers=_layers_text(layers),
                      heads=_heads_text(heads), output_text=stored, output_nul_offsets=nuls,
                      prompt_tokens=int(prompt_tokens),
                      output_tokens=int(output_tokens), seconds=float(seconds), attention_mass=attention_mass,
                      finish_reason=finish_reason, scores=scores, logprobs=logprobs, created_at=utcnow())
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
