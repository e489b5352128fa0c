"""What moves on when a job ends: the OpenAI batch it is a line of, the calibration sweep it is a job of.

Both are best effort: a failure here is logged, never changes how the job ended, and the recovery loop (and, for a
batch, the web's reads) move the batch or sweep on later.
"""

from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import select

from shared.db import session_scope
from shared.settings import Settings
from shared.store import batches, sweeps
from shared.store.tables import Job, JobStatus

log = logging.getLogger("instaboost.worker")

ENDED = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value)


def job_ended(db_url: str | None, job_id: int, status: str, settings: Settings,
              sender: Callable[[int, str], None] | None) -> None:
    """Move on what waits for the job, given how its delivery left it (a status, "skipped", "taken over")."""
    if status in ENDED:
        _move_batch(db_url, job_id)
    if status in ENDED or status == "skipped":
        _advance_sweep(db_url, job_id, settings, sender)


def _move_batch(db_url: str | None, job_id: int) -> None:
    """Move the job's OpenAI batch on (finalized once its last job ends), if it is a line of one."""
    try:
        with session_scope(db_url) as session:
            batch_id = session.scalar(select(Job.batch_id).where(Job.id == job_id))
            session.commit()
            if batch_id:
                batches.refresh_batch(session, batch_id)
    except Exception as exc:  # the recovery loop and the web's reads finalize it later
        log.warning("job %s: could not move its batch on (%s: %s)", job_id, type(exc).__name__, exc)


def _advance_sweep(db_url: str | None, job_id: int, settings: Settings, sender) -> None:
    """Advance the job's sweep (sending its next jobs through sender), if it has one."""
    try:
        with session_scope(db_url) as session:
            sweep_id = session.execute(select(Job.sweep_id).where(Job.id == job_id)).scalar_one_or_none()
            session.commit()
            if sweep_id is not None:
                sweeps.advance(session, sweep_id, settings, sender)
    except Exception as exc:  # the recovery loop advances it on its next pass
        log.warning("job %s: could not advance its sweep (%s: %s); the recovery loop will", job_id, type(exc).__name__, exc)
