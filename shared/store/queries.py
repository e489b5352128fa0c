"""Reading the store: one job, and pages of jobs or runs with filters and opaque keyset cursors."""

from __future__ import annotations

import re
from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import BadRequest, NotFound, ValidationError
from shared.store.tables import Job, JobStatus, Run
from shared.validation import brief, parse_int

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_ID = 2**31 - 1  # INTEGER primary keys; larger ids cannot exist (and would overflow on PostgreSQL)


def get_row(session: Session, table: type, raw_id: Any, noun: str):
    """Return the row of table whose integer id the caller gave (as text or a number), or raise NotFound."""
    try:
        row_id = parse_int("id", raw_id, lo=1, hi=MAX_ID)
    except ValidationError:
        raise NotFound(f"{noun} {brief(raw_id)} does not exist: {noun} ids are positive integers", field="id") from None
    row = session.get(table, row_id, populate_existing=True)
    if row is None:
        raise NotFound(f"{noun} {row_id} does not exist", field="id")
    return row


def get_job(session: Session, job_id: Any, with_runs: bool = True) -> Job:
    """Return a job (and its runs) or raise NotFound."""
    job = get_row(session, Job, job_id, "job")
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


def parse_limit(value: Any) -> int:
    """Return a page size in [1, MAX_LIMIT] (default DEFAULT_LIMIT) or raise naming the limit field."""
    if value in (None, ""):
        return DEFAULT_LIMIT
    return parse_int("limit", value, lo=1, hi=MAX_LIMIT)


def _parse_status(value: Any) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        raise ValidationError(f"status must be one of {', '.join(s.value for s in JobStatus)}; got {brief(value)}",
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
            out[key] = parse_int("job_id", value, lo=1, hi=MAX_ID)
        else:
            if "\x00" in str(value):  # PostgreSQL text cannot hold NUL; no stored value matches one
                raise ValidationError(f"{key} must not contain NUL characters", field=key)
            out[key] = str(value)
    return out


def _page(session: Session, stmt, id_column, kind: str, limit: Any, cursor: str | None) -> tuple[list, str | None]:
    """Return one page of stmt's rows, newest first (keyset on id_column), and the next page's cursor.

    Rows are entities for a one-entity SELECT and tuples otherwise; the cursor comes from the first one's id.
    """
    size = parse_limit(limit)
    after = decode_cursor(kind, cursor)
    stmt = stmt.order_by(id_column.desc()).limit(size + 1)
    if after is not None:
        stmt = stmt.where(id_column < after)
    result = session.execute(stmt)
    rows = list(result.scalars()) if len(stmt.column_descriptions) == 1 else [tuple(r) for r in result]
    if len(rows) <= size:
        return rows, None
    last = rows[size - 1]
    return rows[:size], encode_cursor(kind, (last[0] if isinstance(last, tuple) else last).id)


def jobs_query(f: Mapping[str, Any]):
    """Return the SELECT of jobs matching clean filters."""
    stmt = select(Job)
    if "status" in f:
        stmt = stmt.where(Job.status == f["status"])
    if "model" in f:
        stmt = stmt.where(Job.model == f["model"])
    return stmt


def runs_query(f: Mapping[str, Any]):
    """Return the SELECT of (run, job) pairs matching clean filters."""
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


def list_jobs(session: Session, filters: Mapping[str, Any] | None = None, limit: Any = None,
              cursor: str | None = None) -> tuple[list[Job], str | None]:
    """Return one page of jobs, newest first, and the cursor of the next page (None at the end)."""
    return _page(session, jobs_query(clean_filters("jobs", filters)), Job.id, "j", limit, cursor)


def list_runs(session: Session, filters: Mapping[str, Any] | None = None, limit: Any = None,
              cursor: str | None = None) -> tuple[list[tuple[Run, Job]], str | None]:
    """Return one page of (run, job) pairs, newest first, and the next cursor."""
    return _page(session, runs_query(clean_filters("runs", filters)), Run.id, "r", limit, cursor)
