"""Idempotent chat completions: a client's retry answers from the job its first try created.

Two ways to say "this is a retry", both on POST /v1/chat/completions:

- an ``Idempotency-Key`` header (any client): the key is stored with the job (unique) for
  v1.idempotency_hours; a request with the same key gets that job, or 409 when its body differs;
- the openai SDK's own retries (``x-stainless-retry-count`` >= 1; the SDK sends no idempotency key by
  default): the retry gets the newest job with the same request digest that is still queued or running,
  or that finished within v1.wait_seconds + RETRY_GRACE seconds.

A job that failed or was cancelled is never reused: its key is released and the retry submits anew.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any, Mapping

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.errors import BadRequest, Conflict
from shared.settings import Settings
from shared.store.tables import Job, JobStatus, utcnow

MAX_KEY_CHARS = 255
RETRY_GRACE = 60.0  # seconds past v1.wait_seconds an SDK retry may still arrive (its backoff, a proxy's timeout)
REUSABLE = (JobStatus.queued, JobStatus.running, JobStatus.succeeded)


class KeyReused(Conflict):
    """An Idempotency-Key sent again with another request body (409: retrying it cannot help)."""


def request_hash(params: Mapping[str, Any]) -> str:
    """Return the digest of a validated chat request (shared.chat.chat_params): equal requests, equal digests."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def check_key(key: str | None) -> str | None:
    """Return the Idempotency-Key header's value, or raise BadRequest when it cannot be stored."""
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_CHARS:
        raise BadRequest(f"the Idempotency-Key header must be 1 to {MAX_KEY_CHARS} characters (got {len(key)})",
                         field="Idempotency-Key")
    return key


def by_key(session: Session, key: str, digest: str, settings: Settings) -> Job | None:
    """Return the reusable job holding key, releasing the key of one that expired or failed; KeyReused (409) when
    it was sent with another body."""
    job = session.execute(select(Job).where(Job.idempotency_key == key)).scalar_one_or_none()
    if job is None:
        return None
    expired = job.created_at < utcnow() - timedelta(hours=settings.v1.idempotency_hours)
    if expired or job.status not in REUSABLE:
        session.execute(update(Job).where(Job.id == job.id, Job.idempotency_key == key)
                        .values(idempotency_key=None).execution_options(synchronize_session=False))
        session.commit()
        return None
    if job.request_hash != digest:
        session.rollback()
        raise KeyReused(f"the Idempotency-Key {key!r} was already used for a different request (job {job.id}); "
                        "send a new key for a new request", field="Idempotency-Key")
    return job


def by_retry(session: Session, digest: str, settings: Settings) -> Job | None:
    """Return the newest job an SDK retry of this request belongs to (unfinished, or finished just now)."""
    now = utcnow()
    since = now - timedelta(seconds=settings.v1.wait_seconds + RETRY_GRACE)
    oldest = now - timedelta(hours=settings.v1.idempotency_hours)
    job = session.execute(
        select(Job).where(Job.request_hash == digest, Job.status.in_(REUSABLE), Job.created_at >= oldest,
                          or_(Job.finished_at.is_(None), Job.finished_at >= since))
        .order_by(Job.id.desc()).limit(1)).scalar_one_or_none()
    session.commit()
    return job
