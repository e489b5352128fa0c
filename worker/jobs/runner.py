"""A worker's batch: rows (job variants) from one or several claimed jobs of a model, decoded together.

A delivery claims its job (``worker.jobs.delivery``) and runs it here. With ``worker.batch_jobs`` on, each
step first fills the batch up to ``worker.max_batch_rows`` rows with other queued jobs of the same model
(``worker.jobs.intake``). Each job's kind (``worker.jobs.kinds``) gives its rows, requests, runs and scores;
every way a job ends goes through ``worker.jobs.endings``.

Here (``worker.continuous: false``) a step decodes its rows to the end, stores every run, then refills (the
default subclass, ``worker.jobs.scheduler``, at every token). Every job keeps its guarantees:

- cancel and take-over are checked before every step; a cancelled job's rows leave the batch;
- progress counts the job's stored variants;
- the time limit runs from the job's own claim: a step's alarm is its earliest deadline and only the jobs
  past theirs fail (the others' rows run again in the next step); the watchdog fails the jobs past their
  hard limit and ends the process, and the recovery loop sends the rest again, as after ``kill -9``;
- a step that raises is run again one job at a time, so the job that causes the error fails alone;
- a warm shutdown hands held jobs back, after ``kill -9`` the recovery loop resends them; stored runs are kept;
- a stream's end events are published after the runs (and the job's success) are stored.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from celery.exceptions import SoftTimeLimitExceeded

from shared.celery_config import soft_time_limit
from shared.db import get_sessionmaker
from shared.errors import InstaBoostError, JobErrorCode
from shared.metrics import METRICS
from shared.store import lifecycle
from shared.chat import choice_index
from shared.settings import Settings
from shared.store.tables import Job, JobStatus
from worker.jobs import faults
from worker.jobs.decode import decode_rows
from worker.jobs.endings import (TAKEN_OVER, DatabaseUnavailable, JobTimeLimit, ShutdownRequested, fail,
                                 finish_cancel, give_back, hand_back, internal_error, poison_message, settle,
                                 store_runs, stored_variants, stuck_message, succeed, timeout_message,
                                 with_db_retry)
from worker.jobs.intake import claim_waiting
from worker.jobs.kinds import JobKind, job_kind, score_rows
from worker.jobs.watch import Watch, job_states
from worker.jobs.watchdog import Watchdog, grace_seconds, time_limit

log = logging.getLogger("instaboost.worker")

GATHER_POLL = 0.1  # seconds between two looks at the queue while a first step gathers its jobs


@dataclass(eq=False)
class Member:
    """A job this worker claimed: its kind, its rows still to generate, and its own deadlines."""

    job_id: int
    soft_deadline: float  # time.monotonic() values
    hard_deadline: float
    kind: JobKind | None = None  # None until its params were read (a job that cannot be read ends at once)
    rows: list = field(default_factory=list)  # its kind's rows not stored yet
    publish: Callable[[dict], None] | None = None  # a streaming job's event sink
    status: str | None = None  # how it ended, once it did

    @property
    def key(self) -> tuple[str, bool]:
        """Rows share a step only with rows of the same engine and attention analysis."""
        return self.kind.engine, self.kind.attention


@dataclass
class Options:
    """What a batch runner needs from the worker around it."""

    worker: str
    settings: Settings
    db_url: str | None = None
    should_stop: Callable[[], bool] = lambda: False
    hard_exit: Callable[[str], None] | None = None
    # model -> ids of jobs whose messages wait in this worker's queue (None: never claim other jobs)
    candidates: Callable[[str], set[int]] | None = None
    interactive: Callable[[str], set[int]] | None = None  # the same, only messages of interactive priority (cheaper)
    advertise: Callable[[list[int]], None] | None = None  # the heartbeat's list of jobs this process runs
    on_end: Callable[[int, str], None] | None = None  # a job ended (succeeded, failed, cancelled)


class CohortRunner:
    """Run a delivered job, and the jobs it takes into its batch, until none has rows left."""

    OWNED = (JobStatus.running, JobStatus.cancelling, JobStatus.cancelled)  # held job's states _check leaves alone

    def __init__(self, first: Job, opts: Options):
        s = opts.settings
        self.opts, self.worker = opts, opts.worker
        self.max_rows = max(1, s.worker.max_batch_rows)
        self.batch_jobs = s.worker.batch_jobs and opts.candidates is not None
        self.wait = s.worker.batch_wait
        self.limit, self.soft = s.worker.job_time_limit, soft_time_limit(s.worker.job_time_limit)
        self.budget = s.worker.db_retry_seconds
        self.max_attempts = s.worker.max_attempts
        self.first, self.model = first, first.model
        self.members: list[Member] = []
        self.isolate: set[int] = set()  # jobs that run one per step (a shared step raised)
        self.session = get_sessionmaker(opts.db_url)()

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> str:
        """Run until no claimed job has rows left; return the delivered job's status."""
        try:
            self._admit(self.first)
            self._gather()
            self._loop()
        except ShutdownRequested:
            self._requeue_all(redelivery_first=True)
            raise
        except BaseException:
            # DatabaseUnavailable, a cold shutdown: the delivered job is the caller's (run_delivery); the
            # others go back to the queue if the database lets us, else the recovery loop finds them unlisted.
            self._requeue_all(redelivery_first=False)
            raise
        finally:
            with contextlib.suppress(Exception):
                self.session.close()
        return next((m.status for m in self.members if m.job_id == self.first.id), None) or TAKEN_OVER

    def _loop(self) -> None:
        """Run rounds until no held job has rows left."""
        while True:
            self._check()
            self._fill()
            if not (rows := self._next_rows()):
                break
            self._step(rows)

    def _active(self) -> list[Member]:
        return [m for m in self.members if m.status is None]

    def _advertise(self, extra: list[int] = ()) -> None:
        """List in this process's heartbeat the jobs it holds (and extra ones it is claiming)."""
        if self.opts.advertise is not None:
            self.opts.advertise([m.job_id for m in self._active()] + list(extra))

    # -- members -----------------------------------------------------------------------------------------

    def _admit(self, job: Job) -> Member:
        """Make a claimed job a member: its pending rows, progress and deadlines (or end it at once)."""
        now = time.monotonic()
        m = Member(job.id, now + self.soft, now + self.limit)
        self.members.append(m)
        METRICS.job_started(job.id, job.created_at, job.started_at, completion=bool(job.params.get("stream")))
        if job.attempts > self.max_attempts:
            self._fail(m, poison_message(job.attempts, self.max_attempts), JobErrorCode.poison)
            return m
        try:
            m.kind = job_kind(dict(job.params))
            rows = m.kind.rows()
            engine = _engine(job.model, m.kind.engine)
            for row in rows:  # a prompt that cannot run fails its own job, before it joins a step
                engine.prompt(m.kind.generation_request(row))
        except InstaBoostError as exc:
            self._fail(m, exc.message, exc.code)
            return m
        except Exception as exc:
            log.exception("job %s: could not be prepared", job.id)
            self._fail(m, internal_error(exc), JobErrorCode.worker_error)
            return m
        done = with_db_retry(self.session, stored_variants, job.id, budget=self.budget)
        m.rows = [r for r in rows if m.kind.name(r) not in done]  # the rest were stored by an earlier delivery
        if m.kind.counts_progress:
            with_db_retry(self.session, lifecycle.mark_progress, job.id, len(rows) - len(m.rows),
                          len(rows), worker=self.worker, budget=self.budget)
        m.publish = m.kind.publisher(job.id, job.attempts)
        if not m.rows:
            self._end(m, with_db_retry(self.session, succeed, job.id, self.worker, budget=self.budget))
        return m

    def _fail(self, m: Member, message: str, code: str | None) -> None:
        """Fail a member with message and code (only while it is still this worker's), and end it."""
        self._end(m, fail(self.opts.db_url, m.job_id, message, self.budget, worker=self.worker, code=code))

    def _end(self, m: Member, status: str) -> None:
        m.status, m.rows = status, []
        self.isolate.discard(m.job_id)
        METRICS.job_ended(m.job_id, status)  # before _advertise: its beat carries the count
        self._advertise()
        if status != TAKEN_OVER and self.opts.on_end is not None:
            self.opts.on_end(m.job_id, status)

    def _check(self) -> None:
        """Before a step: end the members cancelled, taken over or past their time limit; stop if asked."""
        active = self._active()
        if active:
            states = with_db_retry(self.session, job_states, [m.job_id for m in active], budget=self.budget)
            for m in active:
                status, worker = states.get(m.job_id, (None, None))
                if worker != self.worker or status not in self.OWNED:
                    log.warning("job %s: stopping, it is now %s under %s", m.job_id,
                                status.value if status else "gone", worker or "-")
                    self._end(m, TAKEN_OVER)
                elif status is JobStatus.cancelling:
                    self._end(m, finish_cancel(self.session, m.job_id, self.worker, self.budget))
                elif status is JobStatus.cancelled and worker == self.worker:  # by the step's Watch
                    self._end(m, JobStatus.cancelled.value)
                elif time.monotonic() >= m.soft_deadline:
                    self._fail(m, timeout_message(self.soft, self.limit), JobErrorCode.time_limit)
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        """Hand back the held jobs if asked to stop; with none held (the last row stored) the delivery just ends."""
        if self.opts.should_stop() and self._active():
            raise ShutdownRequested()

    def _fill(self) -> None:
        """Claim queued jobs of this model into the batch while their rows fit (worker.batch_jobs)."""
        if not self.batch_jobs or self.opts.should_stop():
            return
        room = self._room()
        if room <= 0:
            return
        won = claim_waiting(self.session, self.opts.candidates, self.model, self.worker, room=room,
                            held={m.job_id for m in self.members}, max_rows=self.max_rows,
                            advertise=self._advertise, budget=self.budget)
        if won is None:
            return
        for job in won:
            log.info("job %s: joins the batch of job %s's delivery", job.id, self.first.id)
            try:
                self._admit(job)
            except (DatabaseUnavailable, ShutdownRequested):
                raise
            except Exception as exc:  # its own error: it ends (or goes back) alone, the batch goes on
                self.session.rollback()
                m = next(m for m in self.members if m.job_id == job.id)
                if m.status is None:
                    self._end(m, settle(self.opts.db_url, job.id, self.worker, exc, self.budget,
                                        self.opts.hard_exit))
        self._advertise()

    def _gather(self) -> None:
        """Before the first step, take in jobs while they keep arriving (a burst of submissions), briefly."""
        if not self.batch_jobs or self.wait <= 0 or not self._active():
            return
        deadline = time.monotonic() + self.wait
        self._fill()
        while time.monotonic() + GATHER_POLL <= deadline and self._room() > 0:
            time.sleep(GATHER_POLL)
            before = len(self.members)
            self._fill()
            if len(self.members) == before:
                return  # a look found nothing new: the burst is over (a lone job waits one look)

    def _room(self) -> int:
        return self.max_rows - sum(len(m.rows) for m in self._active())

    def _next_rows(self) -> list[tuple[Member, Any]]:
        """Pick the next step's rows: the oldest member's kind of rows, up to worker.max_batch_rows."""
        active = [m for m in self._active() if m.rows]
        if not active:
            return []
        head = active[0]
        cap = self.max_rows if head.kind.engine == "fast" else 1  # the reference engine runs requests one by one
        pool = [head] if head.job_id in self.isolate else [
            m for m in active if m.key == head.key and m.job_id not in self.isolate]
        return [(m, r) for m in pool for r in m.rows][:cap]

    # -- one step ----------------------------------------------------------------------------------------

    def _step(self, rows: list[tuple[Member, Any]]) -> None:
        members = list(dict.fromkeys(m for m, _ in rows))
        head = members[0]
        log.info("batch: a step of %d rows from jobs %s", len(rows), [m.job_id for m in members])
        engine = _engine(self.model, head.kind.engine)
        requests = [m.kind.generation_request(r) for m, r in rows]
        streams = {i: m.publish for i, (m, _) in enumerate(rows) if m.publish is not None}
        index = {i: choice_index(r) or 0 for i, (m, r) in enumerate(rows) if m.publish is not None}  # its choice
        now = time.monotonic()
        alarm = max(0.05, min(m.soft_deadline for m in members) - now)
        hard = max(0.05, min(m.hard_deadline for m in members) + grace_seconds(self.limit) - now)
        watch = Watch(self.opts.db_url, self.worker, [m.job_id for m in members])
        try:
            with contextlib.ExitStack() as stack:
                if self.opts.hard_exit is not None:
                    stack.enter_context(Watchdog(hard, lambda: self._stuck(members)))
                stack.enter_context(watch)
                with time_limit(alarm):
                    faults.inject(faults.STEP, self.session)
                    for publish in streams.values():
                        publish({"type": "start"})

                    def on_text(i, delta):
                        if i in streams:
                            METRICS.first_token(rows[i][0].job_id)
                            streams[i]({"type": "delta", "text": delta, "index": index[i]})

                    results = decode_rows(engine, requests, [m.job_id for m, _ in rows], attention=head.kind.attention,
                                          on_text=on_text if streams else None,
                                          halt=lambda i: rows[i][0].job_id in watch.stopped)
                    METRICS.step(len(rows), sum(r.output_tokens for r in results), time.monotonic() - now)
                    scores = score_rows(engine, [m.kind for m, _ in rows], requests, results, self.opts.settings)
        except (JobTimeLimit, SoftTimeLimitExceeded):
            self.session.rollback()
            self._fail_late(members)
            return
        except ShutdownRequested:
            raise
        except Exception as exc:
            self.session.rollback()
            self._step_raised(members, exc, "a step")
            return
        # A job cancelled or taken over during the step stopped there: its partial rows are dropped, and the
        # next _check finishes it (cancelled) or lets it go (taken over).
        self._store(rows, results, scores, engine, [m for m in members if m.job_id not in watch.stopped])

    def _fail_late(self, members: list[Member]) -> None:
        """A step's alarm rang: fail the members past their soft limit (at least the one with the earliest)."""
        now = time.monotonic()
        late = [m for m in members if m.soft_deadline <= now + 0.5] or [min(members, key=lambda m: m.soft_deadline)]
        for m in late:
            self._fail(m, timeout_message(self.soft, self.limit), JobErrorCode.time_limit)

    def _step_raised(self, members: list[Member], exc: Exception, what: str) -> None:
        """Isolate a shared step's jobs (run them one at a time), or fail the step's only job with the error."""
        if len(members) > 1:
            # Which job caused it? Run this step's jobs one at a time: the culprit then fails alone.
            log.warning("batch: %s of jobs %s raised %s; running them one at a time",
                        what, [m.job_id for m in members], type(exc).__name__)
            self.isolate.update(m.job_id for m in members)
        elif isinstance(exc, InstaBoostError):
            self._fail(members[0], exc.message, exc.code)
        else:
            log.exception("job %s failed", members[0].job_id)
            self._fail(members[0], internal_error(exc), JobErrorCode.worker_error)

    def _store(self, rows, results, scores, engine, members: list[Member]) -> None:
        """Store each row's run and end the members with nothing left; a member's error fails it alone."""
        for m in members:
            mine = [(r, results[i], scores[i]) for i, (n, r) in enumerate(rows) if n is m]
            try:
                status = store_runs(self.session, m, mine, engine, self.worker, self.budget, stored=m.rows.remove,
                                    last=lambda: not m.rows)
                if status is not None:
                    self._end(m, status)
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                self.session.rollback()
                log.exception("job %s: storing its runs failed", m.job_id)
                self._fail(m, internal_error(exc), JobErrorCode.worker_error)

    # -- limits and the way out --------------------------------------------------------------------------

    def _stuck(self, members: list[Member]) -> None:
        """The watchdog thread: the step never saw its alarm. Fail the jobs past their hard limit, then exit."""
        past = self.limit + grace_seconds(self.limit)
        late = [m for m in members if time.monotonic() >= m.hard_deadline] or members[:1]
        reason = (f"jobs {[m.job_id for m in late]}: still running {past:.0f} s after they started "
                  f"(worker.job_time_limit={self.limit} s)")
        # Recording the failure may itself block (a lock the stuck thread holds): exit within 30 s regardless.
        backstop = threading.Timer(30, self.opts.hard_exit, args=(reason + "; recording the failure hung",))
        backstop.daemon = True
        backstop.start()
        for m in late:
            try:
                fail(self.opts.db_url, m.job_id, stuck_message(past, self.limit), min(self.budget, 10.0),
                     worker=self.worker, code=JobErrorCode.time_limit)
            except BaseException as exc:  # the recovery loop recovers the job once this process is gone
                log.error("job %s: watchdog could not record the failure (%s)", m.job_id, type(exc).__name__)
        # The other jobs of the step were not past their limit: the recovery loop sends them again.
        self.opts.hard_exit(reason)

    def _requeue_all(self, redelivery_first: bool) -> None:
        """Give every job still held back to the queue (a warm shutdown, or an error that stops the batch)."""
        # After an error (the database gone, say) try briefly: the recovery loop sends back what stays unlisted.
        budget = self.budget if redelivery_first else min(self.budget, 5.0)
        for m in self._active():
            try:
                if m.job_id == self.first.id:
                    if redelivery_first:  # its message goes back to the queue with it (Reject, requeue)
                        with contextlib.suppress(InstaBoostError):
                            with_db_retry(self.session, give_back, m.job_id, self.worker, budget=budget)
                    continue  # otherwise the caller settles the delivered job
                # Its message may be gone (skipped while it ran here): enqueued_at NULL, the recovery loop sends it.
                m.status = hand_back(self.opts.db_url, m.job_id, self.worker, budget, fault=False)
            except BaseException as exc:  # the recovery loop finds it unlisted in this process's heartbeat
                log.warning("job %s: could not hand it back (%s)", m.job_id, type(exc).__name__)
        with contextlib.suppress(Exception):
            self.session.rollback()


def _engine(model: str, kind: str):
    # Imported on first use: worker.engine imports torch, which the Celery app and `instaboost serve` (that
    # import this module) must not pay for before a job runs.
    from worker.engine import get_engine

    return get_engine(model, kind)
