"""A worker's batch: rows (job variants) from one or several claimed jobs of a model, decoded together.

A delivery claims its job (``tasks._execute_job``) and runs it here. With ``worker.batch_jobs`` on, each
step first fills the batch up to ``worker.max_batch_rows`` rows with other jobs of the same model whose
messages wait in this worker's queue: they are claimed in the database exactly as a delivery claims
(queued -> running under this worker, one attempt counted), in one transaction that skips rows another
worker is claiming (``lifecycle.claim_queued``). Their messages stay in the queue; delivered later, they
find the job finished, or running under a live worker whose heartbeat lists it, and are skipped.

The batch is refilled between steps, not inside one: a step decodes its rows to the end (a row that
ends early stops costing compute: its own budget, EOS), stores every run, then the next step fills up.
Every job in the batch keeps the guarantees of a job run alone:

- cancel and take-over are checked before every step; a cancelled job's rows leave the batch;
- progress counts the job's stored variants;
- the time limit runs from the job's own claim: a step's alarm is its earliest deadline and only the jobs
  past theirs fail (the others' rows run again in the next step); the watchdog fails the jobs past their
  hard limit and ends the process, and the sweeper sends the rest again, as after ``kill -9``;
- a step that raises is run again one job at a time, so the job that causes the error fails alone;
- a warm shutdown hands every job back; ``kill -9`` leaves them running under a dead worker and the
  sweeper sends each one again; the runs already stored are kept (unique per job and variant).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from shared.celery_config import soft_time_limit
from shared.db import get_sessionmaker
from shared.errors import InstaBoostError
from shared.metrics import METRICS
from shared.store import lifecycle
from shared.store.tables import Job, JobStatus
from worker.jobs import faults
from worker.jobs import tasks as t
from worker.jobs.watchdog import Watchdog, grace_seconds

log = logging.getLogger("instaboost.worker")

TAKEN_OVER = "taken over"
GATHER_POLL = 0.1  # seconds between two looks at the queue while a first step gathers its jobs


@dataclass(eq=False)
class Member:
    """A job this worker claimed: its variants still to generate, and its own deadlines."""

    job_id: int
    model: str
    engine: str
    attention: bool
    request: Any  # JobRequest, or None for an OpenAI job (chat, completion)
    params: dict
    rows: list  # Variants still to generate (an OpenAI job: its run names, shared.completions.openai_rows: a chat
                #   job's choices, a completion's prompts)
    soft_deadline: float  # time.monotonic() values
    hard_deadline: float
    publish: Callable[[dict], None] | None = None
    status: str | None = None  # how it ended, once it did

    @property
    def key(self) -> tuple[str, bool]:
        """Rows share a step only with rows of the same engine and attention analysis."""
        return self.engine, self.attention

    def generation_request(self, row):
        if self.request is None:
            from shared.completions import openai_request

            return openai_request(self.params, row)
        return self.request.generation_request(row)


@dataclass
class Options:
    """What a batch runner needs from the worker around it."""

    worker: str
    settings: Mapping[str, Any]
    db_url: str | None = None
    should_stop: Callable[[], bool] = lambda: False
    hard_exit: Callable[[str], None] | None = None
    # model -> ids of jobs whose messages wait in this worker's queue (None: never claim other jobs)
    candidates: Callable[[str], set[int]] | None = None
    advertise: Callable[[list[int]], None] | None = None  # the heartbeat's list of jobs this process runs
    on_end: Callable[[int, str], None] | None = None  # a job ended (succeeded, failed, cancelled)


class BatchRunner:
    """Run a delivered job, and the jobs it takes into its batch, until none has rows left."""

    def __init__(self, first: Job, opts: Options):
        s = opts.settings
        self.opts = opts
        self.worker = opts.worker
        self.max_rows = max(1, int(s["worker.max_batch_rows"]))
        self.batch_jobs = bool(s["worker.batch_jobs"]) and opts.candidates is not None
        self.wait = float(s["worker.batch_wait"])
        self.limit = int(s["worker.job_time_limit"])
        self.soft = soft_time_limit(self.limit)
        self.budget = float(s["worker.db_retry_seconds"])
        self.max_attempts = int(s["worker.max_attempts"])
        self.first = first
        self.model = first.model
        self.members: list[Member] = []
        self.isolate: set[int] = set()  # jobs that run one per step (a shared step raised)
        self.session = get_sessionmaker(opts.db_url)()

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> str:
        """Run until no claimed job has rows left; return the delivered job's status."""
        try:
            self._admit(self.first)
            self._gather()
            while True:
                self._check()
                self._fill()
                rows = self._next_rows()
                if not rows:
                    break
                self._step(rows)
        except t.ShutdownRequested:
            self._hand_back_all(give_back_first=True)
            raise
        except BaseException:
            # DatabaseUnavailable, a cold shutdown: the delivered job is the caller's (_execute_job); the
            # others go back to the queue if the database lets us, else the sweeper finds them unlisted.
            self._hand_back_all(give_back_first=False)
            raise
        finally:
            with contextlib.suppress(Exception):
                self.session.close()
        return next((m.status for m in self.members if m.job_id == self.first.id), None) or TAKEN_OVER

    def _active(self) -> list[Member]:
        return [m for m in self.members if m.status is None]

    def _advertise(self, extra: list[int] = ()) -> None:
        if self.opts.advertise is not None:
            self.opts.advertise([m.job_id for m in self._active()] + list(extra))

    # -- members -----------------------------------------------------------------------------------------

    def _admit(self, job: Job) -> Member:
        """Make a claimed job a member: its pending variants, progress and deadlines (or end it at once)."""
        from shared.completions import openai_rows
        from shared.schemas import JobRequest
        from worker.engine import get_engine

        now = time.monotonic()
        m = Member(job.id, job.model, "fast", False, None, dict(job.params), [], now + self.soft, now + self.limit)
        self.members.append(m)
        METRICS.job_started(job.id, job.created_at, job.started_at, completion=bool(job.params.get("stream")))
        if job.attempts > self.max_attempts:
            self._end(m, t._fail(self.opts.db_url, job.id, t.poison_message(job.attempts, self.max_attempts),
                                 self.budget, worker=self.worker))
            return m
        try:
            if openai_rows(job.params) is not None:
                m.engine = job.params.get("engine") or "fast"
                variants = openai_rows(job.params)
            else:
                m.request = JobRequest.from_params(job.params)
                m.engine, m.attention = m.request.engine, bool(m.request.attention)
                variants = m.request.variants()
            engine = get_engine(job.model, m.engine)
            for row in variants:  # a prompt that cannot run fails its own job, before it joins a step
                engine.prompt(m.generation_request(row))
        except InstaBoostError as exc:
            self._end(m, t._fail(self.opts.db_url, job.id, exc.message, self.budget, worker=self.worker))
            return m
        except Exception as exc:
            log.exception("job %s: could not be prepared", job.id)
            self._end(m, t._fail(self.opts.db_url, job.id, f"internal error in the worker: {type(exc).__name__}: "
                                 f"{exc}", self.budget, worker=self.worker))
            return m
        done = t.with_db_retry(self.session, t._stored_variants, job.id, budget=self.budget)
        name = (lambda r: r) if m.request is None else (lambda r: r.name)
        m.rows = [r for r in variants if name(r) not in done]  # the rest were stored by an earlier delivery
        if m.request is not None:
            t.with_db_retry(self.session, lifecycle.mark_progress, job.id, len(variants) - len(m.rows),
                            len(variants), worker=self.worker, budget=self.budget)
        else:
            m.publish = t._publisher(job, job.attempts)
        if not m.rows:
            self._end(m, t.with_db_retry(self.session, t._succeed, job.id, self.worker, budget=self.budget))
        return m

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
            states = t.with_db_retry(self.session, _states, [m.job_id for m in active], budget=self.budget)
            for m in active:
                status, worker = states.get(m.job_id, (None, None))
                if worker != self.worker or status not in (JobStatus.running, JobStatus.cancelling,
                                                           JobStatus.cancelled):
                    log.warning("job %s: stopping, it is now %s under %s", m.job_id,
                                status.value if status else "gone", worker or "-")
                    self._end(m, TAKEN_OVER)
                elif status is JobStatus.cancelling:
                    self._end(m, t._finish_cancel(self.session, m.job_id, self.worker, self.budget))
                elif status is JobStatus.cancelled and worker == self.worker:  # by the step's _Watch
                    self._end(m, JobStatus.cancelled.value)
                elif time.monotonic() >= m.soft_deadline:
                    self._end(m, t._fail(self.opts.db_url, m.job_id, self._timeout_message(), self.budget,
                                         worker=self.worker))
        if self.opts.should_stop():
            raise t.ShutdownRequested()

    def _fill(self) -> None:
        """Claim queued jobs of this model into the batch while their rows fit (worker.batch_jobs)."""
        if not self.batch_jobs:
            return
        room = self._room()
        if room <= 0:
            return
        try:
            waiting = set(self.opts.candidates(self.model)) - {m.job_id for m in self.members}
        except Exception as exc:  # Redis away: run what we hold; the next step tries again
            log.warning("batch: cannot read the queue (%s)", type(exc).__name__)
            return
        if not waiting:
            return
        budget = [room]

        def take(job: Job) -> bool:
            from shared.completions import openai_rows

            params = job.params or {}
            if (params.get("engine") or "fast") != "fast":
                return False  # the reference engine runs one row at a time: leave it to its own delivery
            n = len(openai_rows(params)) if openai_rows(params) is not None else _variant_count(params)
            if n is None:
                return False  # its own delivery fails it with the reason
            if n > budget[0] and budget[0] < self.max_rows:
                return False
            budget[0] -= n
            return True

        # Listed before the claim commits, so a duplicate delivery elsewhere never takes one of them over.
        self._advertise(sorted(waiting))
        try:
            won = t.with_db_retry(self.session, lifecycle.claim_queued, waiting, self.model, self.worker, take,
                                  budget=self.budget)
        except BaseException:
            self._advertise()  # anything it claimed is found unlisted by the sweeper and sent again
            raise
        self._advertise([job.id for job in won])
        for job in won:
            log.info("job %s: joins the batch of job %s's delivery", job.id, self.first.id)
            try:
                self._admit(job)
            except (t.DatabaseUnavailable, t.ShutdownRequested):
                raise
            except Exception as exc:  # its own error: it ends (or goes back) alone, the batch goes on
                self.session.rollback()
                m = next(m for m in self.members if m.job_id == job.id)
                if m.status is None:
                    self._end(m, t._settle(self.opts.db_url, job.id, self.worker, exc, self.budget,
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
        cap = self.max_rows if head.engine == "fast" else 1  # the reference engine runs requests one by one
        pool = [head] if head.job_id in self.isolate else [
            m for m in active if m.key == head.key and m.job_id not in self.isolate]
        return [(m, r) for m in pool for r in m.rows][:cap]

    # -- one step ----------------------------------------------------------------------------------------

    def _step(self, rows: list[tuple[Member, Any]]) -> None:
        from shared.chat import choice_index
        from worker.engine import get_engine

        members = list(dict.fromkeys(m for m, _ in rows))
        head = members[0]
        log.info("batch: a step of %d rows from jobs %s", len(rows), [m.job_id for m in members])
        engine = get_engine(self.model, head.engine)
        requests = [m.generation_request(r) for m, r in rows]
        streams = {i: m.publish for i, (m, _) in enumerate(rows) if m.publish is not None}
        index = {i: choice_index(r) or 0 for i, (m, r) in enumerate(rows) if m.publish is not None}  # its choice
        now = time.monotonic()
        alarm = max(0.05, min(m.soft_deadline for m in members) - now)
        hard = max(0.05, min(m.hard_deadline for m in members) + grace_seconds(self.limit) - now)
        watch = _Watch(self.opts.db_url, self.worker, [m.job_id for m in members])
        try:
            with contextlib.ExitStack() as stack:
                if self.opts.hard_exit is not None:
                    stack.enter_context(Watchdog(hard, lambda: self._stuck(members)))
                stack.enter_context(watch)
                with t.time_limit(alarm):
                    faults.inject("variant", self.session)
                    for publish in streams.values():
                        publish({"type": "start"})

                    def on_text(i, delta):
                        if i in streams:
                            METRICS.first_token(rows[i][0].job_id)
                            streams[i]({"type": "delta", "text": delta, "index": index[i]})

                    results = engine.generate(requests, attention=head.attention, on_text=on_text if streams else None,
                                              halt=lambda i: rows[i][0].job_id in watch.stopped)
                    METRICS.step(len(rows), sum(r.output_tokens for r in results), time.monotonic() - now)
                    scores = self._score(engine, rows, requests, results)
        except (t.JobTimeLimit, SoftTimeLimitExceeded):
            self.session.rollback()
            now = time.monotonic()
            late = [m for m in members if m.soft_deadline <= now + 0.5] or [min(members, key=lambda m: m.soft_deadline)]
            for m in late:
                self._end(m, t._fail(self.opts.db_url, m.job_id, self._timeout_message(), self.budget,
                                     worker=self.worker))
            return
        except t.ShutdownRequested:
            raise
        except Exception as exc:
            self.session.rollback()
            if len(members) > 1:
                # Which job caused it? Run this step's jobs one at a time: the culprit then fails alone.
                log.warning("batch: a step of jobs %s raised %s; running them one at a time",
                            [m.job_id for m in members], type(exc).__name__)
                self.isolate.update(m.job_id for m in members)
                return
            if isinstance(exc, InstaBoostError):
                message = exc.message
            else:
                log.exception("job %s failed", head.job_id)
                message = f"internal error in the worker: {type(exc).__name__}: {exc}"
            self._end(head, t._fail(self.opts.db_url, head.job_id, message, self.budget, worker=self.worker))
            return
        # A job cancelled or taken over during the step stopped there: its partial rows are dropped, and the
        # next _check finishes it (cancelled) or lets it go (taken over).
        self._store(rows, results, scores, engine, [m for m in members if m.job_id not in watch.stopped])

    def _score(self, engine, rows, requests, results) -> list[dict | None]:
        """Score the step's rows: one pass per (perplexity, judge) choice, however many jobs share it."""
        scores: list[dict | None] = [None] * len(rows)
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, (m, _) in enumerate(rows):
            if m.request is not None:  # a chat job stores its text and usage only
                groups.setdefault((m.request.score_perplexity, m.request.judge), []).append(i)
        for idx in groups.values():
            for i, score in zip(idx, t._score(engine, [rows[i][0].request for i in idx], [requests[i] for i in idx],
                                              [results[i] for i in idx], self.opts.settings)):
                scores[i] = score
        return scores

    def _store(self, rows, results, scores, engine, members: list[Member]) -> None:
        """Store each row's run and end the members with nothing left; a member's error fails it alone."""
        from shared.chat import choice_index

        for m in members:
            mine = [(r, results[i], scores[i]) for i, (n, r) in enumerate(rows) if n is m]
            try:
                for row, result, score in mine:
                    t.with_db_retry(self.session, self._record, m, row, result, score, engine, budget=self.budget)
                    t.with_db_retry(self.session, t._end_read, budget=self.budget)
                    m.rows.remove(row)
                    if m.request is None and m.publish is not None:
                        m.publish({"type": "end", "index": choice_index(row) or 0,
                                   "finish_reason": result.finish_reason, "logprobs": result.logprobs,
                                   "prompt_tokens": result.prompt_tokens, "completion_tokens": result.output_tokens})
                    log.info("job %s: variant %s done (%d tokens)", m.job_id, getattr(row, "name", row),
                             result.output_tokens)
                if not m.rows:
                    # A cancel that arrives after the last variant loses: the job is complete.
                    self._end(m, t.with_db_retry(self.session, t._succeed, m.job_id, self.worker,
                                                 budget=self.budget))
            except t.DatabaseUnavailable:
                raise
            except Exception as exc:
                self.session.rollback()
                log.exception("job %s: storing its runs failed", m.job_id)
                self._end(m, t._fail(self.opts.db_url, m.job_id, f"internal error in the worker: "
                                     f"{type(exc).__name__}: {exc}", self.budget, worker=self.worker))

    @staticmethod
    def _record(session, m: Member, row, result, score, engine):
        if m.request is None:
            mults = [x for _, _, x in result.spans]
            return lifecycle.record_run(
                session, m.job_id, row, multiplier=max(mults, key=lambda x: abs(x - 1)) if mults else 1.0,
                layers=m.params["layers"] if mults else "none", heads=None, output_text=result.text,
                prompt_tokens=result.prompt_tokens, output_tokens=result.output_tokens, seconds=result.seconds,
                attention_mass=None, finish_reason=result.finish_reason, logprobs=result.logprobs)
        return lifecycle.record_run(
            session, m.job_id, row.name, multiplier=row.multiplier,
            layers="none" if row.is_original else row.layer_mode, heads=t._heads(m.request, row, engine),
            output_text=result.text, prompt_tokens=result.prompt_tokens, output_tokens=result.output_tokens,
            seconds=result.seconds, attention_mass=result.attention_mass, finish_reason=result.finish_reason,
            scores=score)

    # -- limits and the way out --------------------------------------------------------------------------

    def _timeout_message(self) -> str:
        return (f"time limit: the job ran longer than {self.soft} s (worker.job_time_limit={self.limit} s); "
                "the variants finished before it are kept. Ask for fewer variants or max_new_tokens.")

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
                t._fail(self.opts.db_url, m.job_id, f"time limit: the job was still running {past:.0f} s after it "
                        f"started and did not stop at its limit (worker.job_time_limit={self.limit} s; stuck in "
                        "native code?), so its worker process was ended; the variants finished before it are "
                        "kept. Ask for fewer variants or max_new_tokens.", min(self.budget, 10.0),
                        worker=self.worker)
            except BaseException as exc:  # the sweeper recovers the job once this process is gone
                log.error("job %s: watchdog could not record the failure (%s)", m.job_id, type(exc).__name__)
        # The other jobs of the step were not past their limit: the sweeper sends them again.
        self.opts.hard_exit(reason)

    def _hand_back_all(self, give_back_first: bool) -> None:
        """Give every job still held back to the queue (a warm shutdown, or an error that stops the batch)."""
        # After an error (the database gone, say) try briefly: the sweeper sends back what stays unlisted.
        budget = self.budget if give_back_first else min(self.budget, 5.0)
        for m in self._active():
            try:
                if m.job_id == self.first.id:
                    if give_back_first:  # its message goes back to the queue with it (Reject, requeue)
                        with contextlib.suppress(InstaBoostError):
                            t.with_db_retry(self.session, t._give_back, m.job_id, self.worker, budget=budget)
                    continue  # otherwise the caller settles the delivered job
                # Its message may be gone (skipped while it ran here): enqueued_at NULL, the sweeper sends it.
                m.status = t._hand_back(self.opts.db_url, m.job_id, self.worker, budget, fault=False)
            except BaseException as exc:  # the sweeper finds it unlisted in this process's heartbeat
                log.warning("job %s: could not hand it back (%s)", m.job_id, type(exc).__name__)
        with contextlib.suppress(Exception):
            self.session.rollback()


class _Watch:
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
                    states = _states(session, self.job_ids)
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

    def __enter__(self) -> "_Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def _states(session, job_ids: list[int]) -> dict[int, tuple[JobStatus, str | None]]:
    rows = session.execute(select(Job.id, Job.status, Job.worker).where(Job.id.in_(job_ids))).all()
    session.commit()  # no transaction (and pooled connection) held open during the next step
    return {r.id: (r.status, r.worker) for r in rows}


def _variant_count(params: Mapping[str, Any]) -> int | None:
    from shared.schemas import JobRequest

    try:
        return len(JobRequest.from_params(params).variants())
    except Exception:  # noqa: BLE001 - stored params it cannot read
        return None
