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
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace

from celery.exceptions import SoftTimeLimitExceeded

from shared.celery_config import PRIORITY, job_priority
from shared.chat import choice_index
from shared.errors import InstaBoostError, JobErrorCode
from shared.metrics import METRICS
from shared.store.tables import Job
from worker.jobs import faults
from worker.jobs.decode import twins
from worker.jobs.endings import JobTimeLimit, ShutdownRequested, internal_error, timeout_message
from worker.jobs.kinds import score_rows
from worker.jobs.runner import CohortRunner, Member, _engine
from worker.jobs.watchdog import Watchdog, grace_seconds, time_limit

log = logging.getLogger("instaboost.worker")

CHECK_INTERVAL = 0.5  # seconds between two reads of the held jobs' states (the static step's Watch polls as often)


class ContinuousRunner(CohortRunner):
    """Run a delivered job and the jobs its batch takes in, rows joining and leaving at every decoding step."""

    def __init__(self, first: Job, opts):
        super().__init__(first, opts)
        self.decoder = None  # made on first use (it needs the engine, which loads the model)
        self.held: dict[tuple, list[tuple[Member, object]]] = {}  # decoding key -> the rows it stands for
        self.fed: set[tuple[int, str]] = set()  # (job id, run name) of rows in the decoder
        self.urgent: set[int] = set()  # interactive jobs: their rows join ahead of waiting ones
        self.checked = 0.0

    def _loop(self) -> None:
        """Decode held rows step by step; rows the decoder does not take run in static rounds."""
        while True:
            self._check()
            self._fill()
            self._feed()
            if self.held:
                self._tick()
                continue
            rows = self._next_rows()  # rows the decoder does not take: the reference engine, isolated jobs
            if not rows:
                break
            self._step(rows)

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

    def _decodable(self, m: Member) -> bool:
        return m.kind is not None and m.kind.engine == "fast" and m.job_id not in self.isolate

    def _next_rows(self):
        """Pick a static step's rows among the jobs the decoder does not take."""
        active = [m for m in self._active() if m.rows and not self._decodable(m)]
        if not active:
            return []
        head = active[0]
        cap = self.max_rows if head.kind.engine == "fast" else 1
        pool = [head] if head.job_id in self.isolate else [m for m in active if m.key == head.key]
        return [(m, r) for m in pool for r in m.rows][:cap]

    # -- the decoder -------------------------------------------------------------------------------------

    def _feed(self) -> None:
        """Submit the rows of held fast-engine jobs that are not in the decoder yet (twins once)."""
        for m in self._active():
            if not self._decodable(m):
                continue
            fresh = [r for r in m.rows if (m.job_id, m.kind.name(r)) not in self.fed]
            if not fresh:
                continue
            if self.decoder is None:
                from worker.engine.continuous import ContinuousDecoder  # torch: only once a job runs

                self.decoder = ContinuousDecoder.configured(_engine(self.model, "fast"), self.opts.settings)
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
                    if self.decoder.waiting:
                        faults.inject(faults.STEP, self.session)  # once per step that rows join
                    rows = len(self.decoder.rows)
                    finished = self.decoder.step()
                    METRICS.step(rows, rows, time.monotonic() - now)
        except (JobTimeLimit, SoftTimeLimitExceeded):
            self.session.rollback()
            self._reset()
            now = time.monotonic()
            late = [m for m in members if m.soft_deadline <= now + 0.5] or \
                [min(members, key=lambda m: m.soft_deadline)]
            for m in late:
                self._fail(m, timeout_message(self.soft, self.limit), JobErrorCode.time_limit)
            return
        except ShutdownRequested:
            raise
        except Exception as exc:
            self.session.rollback()
            self._reset()
            if len(members) > 1:
                log.warning("batch: a continuous step of jobs %s raised %s; running them one at a time",
                            [m.job_id for m in members], type(exc).__name__)
                self.isolate.update(m.job_id for m in members)
            elif members:
                if isinstance(exc, InstaBoostError):
                    self._fail(members[0], exc.message, exc.code)
                else:
                    log.exception("job %s failed", members[0].job_id)
                    self._fail(members[0], internal_error(exc), JobErrorCode.worker_error)
            return
        for key, result in finished:
            self._finished(self.held.pop(key, []), result)

    def _finished(self, rows, result) -> None:
        """Score and store a decoded row under each of its names (its twins), ending jobs with nothing left."""
        rows = [(m, row) for m, row in rows if m.status is None]
        if not rows:
            return
        for m, row in rows:
            self.fed.discard((m.job_id, m.kind.name(row)))
        engine = self.decoder.engine
        requests = [m.kind.generation_request(row) for m, row in rows]
        results = [result] + [replace(result) for _ in rows[1:]]
        scores = score_rows(engine, [m.kind for m, _ in rows], requests, results, self.opts.settings)
        self._store(rows, results, scores, engine, list(dict.fromkeys(m for m, _ in rows)))
