"""OpenAI Files and Batches on the job store: each valid line of a batch's input file is one stored chat job.

A batch goes validating -> in_progress (its lines are queued jobs, behind interactive work) -> finalizing (every
job ended: the output and error files are written) -> completed; or failed (no line was valid), cancelling ->
cancelled (POST .../cancel cancels its unfinished jobs), expired (past its completion window). ``refresh_batch``
moves a batch on once its jobs have ended; the worker calls it when a batch's job ends, the sweeper and the
web's reads call it too, and a conditional UPDATE lets exactly one of them finalize. The files list one line
per input line, by custom_id: the output file the succeeded requests, the error file every other one.

Batch status <-> job status: a line whose job succeeded is completed (output file); failed -> failed (error
file, status 500 with the job's error); cancelled (by a batch cancel or expiry) -> failed (error file,
error.code batch_cancelled / batch_expired); a line refused before it became a job -> failed (error file,
status 400 with why).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any, Mapping

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.chat import CHAT_ENDPOINT, CHAT_VARIANT, chat_params, completion_body
from shared.errors import BadRequest, Conflict, InstaBoostError, ModelError, NotFound, ValidationError
from shared.store import lifecycle
from shared.store.tables import BATCH_FINAL, Batch, File, Job, JobStatus, Run, utcnow
from shared.validation import brief

FILE_PURPOSES = ("batch",)  # what POST /v1/files accepts; batch_output files are written by finalization
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
MAX_CUSTOM_ID = 512
MAX_METADATA_KEYS = 16
STALE_FINALIZING = timedelta(seconds=120)  # a finalizer that died: another may take over after this


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _key(value: Any) -> str | None:
    """Return value when it can be a stored id (a string of at most 64 printable characters), else None."""
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
        return value
    return None


# -- files ---------------------------------------------------------------------------------------------------


def check_jsonl(content: bytes, max_lines: int) -> int:
    """Return the number of request lines in a batch input file; BadRequest when it is not JSONL of objects."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the file is not UTF-8 text (byte {exc.start}); a batch input is JSONL", field="file") \
            from None
    count = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"line {n} of the file is not valid JSON ({str(exc)[:120]}); each line of a batch "
                             "input is one JSON object", field="file") from None
        if not isinstance(obj, dict):
            raise BadRequest(f"line {n} of the file is {type(obj).__name__}, not a JSON object", field="file")
        count += 1
        if count > max_lines:
            raise BadRequest(f"the file holds more than {max_lines} requests (limits.max_queued_jobs); split it",
                             field="file")
    if count == 0:
        raise BadRequest("the file holds no request lines; a batch input is JSONL, one request per line",
                         field="file")
    return count


def create_file(session: Session, purpose: str, filename: str, content: bytes, max_lines: int) -> File:
    """Store an uploaded file (purpose "batch": JSONL checked line by line); commit and return it."""
    if purpose not in FILE_PURPOSES:
        raise BadRequest(f"purpose must be one of {', '.join(FILE_PURPOSES)}; got {brief(purpose)} (this server "
                         "stores files for batches only)", field="purpose")
    check_jsonl(content, max_lines)
    return _store_file(session, purpose, filename, content)


def _store_file(session: Session, purpose: str, filename: str, content: bytes) -> File:
    name = "".join(c for c in (filename or "upload.jsonl") if c.isprintable())[:255] or "upload.jsonl"
    f = File(id=new_id("file-"), purpose=purpose, filename=name, bytes=len(content), content=content,
             created_at=utcnow())
    session.add(f)
    session.commit()
    return f


def get_file(session: Session, file_id: str) -> File:
    f = session.get(File, _key(file_id)) if _key(file_id) else None
    if f is None:
        raise NotFound(f"no file with id {brief(file_id)}", field="file_id")
    return f


def file_to_dict(f: File) -> dict[str, Any]:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": int(f.created_at.timestamp()),
            "filename": f.filename, "purpose": f.purpose, "status": "processed", "expires_at": None,
            "status_details": None}


def delete_file(session: Session, file_id: str) -> dict[str, Any]:
    f = get_file(session, file_id)
    session.delete(f)
    session.commit()
    return {"id": f.id, "object": "file", "deleted": True}


