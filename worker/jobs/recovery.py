"""The recovery: no job waits forever because its message or its worker was lost.

Each worker runs one in a background thread (``sweeper.enabled``); ``python -m worker.jobs.recovery`` runs
one on its own. Every ``sweeper.interval`` seconds it

1. **outbox**: sends again the jobs left ``queued`` with ``enqueued_at`` NULL for ``sweeper.outbox_grace``
   seconds (the web process died between storing the row and the broker accepting the message);
2. **orphans**: puts back to ``queued`` the jobs ``running`` under a worker id with no live heartbeat (killed,
   out of memory, machine lost), or under a live worker whose heartbeat no longer lists them (it lost track
   of a job of its cohort: a claim whose answer was lost, a database outage that ended the cohort), and sends
   them again; the delivery that died already counted as an attempt,
   so a job whose worker died ``worker.max_attempts`` times is failed as poison instead. A ``cancelling``
   job whose worker died is finished as cancelled;
3. **lost messages**: sends again the ``queued`` jobs whose message has been missing from their model's
   Redis queue for ``sweeper.lost_after`` seconds (a Redis restart without persistence empties the queues),
   or at once when Redis lost its data since the last pass (the recovery loops' marker key is gone);
4. **no worker**: fails the ``queued`` jobs of a model that no live worker has served or loaded for
   ``limits.queued_without_worker_seconds`` (they would wait forever and count against the queue's cap);
5. **sweeps**: advances the running calibration sweeps whose current stage is done
   (``shared.store.sweeps.advance``; the worker that finished the stage's last job may have died first);
6. **OpenAI files and batches**: moves on the batches whose jobs ended, the batches an interrupted create of an
   earlier version left ``validating`` (``shared.store.batches.recover_validating``), and deletes the files past
   their expiry (``shared.store.files.delete_expired``).

Several recovery loops (one per worker) may run at once: every change is a conditional UPDATE, so exactly one
of them acts on a job. A duplicate message is harmless: a worker skips jobs that are finished or that a
live worker runs, and runs are unique per (job, variant). A missing heartbeat must stay missing for two
heartbeat intervals before it counts, so a Redis restart (which drops every heartbeat until the next beat)
does not make live workers look dead; nothing is decided while Redis is unreachable, and passes then come
every ``redis.reconnect_max_seconds`` (not ``sweeper.interval``) so the first one after Redis returns is soon.

The recovery loop assumes one database belongs to one deployment (one ``redis.namespace``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import select, update

from shared import celery_config, worker_registry
from shared.db import session_scope
from shared.errors import Conflict, JobErrorCode
from shared.settings import Settings
from shared.store import lifecycle
from shared.store.tables import Job, JobStatus, utcnow

log = logging.getLogger("instaboost.recovery")


class JobRecovery:
    """Find jobs whose message or worker was lost and send them again (see the module docstring)."""

    def __init__(self, settings: Settings, *, db_url: str | None = None, own_worker: str | None = None,
                 celery_app=None, redis=None):
        self.settings = settings
        self.db_url = db_url or settings.database.url
        self.namespace = settings.redis.namespace
        self.own_worker = own_worker  # a recovery loop never declares its own process dead
        self.redis = redis if redis is not None else worker_registry.redis_client(settings.redis.url)
        # Its own app (and connection pool): the worker's main thread may be publishing at the same time.
        self.celery = celery_app if celery_app is not None else celery_config.make_celery(settings, main="instaboost-recovery")
        self.interval = settings.sweeper.interval
        self.outbox_grace = settings.sweeper.outbox_grace
        self.lost_after = settings.sweeper.lost_after
        self.confirm = 2 * settings.worker.heartbeat_interval
        self.max_attempts = settings.worker.max_attempts
        self.unserved_after = settings.limits.queued_without_worker_seconds
        self.reconnect_max = settings.redis.reconnect_max_seconds
        self.redis_down = False  # the last pass found Redis unreachable
        self._marked = False  # this recovery loop has seen (or set) the marker key that a Redis restart without data drops
        self._silent_since: dict[str, float] = {}  # worker id -> when its heartbeat was first seen missing
        self._missing_since: dict[int, float] = {}  # job id -> when its message was first seen missing
        self._unlisted_since: dict[int, float] = {}  # job id -> when its live worker first did not list it
        self._unserved_since: dict[str, float] = {}  # model -> when no live worker was first seen serving it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass --------------------------------------------------------------------------------------

    def run_pass(self) -> dict[str, list[int]]:
        """Run one pass; return the ids acted on: jobs {"orphaned", "poisoned", "cancelled", "outbox", "lost",
        "expired"}, OpenAI batches moved on ("batches") and calibration sweeps moved on ("sweeps")."""
        done: dict[str, list] = {"orphaned": [], "poisoned": [], "cancelled": [], "outbox": [], "lost": [],
                                 "expired": [], "batches": [], "sweeps": [], "validating": [], "files": []}
        try:
            self.redis.ping()
        except Exception as exc:
            # Without Redis nothing can be judged (heartbeats, queues) nor sent: start over once it is back.
            log.warning("recovery: Redis unreachable (%s); skipping this pass", type(exc).__name__)
            self.redis_down = True
            self._silent_since.clear()
            self._missing_since.clear()
            self._unserved_since.clear()
            return done
        self.redis_down = False
        self._orphans(done)
        self._outbox(done)
        self._lost(done, wiped=self._redis_wiped())
        self._unserved(done)
        self._batches(done)
        self._sweeps(done)
        self._files(done)
        for kind, ids in done.items():
            if ids:
                log.warning("recovery: %s jobs %s", kind, ids)
        return done

    def _orphans(self, done: dict[str, list[int]]) -> None:
        with session_scope(self.db_url) as s:
            rows = s.execute(select(Job.id, Job.status, Job.worker, Job.attempts, Job.model, Job.kind, Job.batch_id)
                             .where(Job.status.in_([JobStatus.running, JobStatus.cancelling]))).all()
        now = time.monotonic()
        dead: set[str] = set()
        for worker in {r.worker for r in rows if r.worker and r.worker != self.own_worker}:
            if worker_registry.worker_alive(self.redis, worker, self.namespace):
                self._silent_since.pop(worker, None)
            elif now - self._silent_since.setdefault(worker, now) >= self.confirm:
                dead.add(worker)
        for worker in list(self._silent_since):
            if worker not in {r.worker for r in rows}:
                del self._silent_since[worker]
        unlisted = self._unlisted(rows, dead, now)
        for r in rows:
            if r.worker not in dead and r.id not in unlisted:
                continue
            kind = self.recover_orphan(r, "died" if r.worker in dead else "lost track of the job")
            if kind:
                done[kind].append(r.id)

    def recover_orphan(self, r, what: str) -> str | None:
        """Put back a job whose worker r.worker died (or lost it): queued and sent again, poisoned after
        worker.max_attempts deliveries, or cancelled if cancelling; return which, or None if another got there first.

        r carries the job's id, status, worker, attempts, model, kind and batch_id (as _orphans selects them).
        """
        with session_scope(self.db_url) as s:
            try:
                if r.status is JobStatus.cancelling:
                    lifecycle.transition(s, r.id, JobStatus.cancelled, expect={"worker": r.worker})
                    kind = "cancelled"
                elif r.attempts >= self.max_attempts:
                    lifecycle.transition(
                        s, r.id, JobStatus.failed, expect={"worker": r.worker},
                        error=(f"poison job: its worker died in each of {r.attempts} deliveries (last "
                               f"{r.worker}; worker.max_attempts={self.max_attempts}). Check the worker logs, "
                               "e.g. for running out of memory, then resubmit with fewer variants or tokens."),
                        error_code=JobErrorCode.poison.value)
                    kind = "poisoned"
                else:
                    # enqueued_at NULL puts it in the outbox: if sending fails now, the next pass retries.
                    lifecycle.transition(s, r.id, JobStatus.queued, expect={"worker": r.worker}, enqueued_at=None,
                                         error=f"worker {r.worker} {what} during attempt {r.attempts}; requeued")
                    kind = "orphaned"
                s.commit()
            except Conflict:
                s.rollback()  # another recovery loop or a redelivery got there first
                return None
        if kind == "orphaned":
            self._send(r.id, r.model, expected_enqueued_at=None,
                       priority=celery_config.job_priority(r.kind, r.batch_id))
        return kind

    def _unlisted(self, rows, dead: set[str], now: float) -> set[int]:
        """Return the jobs running under a live worker whose heartbeat has not listed them for a while."""
        beats: dict[str, set[int] | None | bool] = {}
        out: set[int] = set()
        for r in rows:
            if not r.worker or r.worker in dead:
                continue
            if r.worker not in beats:
                beats[r.worker] = worker_registry.worker_jobs(self.redis, r.worker, self.namespace)
            jobs = beats[r.worker]
            if not isinstance(jobs, set) or r.id in jobs:  # dead (judged above), or listed, or says nothing
                self._unlisted_since.pop(r.id, None)
            elif now - self._unlisted_since.setdefault(r.id, now) >= self.confirm:
                out.add(r.id)
        for job_id in [j for j in self._unlisted_since if j not in {r.id for r in rows}]:
            del self._unlisted_since[job_id]
        return out

    def _outbox(self, done: dict[str, list[int]]) -> None:
        cutoff = utcnow() - timedelta(seconds=self.outbox_grace)
        with session_scope(self.db_url) as s:
            rows = s.execute(select(Job.id, Job.model, Job.kind, Job.batch_id)
                             .where(Job.status == JobStatus.queued, Job.enqueued_at.is_(None), Job.created_at <= cutoff)
                             ).all()
        for r in rows:
            if self._send(r.id, r.model, expected_enqueued_at=None,
                          priority=celery_config.job_priority(r.kind, r.batch_id)):
                done["outbox"].append(r.id)

    def _redis_wiped(self) -> bool:
        """Return True when Redis lost its data since this recovery loop's last pass (its queued messages are gone)."""
        fresh = bool(self.redis.set(f"{self.namespace}:recovery:marker", "1", nx=True))
        wiped, self._marked = fresh and self._marked, True
        if wiped:
            log.warning("recovery: Redis came back without its data; re-sending the queued jobs' messages now")
        return wiped

    def _lost(self, done: dict[str, list[int]], wiped: bool = False) -> None:
        with session_scope(self.db_url) as s:
            rows = s.execute(select(Job.id, Job.model, Job.enqueued_at, Job.kind, Job.batch_id)
                             .where(Job.status == JobStatus.queued, Job.enqueued_at.is_not(None))).all()
        now = time.monotonic()
        waiting: dict[str, set[int]] = {}
        for r in rows:
            queue = celery_config.model_queue(r.model)
            if queue not in waiting:
                waiting[queue] = worker_registry.waiting_job_ids(self.redis, queue, self.namespace)
            if r.id in waiting[queue]:
                self._missing_since.pop(r.id, None)
            elif wiped or now - self._missing_since.setdefault(r.id, now) >= self.lost_after:
                if self._send(r.id, r.model, expected_enqueued_at=r.enqueued_at,
                              priority=celery_config.job_priority(r.kind, r.batch_id)):
                    done["lost"].append(r.id)
                self._missing_since.pop(r.id, None)
        known = {r.id for r in rows}
        for job_id in [j for j in self._missing_since if j not in known]:
            del self._missing_since[job_id]

    def _unserved(self, done: dict[str, list[int]]) -> None:
        """Fail the queued jobs of a model no live worker served or loaded for limits.queued_without_worker_seconds."""
        if self.unserved_after <= 0:
            return
        with session_scope(self.db_url) as s:
            rows = s.execute(select(Job.id, Job.model, Job.created_at).where(Job.status == JobStatus.queued)).all()
        if not rows:
            self._unserved_since.clear()
            return
        beats = worker_registry.live_workers(self.redis, self.namespace)
        present = {m for b in beats for m in b["models"]} | {m for b in beats for m in worker_registry.starting_in(b)}
        now = time.monotonic()
        models = {r.model for r in rows}
        for model in list(self._unserved_since):
            if model in present or model not in models:
                del self._unserved_since[model]
        # Both this recovery loop's own observation (it may have just started) and the job's age must pass the limit.
        cutoff = utcnow() - timedelta(seconds=self.unserved_after)
        for r in rows:
            if r.model in present or now - self._unserved_since.setdefault(r.model, now) < self.unserved_after \
                    or r.created_at > cutoff:
                continue
            limit = f"{self.unserved_after:g}"
            with session_scope(self.db_url) as s:
                try:
                    lifecycle.transition(
                        s, r.id, JobStatus.failed, expect={"status": JobStatus.queued},
                        error=(f"no live worker served model {r.model!r} for {limit} s, so the job was never run "
                               f"(limits.queued_without_worker_seconds={limit}). Start a worker with "
                               f"INSTABOOST_WORKER_MODELS={r.model}, then resubmit."))
                    s.commit()
                except Conflict:
                    s.rollback()  # a worker took it, it was cancelled, or another recovery loop failed it first
                    continue
            done["expired"].append(r.id)

    def _sweeps(self, done: dict[str, list[int]]) -> None:
        """Advance running calibration sweeps whose stage is done (the worker that ended it may have died first)."""
        from shared.store import sweeps
        from shared.store.tables import Sweep

        with session_scope(self.db_url) as s:
            rows = s.execute(select(Sweep.id, Sweep.stage_index).where(Sweep.status == sweeps.RUNNING)).all()
        for r in rows:
            if self._advance_sweep(r.id, r.stage_index):
                done["sweeps"].append(r.id)

    def _advance_sweep(self, sweep_id: int, stage_index: int) -> bool:
        """Advance one sweep in its own session; tell whether it moved (a new stage, or it ended). A failure is
        logged and skipped: the other sweeps still advance, and the next pass tries this one again."""
        from shared.store import sweeps
        from shared.store.tables import Sweep

        with session_scope(self.db_url) as s:
            try:
                status = sweeps.advance(s, sweep_id, self.settings, sweeps.celery_sender(self.celery))
                moved = s.execute(select(Sweep.stage_index).where(Sweep.id == sweep_id)).scalar_one()
            except Exception as exc:
                s.rollback()
                log.warning("recovery: sweep %s not advanced (%s: %s)", sweep_id, type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "")
                return False
        return status != sweeps.RUNNING or moved != stage_index

    def _batches(self, done: dict[str, list]) -> None:
        """Move OpenAI batches on whose last job ended without its worker doing it (e.g. failed by this recovery loop)."""
        from shared.store import batches

        with session_scope(self.db_url) as s:
            ids = batches.open_batch_ids(s)
        for batch_id in ids:
            if self._refresh_batch(batch_id):
                done["batches"].append(batch_id)

    def _refresh_batch(self, batch_id: str) -> bool:
        """Refresh one batch in its own session; tell whether its status moved. A failure is logged and skipped,
        so one broken batch holds up neither the other batches nor the sweeps."""
        from shared.store import batches

        with session_scope(self.db_url) as s:
            try:
                before = s.get(batches.Batch, batch_id).status
                return batches.refresh_batch(s, batch_id).status != before
            except Exception as exc:
                s.rollback()
                log.warning("recovery: batch %s not refreshed (%s: %s)", batch_id, type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "")
                return False

    def _files(self, done: dict[str, list]) -> None:
        """Recover batches a dead create left validating; delete expired files."""
        from shared.store import batches, files

        with session_scope(self.db_url) as s:
            done["validating"] += batches.recover_validating(s)
            done["files"] += files.delete_expired(s)

    def _send(self, job_id: int, model: str, expected_enqueued_at, priority: int | None = None) -> bool:
        """Claim the job's (re)send with a conditional UPDATE, then publish; undo the claim if that fails."""
        stamp = utcnow()
        with session_scope(self.db_url) as s:
            cond = Job.enqueued_at.is_(None) if expected_enqueued_at is None else Job.enqueued_at == expected_enqueued_at
            claimed = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued, cond)
                                .values(enqueued_at=stamp).execution_options(synchronize_session=False)).rowcount
            s.commit()
        if claimed != 1:
            return False
        try:
            self.celery.send_task(celery_config.TASK_NAME, args=[job_id], queue=celery_config.model_queue(model),
                                  priority=celery_config.PRIORITY["default"] if priority is None else priority)
        except Exception as exc:
            log.warning("recovery: could not send job %s (%s); retrying next pass", job_id, type(exc).__name__)
            with session_scope(self.db_url) as s:
                s.execute(update(Job).where(Job.id == job_id, Job.enqueued_at == stamp).values(enqueued_at=None)
                          .execution_options(synchronize_session=False))
            return False
        return True

    # -- loop --------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Sweep every interval until stop() (errors are logged; the next pass tries again)."""
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception as exc:  # the database may be down for a while; keep the thread alive
                log.warning("recovery: pass failed (%s: %s)", type(exc).__name__, str(exc).splitlines()[0][:200]
                            if str(exc) else "")
            # While Redis is away, look again soon: the first pass after it returns re-sends what it lost.
            self._stop.wait(min(self.interval, self.reconnect_max) if self.redis_down else self.interval)

    def start(self) -> "JobRecovery":
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="instaboost-recovery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop (after the pass in progress)."""
        self._stop.set()


def main(argv: list[str] | None = None) -> int:
    """Run a recovery loop on its own (deployments whose workers run with sweeper.enabled off)."""
    from shared.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recovery = JobRecovery(get_settings())
    try:
        recovery.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
