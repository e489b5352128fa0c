"""OpenAI Batches on the job store: each valid line of a batch's input file is one stored chat job.

A create stores the batch and all its jobs in one transaction (a create that dies stores nothing, so no batch is
left ``validating``), then enqueues each job; a message the broker refuses waits in the outbox (enqueued_at NULL)
and the recovery loop sends it. A create that repeats an earlier one returns the batch that one stored: same
``Idempotency-Key`` header (the same key with another request is 400), or, without a key, a retry of the openai
SDK (``x-stainless-retry-count`` > 0) of the same request within RETRY_WINDOW.

A batch goes in_progress (its lines are queued jobs, behind interactive work) -> finalizing (every job ended: the
output and error files are written) -> completed; or failed (no line was valid), cancelling -> cancelled
(POST .../cancel cancels its unfinished jobs), expired (past its completion window). ``refresh_batch``
moves a batch on once its jobs have ended; the worker calls it when a batch's job ends, the recovery loop and the
web's reads call it too, and a conditional UPDATE lets exactly one of them finalize. The files list one line
per input line, by custom_id: the output file the succeeded requests, the error file every other one.

Batch status <-> job status: a line whose job succeeded is completed (output file); failed -> failed (error
file, status 500 with the job's error); cancelled (by a batch cancel or expiry) -> failed (error file,
error.code batch_cancelled / batch_expired); a line refused before it became a job (shared.store.batch_input)
-> failed (error file, status 400 with why).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any, Mapping

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.chat import CHAT_ENDPOINT, choice_index, completion_body
from shared.errors import BadRequest, Conflict, NotFound, ValidationError
from shared.resources import openai as resources
from shared.store import batch_input, files, lifecycle, submission
from shared.store.files import key as _key
from shared.settings import Settings, get_settings
from shared.store.tables import BATCH_FINAL, Batch, Job, JobStatus, Run, utcnow
from shared.validation import brief

log = logging.getLogger(__name__)

STALE_FINALIZING = timedelta(seconds=120)  # a finalizer that died: another may take over after this
STALE_VALIDATING = timedelta(seconds=600)  # a batch left validating by a create that died (before creates were atomic)
RETRY_WINDOW = timedelta(seconds=600)  # how far back a keyless SDK retry looks for the batch its first try created


# -- batches: creation ----------------------------------------------------------------------------------------


def _same(batch: Batch, req: Mapping[str, Any]) -> bool:
    return all(getattr(batch, k) == v for k, v in req.items())


def _earlier(session: Session, req: dict, idempotency_key: str | None, retry: bool) -> Batch | None:
    """Return the batch an earlier try of this create stored: by its Idempotency-Key, or for a keyless retry of the
    openai SDK (x-stainless-retry-count > 0) the newest keyless batch of the same request in RETRY_WINDOW."""
    if idempotency_key is not None:
        earlier = session.scalar(select(Batch).where(Batch.idempotency_key == idempotency_key))
        if earlier is not None and not _same(earlier, req):
            raise BadRequest(f"the Idempotency-Key {brief(idempotency_key)} was used for batch {earlier.id}, created "
                             "with other parameters; send a new key for a new batch", field="Idempotency-Key")
        return earlier
    if not retry:
        return None
    stmt = select(Batch).where(Batch.idempotency_key.is_(None), Batch.created_at >= utcnow() - RETRY_WINDOW,
                               Batch.input_file_id == req["input_file_id"],
                               Batch.completion_window == req["completion_window"])
    return next((b for b in session.scalars(stmt.order_by(Batch.created_at.desc())) if _same(b, req)), None)


def _idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 255 or "\x00" in value:
        raise BadRequest("the Idempotency-Key header must be 1 to 255 characters", field="Idempotency-Key")
    return value


def create_batch(session: Session, body: Any, *, settings: Settings, celery_app, redis,
                 idempotency_key: str | None = None, retry: bool = False) -> Batch:
    """Validate a POST /v1/batches body, store the batch and one queued chat job per valid line; return it.

    The batch and all its jobs are stored in one transaction (a create that dies stores nothing), then each job is
    enqueued (a message the broker refuses is sent again by the recovery loop's outbox). A create repeating an earlier
    one (same Idempotency-Key, or a keyless retry of the openai SDK) returns the batch that one stored.
    """
    req = batch_input.create_request(body)
    idempotency_key = _idempotency_key(idempotency_key)
    earlier = _earlier(session, req, idempotency_key, retry)
    if earlier is not None:
        return refresh_batch(session, earlier.id)
    f = files.get_file(session, req["input_file_id"], "input_file_id",
                       "; upload it with POST /v1/files (purpose batch)")
    if f.purpose != "batch":
        raise ValidationError(f"file {f.id} has purpose {f.purpose}; a batch's input needs purpose batch",
                              field="input_file_id")
    beats, served, _ = submission.served_models(settings, redis)
    good, bad, total = batch_input.parse_lines(f.content, CHAT_ENDPOINT, settings, served, beats)
    session.expire(f, ["content"])
    now = utcnow()
    batch = Batch(id=files.new_id("batch_"), status="in_progress" if good else "failed", endpoint=CHAT_ENDPOINT,
                  input_file_id=f.id, completion_window=req["completion_window"], request_total=total,
                  line_errors=bad, meta=req["meta"], created_at=now, in_progress_at=now if good else None,
                  expires_at=now + batch_input.COMPLETION_WINDOWS[req["completion_window"]], idempotency_key=idempotency_key)
    try:
        if good:
            ids = submission.submit_batch_jobs(session, batch, good, settings=settings, celery_app=celery_app)
        else:
            batch.failed_at = now
            batch.errors = {"object": "list", "data": [{"code": e["code"], "message": e["message"],
                                                        "param": e["param"], "line": e["line"]} for e in bad[:100]]}
            session.add(batch)
            session.flush()
            _write_files(session, batch, commit=False, settings=settings)
            session.commit()
            ids = []
    except IntegrityError:  # a concurrent try with the same Idempotency-Key stored its batch first
        session.rollback()
        earlier = _earlier(session, req, idempotency_key, False) if idempotency_key else None
        if earlier is None:
            raise
        return refresh_batch(session, earlier.id)
    log.info("batch %s created: %d jobs, %d lines refused", batch.id, len(ids), len(bad))
    return refresh_batch(session, batch.id)


def recover_validating(session: Session) -> list[str]:
    """Move on the batches a create left validating for STALE_VALIDATING (for the recovery loop); return their ids.

    Creates are atomic now; a batch a create of an earlier version left validating goes in_progress when its jobs
    were stored (they are stored together), else failed with an error that says to create it again.
    """
    stale = list(session.scalars(select(Batch.id).where(Batch.status == "validating",
                                                        Batch.created_at < utcnow() - STALE_VALIDATING)))
    for batch_id in stale:
        now = utcnow()
        if session.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch_id)):
            values = {"status": "in_progress", "in_progress_at": now}
        else:
            values = {"status": "failed", "failed_at": now, "errors": {"object": "list", "data": [{
                "code": "creation_interrupted", "param": None, "line": None,
                "message": "the batch's creation was interrupted (the database or the web process went away) "
                           "before its requests were stored; create the batch again"}]}}
        session.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "validating").values(**values)
                        .execution_options(synchronize_session=False))
        session.commit()
    return stale


# -- batches: progress and finalization -------------------------------------------------------------------------


def get_batch(session: Session, batch_id: Any) -> Batch:
    b = session.get(Batch, _key(batch_id), populate_existing=True) if _key(batch_id) else None
    if b is None:
        raise NotFound(f"no batch with id {brief(batch_id)}", field="batch_id")
    return b


def job_counts(session: Session, batch_id: str) -> dict[JobStatus, int]:
    rows = session.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status))
    return {status: n for status, n in rows}


def request_counts(batch: Batch, counts: Mapping[JobStatus, int]) -> dict[str, int]:
    refused = len(batch.line_errors or [])
    failed = counts.get(JobStatus.failed, 0) + counts.get(JobStatus.cancelled, 0) + refused
    return {"total": batch.request_total, "completed": counts.get(JobStatus.succeeded, 0), "failed": failed}


def refresh_batch(session: Session, batch_id: str) -> Batch:
    """Move a batch on: expire it past its window, finalize it once every job has ended; return it."""
    batch = get_batch(session, batch_id)
    now = utcnow()
    if batch.status in ("in_progress", "cancelling") and batch.expires_at is not None and now > batch.expires_at:
        _cancel_jobs(session, batch.id)
    stale = batch.status == "finalizing" and batch.finalizing_at is not None and \
        now - batch.finalizing_at > STALE_FINALIZING
    if batch.status not in ("in_progress", "cancelling") and not stale:
        return batch
    counts = job_counts(session, batch.id)
    session.commit()
    if any(not s.finished for s, n in counts.items() if n):
        return batch
    # Exactly one caller wins the claim; the others return the batch as it is.
    cond = Batch.status == batch.status
    if stale:
        cond = cond & (Batch.finalizing_at == batch.finalizing_at)
    won = session.execute(update(Batch).where(Batch.id == batch.id, cond)
                          .values(status="finalizing", finalizing_at=now)
                          .execution_options(synchronize_session=False)).rowcount
    session.commit()
    if won != 1:
        return get_batch(session, batch.id)
    cancelled = batch.status == "cancelling" or (batch.cancelling_at is not None)
    expired = not cancelled and batch.expires_at is not None and now > batch.expires_at
    batch = get_batch(session, batch.id)
    _write_files(session, batch, "batch_cancelled" if cancelled else "batch_expired" if expired else None)
    final = "cancelled" if cancelled else "expired" if expired else "completed"
    session.execute(update(Batch).where(Batch.id == batch.id, Batch.status == "finalizing")
                    .values(status=final, **{f"{final}_at": utcnow()}).execution_options(synchronize_session=False))
    session.commit()
    return get_batch(session, batch.id)


def _write_files(session: Session, batch: Batch, stop_code: str | None = None, *, commit: bool = True,
                 settings: Settings | None = None) -> None:
    """Write the output file (succeeded lines) and the error file (every other line), in input order."""
    jobs = list(session.scalars(select(Job).where(Job.batch_id == batch.id).order_by(Job.id)))
    runs: dict[int, list[Run]] = {}
    for r in session.scalars(select(Run).where(Run.job_id.in_([j.id for j in jobs]))) if jobs else ():
        if choice_index(r.variant) is not None:  # every choice of a line with n > 1
            runs.setdefault(r.job_id, []).append(r)
    out, err = [], []
    for job in jobs:
        run = runs.get(job.id)
        line_id = f"batch_req_{job.id}"
        if job.status is JobStatus.succeeded and run is not None:
            out.append({"id": line_id, "custom_id": job.custom_id, "response": {
                "status_code": 200, "request_id": str(job.id), "body": completion_body(job, run)}, "error": None})
        elif job.status is JobStatus.cancelled:
            code = stop_code or "batch_cancelled"
            err.append({"id": line_id, "custom_id": job.custom_id, "response": None, "error": {
                "code": code, "message": f"the request (job {job.id}) was cancelled before it ran to the end "
                                         f"({'the batch expired' if code == 'batch_expired' else 'batch cancelled'})"}})
        else:
            err.append({"id": line_id, "custom_id": job.custom_id, "response": {
                "status_code": 500, "request_id": str(job.id), "body": {"error": {
                    "message": f"job {job.id} {job.status.value}: {job.error or 'no result'}", "type": "server_error",
                    "param": None, "code": "job_failed"}}}, "error": None})
    for e in batch.line_errors or []:
        err.append({"id": f"batch_req_line{e['line']}", "custom_id": e["custom_id"], "response": {
            "status_code": e["status"], "request_id": None, "body": {"error": {
                "message": e["message"], "type": "invalid_request_error", "param": e["param"], "code": e["code"]}}},
            "error": None})
    values = {}
    settings = settings if settings is not None else get_settings()
    # Never refused for the file bounds (the batch's work is done), but counted against them.
    if out:
        values["output_file_id"] = files.store_file(session, "batch_output", f"{batch.id}_output.jsonl", _jsonl(out),
                                                    settings=settings, commit=False).id
    if err:
        values["error_file_id"] = files.store_file(session, "batch_output", f"{batch.id}_error.jsonl", _jsonl(err),
                                                   settings=settings, commit=False).id
    if values:
        session.execute(update(Batch).where(Batch.id == batch.id).values(**values)
                        .execution_options(synchronize_session=False))
    if commit:
        session.commit()


def _jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")


def _cancel_jobs(session: Session, batch_id: str) -> None:
    ids = list(session.scalars(select(Job.id).where(Job.batch_id == batch_id, Job.status.in_(
        [JobStatus.queued, JobStatus.running]))))
    session.commit()
    for job_id in ids:
        try:
            lifecycle.cancel_job(session, job_id)
        except Conflict:  # it ended meanwhile
            session.rollback()


def cancel_batch(session: Session, batch_id: str) -> Batch:
    """Cancel a batch: its unfinished jobs are cancelled (a running one stops at its boundary); then cancelled."""
    batch = get_batch(session, batch_id)
    if batch.status in BATCH_FINAL or batch.status == "finalizing":
        raise Conflict(f"batch {batch.id} is {batch.status}; only a batch in progress can be cancelled",
                       field="batch_id")
    if batch.status != "cancelling":
        session.execute(update(Batch).where(Batch.id == batch.id, Batch.status.in_(["validating", "in_progress"]))
                        .values(status="cancelling", cancelling_at=utcnow()))
        session.commit()
    _cancel_jobs(session, batch.id)
    return refresh_batch(session, batch.id)


def open_batch_ids(session: Session) -> list[str]:
    """Return the batches that may need moving on (for the recovery loop)."""
    ids = list(session.scalars(select(Batch.id).where(Batch.status.in_(["in_progress", "cancelling", "finalizing"]))))
    session.commit()
    return ids


def _ts(value) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_to_dict(session: Session, batch: Batch) -> dict[str, Any]:
    """Return the OpenAI batch object."""
    counts = job_counts(session, batch.id)
    return resources.Batch(**{
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": batch.errors,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window, "status": batch.status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": _ts(batch.created_at), "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at), "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at), "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at), "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at), "request_counts": request_counts(batch, counts),
        "metadata": batch.meta,
    }).dump()


def list_batches(session: Session, limit: int, after: str | None) -> dict[str, Any]:
    stmt = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc())
    if after:
        anchor = session.get(Batch, _key(after)) if _key(after) else None
        if anchor is None:
            raise NotFound(f"no batch with id {brief(after)} to list after", field="after")
        stmt = stmt.where((Batch.created_at < anchor.created_at) |
                          ((Batch.created_at == anchor.created_at) & (Batch.id < anchor.id)))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return files.page([batch_to_dict(session, b) for b in rows[:limit]], len(rows) > limit)


__all__ = ["create_batch", "get_batch", "refresh_batch", "cancel_batch", "batch_to_dict", "list_batches",
           "open_batch_ids", "recover_validating"]