def list_files(session: Session, purpose: str | None, limit: int, after: str | None) -> dict[str, Any]:
    stmt = select(File).order_by(File.created_at.desc(), File.id.desc())
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    if after:
        anchor = session.get(File, _key(after)) if _key(after) else None
        if anchor is not None:
            stmt = stmt.where((File.created_at < anchor.created_at) |
                              ((File.created_at == anchor.created_at) & (File.id < anchor.id)))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return _list([file_to_dict(f) for f in rows[:limit]], len(rows) > limit)


def _list(data: list[dict], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


# -- batches: creation ----------------------------------------------------------------------------------------


def _line_error(n: int, custom_id: Any, message: str, param: str | None = None, code: str = "invalid_value",
                status: int = 400) -> dict:
    return {"line": n, "custom_id": custom_id if isinstance(custom_id, str) else None, "message": message,
            "param": param, "code": code, "status": status}


def parse_lines(content: bytes, endpoint: str, settings: Mapping[str, Any], served: set[str]
                ) -> tuple[list[tuple[str, dict]], list[dict], int]:
    """Return (valid (custom_id, chat params) lines, refused lines' errors, line count) of a batch input."""
    good: list[tuple[str, dict]] = []
    bad: list[dict] = []
    seen: set[str] = set()
    total = 0
    for n, line in enumerate(content.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        total += 1
        obj = json.loads(line)
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
            bad.append(_line_error(n, None, f"line {n}: custom_id must be a non-empty string of at most "
                                            f"{MAX_CUSTOM_ID} characters", "custom_id"))
            continue
        if cid in seen:
            bad.append(_line_error(n, cid, f"line {n}: custom_id {brief(cid)} is used by an earlier line; each "
                                           "must be unique", "custom_id", "duplicate_custom_id"))
            continue
        seen.add(cid)
        unknown = [k for k in obj if k not in ("custom_id", "method", "url", "body")]
        if unknown:
            bad.append(_line_error(n, cid, f"line {n}: unknown keys {', '.join(map(brief, unknown[:5]))}; a line "
                                           "holds custom_id, method, url and body"))
            continue
        if obj.get("method") != "POST":
            bad.append(_line_error(n, cid, f"line {n}: method must be POST, got {brief(obj.get('method'))}",
                                   "method"))
            continue
        if obj.get("url") != endpoint:
            bad.append(_line_error(n, cid, f"line {n}: url must be the batch's endpoint {endpoint}, got "
                                           f"{brief(obj.get('url'))}", "url", "invalid_url"))
            continue
        body = obj.get("body")
        if isinstance(body, dict) and body.get("stream"):
            body = {**body, "stream": False}  # a batch line is answered in the output file, never streamed
        try:
            params = chat_params(body, settings, priority="batch")
        except ValidationError as exc:
            detail = "; ".join(str(e["message"]) for e in exc.errors) or exc.message
            bad.append(_line_error(n, cid, f"line {n}: {detail}", exc.errors[0]["field"] if exc.errors else None))
            continue
        if params["model"] not in served:
            bad.append(_line_error(n, cid, f"line {n}: no live worker serves model {params['model']!r}", "model",
                                   "model_not_found", 404))
            continue
        good.append((cid, params))
    return good, bad, total


def _metadata(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()):
        raise ValidationError(f"metadata must be an object of at most {MAX_METADATA_KEYS} string keys (64 "
                              "characters) and string values (512 characters)", field="metadata")
    return value


def create_batch(session: Session, body: Any, *, settings: Mapping[str, Any], celery_app, redis) -> Batch:
    """Validate a POST /v1/batches body, store the batch and one queued chat job per valid line; return it."""
    from shared.store import submission

    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with input_file_id, endpoint and completion_window",
                         field="body")
    unknown = [k for k in body if k not in ("input_file_id", "endpoint", "completion_window", "metadata")]
    if unknown:
        raise ValidationError(f"unrecognized request argument {brief(unknown[0])}", field=str(unknown[0])[:64])
    if body.get("endpoint") != CHAT_ENDPOINT:
        raise ValidationError(f"endpoint must be {CHAT_ENDPOINT} (the one this server batches); got "
                              f"{brief(body.get('endpoint'))}", field="endpoint")
    window = body.get("completion_window")
    if not isinstance(window, str) or window not in COMPLETION_WINDOWS:
        raise ValidationError(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}; got "
                              f"{brief(window)}", field="completion_window")
    meta = _metadata(body.get("metadata"))
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise ValidationError("input_file_id must be the id of a file uploaded with purpose batch",
                              field="input_file_id")
    f = session.get(File, _key(file_id)) if _key(file_id) else None
    if f is None:
        raise NotFound(f"no file with id {brief(file_id)}; upload it with POST /v1/files (purpose batch)",
                       field="input_file_id")
    if f.purpose != "batch":
        raise ValidationError(f"file {f.id} has purpose {f.purpose}; a batch's input needs purpose batch",
                              field="input_file_id")
    _, served, _ = submission.served_models(settings, redis)
    good, bad, total = parse_lines(f.content, CHAT_ENDPOINT, settings, served)
    now = utcnow()
    batch = Batch(id=new_id("batch_"), status="validating", endpoint=CHAT_ENDPOINT, input_file_id=f.id,
                  completion_window=window, request_total=total, line_errors=bad, meta=meta, created_at=now,
                  expires_at=now + COMPLETION_WINDOWS[window])
    session.add(batch)
    session.commit()
    batch_id = batch.id
    try:
        submission.submit_batch_jobs(session, batch_id, good, settings=settings, celery_app=celery_app)
    except InstaBoostError:  # e.g. the queue is full: nothing of this batch stays
        session.rollback()
        session.execute(update(Job).where(Job.batch_id == batch_id).values(batch_id=None))
        session.delete(session.get(Batch, batch_id))
        session.commit()
        raise
    now = utcnow()
    if good:
        session.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "validating")
                        .values(status="in_progress", in_progress_at=now))
    else:
        session.execute(update(Batch).where(Batch.id == batch_id).values(
            status="failed", failed_at=now,
            errors={"object": "list", "data": [{"code": e["code"], "message": e["message"], "param": e["param"],
                                                "line": e["line"]} for e in bad[:100]]}))
        session.commit()
        _write_files(session, session.get(Batch, batch_id, populate_existing=True))
    session.commit()
    return refresh_batch(session, batch_id)


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


