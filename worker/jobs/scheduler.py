"""Continuous scheduling (``worker.continuous``): a batch whose rows join and leave at every decoding step.

``ContinuousRunner`` is the batch runner (``worker.jobs.runner``) with another step. Its members, claims
(``worker.jobs.intake``), checks and endings are the runner's; the rows of fast-engine jobs live in one
``ContinuousDecoder`` (``worker.engine.continuous``) instead of being decoded a static step at a time:

- at every decoding step the rows that ended leave: each run is scored and stored at once, its stream
  ends at once, and a job whose last row is stored succeeds at once;
- rows of held jobs join the decoder as they are claimed (the runner's ``_fill`` claims while the rows held
  stay under ``worker.max_batch_rows``); interactive work (chat and completion jobs that are not lines of
  an OpenAI batch) joins ahead of every waiting row;
- rows of a job that compute the same are decoded once and stored under each name (``worker.jobs.decode``).

The guarantees stay those of the static runner. The held jobs' states (cancel, take-over) are read every
``CHECK_INTERVAL`` seconds between two steps; a cancelled or taken-over job's rows leave at the next step
(partial rows are dropped), the others go on. The soft time limit is checked between steps and armed as an
alarm around each step, the watchdog guards each step with the earliest hard limit. A step that raises or
is interrupted leaves the decoder's cache in an unknown state: the decoder is dropped and the rows not yet
stored are decoded again from their prompts (after an error, one job at a time through the static step, so
the culprit fails alone). Runs are stored row by row, unique per job and variant, so ``kill -9`` loses only
rows still decoding and duplicates nothing; the heartbeat lists every held job (the runner's ``_advertise``).
Jobs of the reference engine keep the static step.

Scoring and storing run beside the decoding loop (``worker.jobs.storer``): a row that ends goes to the storer
thread, which scores it, stores its run, succeeds its job after the job's last row and then ends its stream;
the loop applies what the storer did between two steps. A row handed over is not decoded again (``pending``)
until the storer reports it stored or its job ended. Every guarantee holds across the hand-over: a job
succeeds only once all its rows are stored; a storer error fails only its job (``DatabaseUnavailable`` is
raised in the loop, which hands its jobs back as before); a warm shutdown first waits for the storer to store
every row handed over, then hands back the rest; the held jobs stay in the heartbeat until the storer is
done with them. A row handed over frees its decoder slot at once (``_room`` counts only rows still to
decode); the storer's queue is bounded (``max_batch_rows`` items), so a slow database slows decoding instead
of growing memory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace

from celery.exceptions import SoftTimeLimitExceeded

from shared.celery_config import PRIORITY, job_priority
from shared.chat import choice_index
from shared.errors import JobErrorCode
from shared.metrics import METRICS
from shared.store.tables import Job, JobStatus
from worker.jobs import faults
from worker.jobs.decode import twins
from worker.jobs.endings import JobTimeLimit, ShutdownRequested, internal_error, timeout_message
from worker.jobs.kinds import score_rows
from worker.jobs.runner import CohortRunner, Member, _engine
from worker.jobs.storer import Item, Storer
from worker.jobs.watchdog import Watchdog, grace_seconds, time_limit

log = logging.getLogger("instaboost.worker")

CHECK_INTERVAL = 0.5  # seconds between two reads of the held jobs' states (the static step's Watch polls as often)


class ContinuousRunner(CohortRunner):
    """Run a delivered job and the jobs its batch takes in, rows joining and leaving at every decoding step."""

    # A job this worker's storer succeeded is still held until the loop collects the storer's outcome; a state
    # read in between (the storer commits, then reports) must not take it for a job taken over: no on_end then.
    OWNED = (*CohortRunner.OWNED, JobStatus.succeeded)
    beside = True  # score and store in the storer thread; False: in the loop, between two steps (bench/store_beside.py)

    def __init__(self, first: Job, opts):
        super().__init__(first, opts)
        self.storer: Storer | None = None  # started on the first row handed over
        self.pending: set[tuple[int, str]] = set()  # (job id, run name) of rows handed to the storer, not stored yet
        self.decoder = None  # made on first use (it needs the engine, which loads the model)
        self.held: dict[tuple, list[tuple[Member, object]]] = {}  # decoding key -> the rows it stands for
        self.fed: set[tuple[int, str]] = set()  # (job id, run name) of rows in the decoder
        self.urgent: set[int] = set()  # interactive jobs: their rows join ahead of waiting ones
        self.checked = 0.0
        self.waited = 0  # rows waiting at the last step: the fault seam fires when that changes (rows join)
        self.filled = (None, 0.0)  # (room, time) of the last look at the queue
        self.seen: set[int] = set()  # interactive jobs seen waiting by _chat_waits

    def run(self) -> str:
        """Run until no claimed job has rows left (the storer's included); return the delivered job's status."""
        try:
            return super().run()
        finally:
            if self.storer is not None:
                self.storer.stop(timeout=5.0)

    def _loop(self) -> None:
        """Decode held rows step by step; rows the decoder does not take run in static rounds."""
        while True:
            self._collect()
            self._check()
            self._refill()
            self._feed()
            if self.held:
                self._tick()
                continue
            rows = self._next_rows()  # rows the decoder does not take: the reference engine, isolated jobs
            if rows:
                self._step(rows)
            elif any(self._key(m, r) in self.pending for m in self._active() for r in m.rows):
                self._collect(wait=CHECK_INTERVAL)  # only the storer has work left: wait for it, checking meanwhile
            else:
                break

    # -- members -----------------------------------------------------------------------------------------

    def _admit(self, job: Job) -> Member:
        if job_priority(job.kind, job.batch_id) == PRIORITY["interactive"]:
            self.urgent.add(job.id)
        return super()._admit(job)

    def _end(self, m: Member, status: str) -> None:
        super()._end(m, status)
        if self.decoder is not None:
            for key, rows in self.held.items():
                if rows[0][0] is m:
                    self.decoder.halt(key)  # it leaves at the next step; its result is dropped

    def _check(self) -> None:
        """Read the held jobs' states every CHECK_INTERVAL; between two reads, check deadlines and shutdown."""
        now = time.monotonic()
        if now - self.checked >= CHECK_INTERVAL:
            self.checked = now
            super()._check()
            return
        for m in self._active():
            if now >= m.soft_deadline:
                self._fail(m, timeout_message(self.soft, self.limit), JobErrorCode.time_limit)
        self._stop_if_asked()

    def _refill(self) -> None:
        """Look at the queue when the batch's room changed, else every CHECK_INTERVAL (not at every token).

        Between two looks, every step reads the interactive list alone (one Redis read): a chat that arrives
        is claimed at the next step, not up to CHECK_INTERVAL later.
        """
        room, now = self._room(), time.monotonic()
        if room == self.filled[0] and now - self.filled[1] < CHECK_INTERVAL and not self._chat_waits(room):
            return
        self.filled = (room, now)
        self._fill()

    def _chat_waits(self, room: int) -> bool:
        """Whether an interactive job not seen before waits in the queue (the full looks retry those refused)."""
        if room <= 0 or not self.batch_jobs or self.opts.interactive is None:
            return False
        try:
            fresh = set(self.opts.interactive(self.model)) - {m.job_id for m in self.members} - self.seen
        except Exception:  # Redis away: the next full look says so
            return False
        self.seen |= fresh
        return bool(fresh)

    def _decodable(self, m: Member) -> bool:
        return m.kind is not None and m.kind.engine == "fast" and m.job_id not in self.isolate

    @staticmethod
    def _key(m: Member, row) -> tuple[int, str]:
        return m.job_id, m.kind.name(row)

    def _open(self, m: Member) -> list:
        """Return a member's rows not handed to the storer."""
        return [r for r in m.rows if self._key(m, r) not in self.pending]

    def _room(self) -> int:
        """Rows that may join: a row handed to the storer holds no decoder slot (nor much memory: a result)."""
        return self.max_rows - sum(len(self._open(m)) for m in self._active())

    def _next_rows(self):
        """Pick a static step's rows among the jobs the decoder does not take."""
        active = [m for m in self._active() if self._open(m) and not self._decodable(m)]
        if not active:
            return []
        head = active[0]
        cap = self.max_rows if head.kind.engine == "fast" else 1
        pool = [head] if head.job_id in self.isolate else [m for m in active if m.key == head.key]
        return [(m, r) for m in pool for r in self._open(m)][:cap]

    # -- the decoder -------------------------------------------------------------------------------------

    def _feed(self) -> None:
        """Submit the rows of held fast-engine jobs that are not in the decoder yet (twins once)."""
        for m in self._active():
            if not self._decodable(m):
                continue
            fresh = [r for r in self._open(m) if self._key(m, r) not in self.fed]
            if not fresh:
                continue
            if self.decoder is None:
                from worker.engine.continuous import ContinuousDecoder  # torch: only once a job runs

                self.decoder = ContinuousDecoder.configured(_engine(self.model, "fast"), self.opts.settings)
            log.info("continuous: %d rows of job %s join the decoder", len(fresh), m.job_id)
            requests = [m.kind.generation_request(r) for r in fresh]
            first = twins([m.job_id] * len(fresh), requests)
            for i, row in enumerate(fresh):
                self.fed.add((m.job_id, m.kind.name(row)))
                key = (m.job_id, m.kind.name(fresh[first[i]]))
                if first[i] != i:
                    self.held[key].append((m, row))
                    continue
                self.held[key] = [(m, row)]
                relay = None
                if m.publish is not None:
                    m.publish({"type": "start"})
                    relay = self._relay(key)
                self.decoder.submit(requests[i], key, on_text=relay, first=m.job_id in self.urgent,
                                    attention=m.kind.attention)

    def _relay(self, key):
        def on_text(delta: str) -> None:
            for m, row in self.held.get(key, ()):
                if m.publish is not None and m.status is None:
                    METRICS.first_token(m.job_id)
                    m.publish({"type": "delta", "text": delta, "index": choice_index(row) or 0})

        return on_text

    def _reset(self) -> None:
        """Drop the decoder (its cache is in an unknown state): the rows not stored yet are submitted again."""
        self.decoder, self.held, self.fed = None, {}, set()

    def _tick(self) -> None:
        """One decoding step: store the rows that ended, let waiting rows join."""
        members = list(dict.fromkeys(m for rows in self.held.values() for m, _ in rows if m.status is None))
        now = time.monotonic()
        try:
            with contextlib.ExitStack() as stack:
                if self.opts.hard_exit is not None and members:
                    hard = max(0.05, min(m.hard_deadline for m in members) + grace_seconds(self.limit) - now)
                    stack.enter_context(Watchdog(hard, lambda: self._stuck(members)))
                alarm = max(0.05, min(m.soft_deadline for m in members) - now) if members else 0
                with time_limit(alarm):
                    waiting = len(self.decoder.waiting)
                    if waiting and waiting != self.waited:  # not at every token while rows wait for a slot
                        faults.inject(faults.STEP, self.session)
                    self.waited = waiting
                    running = {row.key for row in self.decoder.rows}
                    finished = self.decoder.step()
                    METRICS.step(len(running), _step_tokens(running, self.decoder, finished), time.monotonic() - now,
                                 finished=len(finished))
        except (JobTimeLimit, SoftTimeLimitExceeded):
            self.session.rollback()
            self._reset()
            self._fail_late(members)
            return
        except ShutdownRequested:
            raise
        except Exception as exc:
            self.session.rollback()
            self._reset()
            if members:
                self._step_raised(members, exc, "a continuous step")
            return
        self._finished([(self.held.pop(key, []), result) for key, result in finished])

    def _finished(self, decoded) -> None:
        """Score the rows that ended in a step and store each under its names (twins), ending jobs with nothing left.

        One scoring call for all of them: its perplexity pass is one forward whatever its rows (one per row cost a
        lone three-variant job a pass per variant, about 1.4 s each on a busy CPU, while no row decoded).
        """
        rows, results = [], []
        for held, result in decoded:
            held = [(m, row) for m, row in held if m.status is None]
            rows += held
            results += [result if i == 0 else replace(result) for i in range(len(held))]
        if not rows:
            return
        for m, row in rows:
            self.fed.discard(self._key(m, row))
        engine = self.decoder.engine
        requests = [m.kind.generation_request(row) for m, row in rows]
        if self.beside:
            self._hand(rows, results, None, requests, engine)
            return
        scores = score_rows(engine, [m.kind for m, _ in rows], requests, results, self.opts.settings)
        super()._store(rows, results, scores, engine, list(dict.fromkeys(m for m, _ in rows)))

    # -- the storer --------------------------------------------------------------------------------------

    def _store(self, rows, results, scores, engine, members: list[Member]) -> None:
        """Hand a static step's scored rows to the storer (or store them here when not beside)."""
        if not self.beside:
            super()._store(rows, results, scores, engine, members)
            return
        keep = [i for i, (m, _) in enumerate(rows) if m in members]
        self._hand([rows[i] for i in keep], [results[i] for i in keep], [scores[i] for i in keep],
                   [rows[i][0].kind.generation_request(rows[i][1]) for i in keep], engine)

    def _hand(self, rows, results, scores, requests, engine) -> None:
        """Hand rows to the storer, one item per job; an item whose rows are its job's last ones succeeds it."""
        if self.storer is None:
            self.storer = Storer(self.opts.db_url, self.worker, self.opts.settings, self.budget, self.max_rows)
        for m in dict.fromkeys(m for m, _ in rows):
            mine = [i for i, (n, _) in enumerate(rows) if n is m]
            self.pending.update(self._key(m, rows[i][1]) for i in mine)
            item = Item(m, [rows[i][1] for i in mine], [results[i] for i in mine], [requests[i] for i in mine],
                        engine, None if scores is None else [scores[i] for i in mine], last=not self._open(m))
            while not self.storer.put(item, timeout=CHECK_INTERVAL):
                self._collect()  # the queue is full: decoding waits for the storer (bounded memory)

    def _collect(self, wait: float = 0.0) -> None:
        """Apply what the storer did: drop stored rows, end the jobs it succeeded, fail those whose row failed."""
        if self.storer is None:
            return
        for out in self.storer.take(wait):
            m = out.member
            for row in out.stored:
                self.pending.discard(self._key(m, row))
                if row in m.rows:
                    m.rows.remove(row)
            if out.fatal:
                raise out.error
            if m.status is not None:
                continue  # ended meanwhile by the loop (cancelled, taken over, past its time limit)
            if out.error is not None:
                self._fail(m, internal_error(out.error), JobErrorCode.worker_error)
            elif out.status is not None:
                self._end(m, out.status)

    def _requeue_all(self, redelivery_first: bool) -> None:
        """Let the storer store what it was handed first (a warm shutdown), then hand back the jobs still held."""
        if self.storer is not None:
            if redelivery_first:
                self.storer.drain()  # every row decoded is stored; only undecoded rows are handed back
            else:  # an error: the database may be gone; what is left is decoded again by the next delivery
                self.storer.stop(timeout=min(self.budget, 5.0))
            try:
                self._collect()
            except BaseException as exc:  # noqa: BLE001 - DatabaseUnavailable, say: hand the jobs back all the same
                log.warning("storer: stopped with %s; handing the held jobs back", type(exc).__name__)
        super()._requeue_all(redelivery_first)


def _step_tokens(running: set, decoder, finished) -> int:
    """Tokens one step made: one per row that was running, the first token of each row that joined."""
    joined = sum(row.key not in running for row in decoder.rows)
    return len(running) + joined + sum(result.output_tokens for key, result in finished if key not in running)
