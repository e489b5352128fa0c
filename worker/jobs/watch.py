"""Whether a batch's jobs are still this worker's to run: read before each step, and polled during one."""

from __future__ import annotations

import contextlib
import logging
import threading

from sqlalchemy import select

from shared.db import get_sessionmaker
from shared.store import lifecycle
from shared.store.tables import Job, JobStatus

log = logging.getLogger("instaboost.worker")


def job_states(session, job_ids: list[int]) -> dict[int, tuple[JobStatus, str | None]]:
    """Return {job id: (status, worker)} for the jobs that exist, and end the read."""
    rows = session.execute(select(Job.id, Job.status, Job.worker).where(Job.id.in_(job_ids))).all()
    session.commit()  # no transaction (and pooled connection) held open during the next step
    return {r.id: (r.status, r.worker) for r in rows}


class Watch:
    """While a step decodes, poll whether its jobs are still this worker's to run (cancel, take-over).

    The jobs it finds cancelled or taken over stop decoding at the next token (Engine.generate's halt),
    so one job's cancel costs the batch nothing more and stops only that job.
    """

    INTERVAL = 0.5  # seconds between two polls

    def __init__(self, db_url: str | None, worker: str, job_ids: list[int]):
        self.db_url, self.worker, self.job_ids = db_url, worker, list(job_ids)
        self.stopped: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="instaboost-batch-watch", daemon=True)

    def _run(self) -> None:
        session = get_sessionmaker(self.db_url)()
        try:
            while not self._done.wait(self.INTERVAL):
                try:
                    states = job_states(session, self.job_ids)
                except Exception:  # noqa: BLE001 - the database away for a moment: the step goes on
                    with contextlib.suppress(Exception):
                        session.rollback()
                    continue
                for job_id in self.job_ids:
                    status, worker = states.get(job_id, (None, None))
                    if job_id in self.stopped or status is JobStatus.running and worker == self.worker:
                        continue
                    if status is JobStatus.cancelling and worker == self.worker:
                        # Cancelled now, not when the step ends: the user sees it at once.
                        with contextlib.suppress(Exception):
                            lifecycle.finish_cancel(session, job_id, worker=self.worker)
                            log.info("job %s: cancelled during a step; its rows stop here", job_id)
                        with contextlib.suppress(Exception):
                            session.rollback()
                    self.stopped.add(job_id)
        finally:
            with contextlib.suppress(Exception):
                session.close()

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=5)