def _write_files(session: Session, batch: Batch, stop_code: str | None = None) -> None:
    """Write the output file (succeeded lines) and the error file (every other line), in input order."""
    jobs = list(session.scalars(select(Job).where(Job.batch_id == batch.id).order_by(Job.id)))
    runs = {r.job_id: r for r in session.scalars(
        select(Run).where(Run.job_id.in_([j.id for j in jobs]), Run.variant == CHAT_VARIANT))} if jobs else {}
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
    if out:
        values["output_file_id"] = _store_file(session, "batch_output", f"{batch.id}_output.jsonl", _jsonl(out)).id
    if err:
        values["error_file_id"] = _store_file(session, "batch_output", f"{batch.id}_error.jsonl", _jsonl(err)).id
    if values:
        session.execute(update(Batch).where(Batch.id == batch.id).values(**values)
                        .execution_options(synchronize_session=False))
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
    """Return the batches that may need moving on (for the sweeper)."""
    ids = list(session.scalars(select(Batch.id).where(Batch.status.in_(["in_progress", "cancelling", "finalizing"]))))
    session.commit()
    return ids


def _ts(value) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_to_dict(session: Session, batch: Batch) -> dict[str, Any]:
    """Return the OpenAI batch object."""
    counts = job_counts(session, batch.id)
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": batch.errors,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window, "status": batch.status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": _ts(batch.created_at), "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at), "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at), "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at), "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at), "request_counts": request_counts(batch, counts),
        "metadata": batch.meta,
    }


def list_batches(session: Session, limit: int, after: str | None) -> dict[str, Any]:
    stmt = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc())
    if after:
        anchor = session.get(Batch, _key(after)) if _key(after) else None
        if anchor is None:
            raise NotFound(f"no batch with id {brief(after)} to list after", field="after")
        stmt = stmt.where((Batch.created_at < anchor.created_at) |
                          ((Batch.created_at == anchor.created_at) & (Batch.id < anchor.id)))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return _list([batch_to_dict(session, b) for b in rows[:limit]], len(rows) > limit)


__all__ = ["create_file", "get_file", "delete_file", "list_files", "file_to_dict", "create_batch", "get_batch",
           "refresh_batch", "cancel_batch", "batch_to_dict", "list_batches", "open_batch_ids", "ModelError"]
