"""Scoring and storing beside the decoding loop: the continuous runner's storer thread.

The continuous runner (``worker.jobs.scheduler``) hands each finished decode (an ``Item``: the rows it stands
for, their results, their scores when their step scored them already) to a ``Storer``, a thread with its own
database session (a SQLAlchemy session serves one thread), and decodes on. The storer scores the rows
(``worker.jobs.kinds.score_rows``), stores their runs, succeeds the job once its last row is stored, and only
then publishes the rows' stream end events, so a reader that sees a stream end finds the job complete. The
loop reads what happened (``Outcome``) between two steps and ends the jobs there: the runner's members are
changed by the loop alone.

- One thread, first in first out: a job's rows are stored in the order they finished; its success follows
  its last row, which the loop marks (``Item.last``) once every row of the job is handed over.
- Bounded: at most ``size`` items wait; a loop that outruns the storer waits for room, so memory stays bounded.
- A row's error fails its job alone: the storer drops that job's later items and the loop fails it.
  ``DatabaseUnavailable`` (or anything that is not an ``Exception``) stops the storer, and the loop raises it
  again, so its jobs are handed back as with a static step.
- ``drain`` waits until every item is stored (a warm shutdown hands back only what was not stored);
  ``stop`` drops the items not started (an error path); ``kill -9`` loses the items not stored, which their
  job's next delivery decodes again (runs are unique per job and variant: nothing is stored twice).
- Perplexity runs the model here, beside the decoding loop, without a lock: the fast engine's boost lives in a
  context variable that this thread never sets, so its forwards are the plain model's; a scoring forward uses
  no cache and changes no module state; and the tokenizer is only read (no padding or truncation switched).
  Rows of the reference engine (whose hooks are the model's, for every thread) are scored in their own step.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from shared.db import get_sessionmaker
from shared.settings import Settings
from worker.jobs.endings import TAKEN_OVER, DatabaseUnavailable, store_runs
from worker.jobs.kinds import score_rows

log = logging.getLogger("instaboost.worker")


@dataclass(eq=False)
class Item:
    """Rows of one job that finished decoding, to score (unless scores are given) and store in order."""

    member: Any  # the runner's Member: read here (job_id, kind, publish, status), changed by the loop only
    rows: list
    results: list
    requests: list
    engine: Any
    scores: list | None = None  # None: score here
    last: bool = False  # every other row of the job is stored or handed over before: succeed after these


@dataclass(eq=False)
class Outcome:
    """What storing an item did: the rows stored, the job's status after its last row, or the error."""

    member: Any
    stored: list = field(default_factory=list)
    status: str | None = None
    error: BaseException | None = None

    @property
    def fatal(self) -> bool:
        """The storer stopped: the loop raises the error (the database is gone, or worse)."""
        return self.error is not None and (isinstance(self.error, DatabaseUnavailable)
                                           or not isinstance(self.error, Exception))


class Storer:
    """A thread that scores and stores the items handed to it, in order, with its own database session."""

    def __init__(self, db_url: str | None, worker: str, settings: Settings, budget: float, size: int):
        self.db_url, self.worker, self.settings, self.budget = db_url, worker, settings, budget
        self.size = max(1, size)
        self._items: collections.deque[Item] = collections.deque()
        self._outcomes: collections.deque[Outcome] = collections.deque()
        self._busy = False  # an item is being stored
        self._closed = False  # no more items: the thread ends once the queue is empty
        self._done = False  # the thread ended
        self._cond = threading.Condition()
        self.broken: set[int] = set()  # jobs whose row failed: their later items are dropped
        self.thread = threading.Thread(target=self._run, name="instaboost-storer", daemon=True)
        self.thread.start()

    # -- the loop's side ---------------------------------------------------------------------------------

    def put(self, item: Item, timeout: float) -> bool:
        """Queue an item; False if no room came within timeout (the loop reads outcomes, then tries again)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) < self.size or self._done, timeout):
                return False
            if not self._done:  # a stopped storer drops it: its fatal outcome tells the loop why
                self._items.append(item)
                self._cond.notify_all()
            return True

    def take(self, wait: float = 0.0) -> list[Outcome]:
        """Return the outcomes since the last call, waiting up to wait seconds for one when there is none."""
        with self._cond:
            if wait > 0:
                self._cond.wait_for(lambda: self._outcomes or self._done, wait)
            out = list(self._outcomes)
            self._outcomes.clear()
            return out

    @property
    def idle(self) -> bool:
        """Nothing waits or is being stored."""
        with self._cond:
            return self._done or not (self._items or self._busy)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every item handed over is stored (or the storer stopped); False if timeout came first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done or not (self._items or self._busy), timeout)

    def stop(self, timeout: float) -> None:
        """Drop the items not started, let the one being stored finish (up to timeout), and end the thread."""
        with self._cond:
            self._items.clear()
            self._closed = True
            self._cond.notify_all()
        self.thread.join(timeout)
        if self.thread.is_alive():  # a write stuck on the database: it ends with the process, or on its own
            log.warning("storer: still storing a row after %.0f s; leaving it behind", timeout)

    # -- the thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        session = get_sessionmaker(self.db_url)()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._items or self._closed)
                    if not self._items:
                        return
                    item, self._busy = self._items.popleft(), True
                    self._cond.notify_all()  # room for the loop's next item
                outcome = self._store(session, item)
                with self._cond:
                    self._busy = False
                    self._outcomes.append(outcome)
                    if outcome.fatal:
                        self._items.clear()
                        return
                    self._cond.notify_all()
        finally:
            session.close()
            with self._cond:
                self._done, self._busy = True, False
                self._cond.notify_all()

    def _store(self, session, item: Item) -> Outcome:
        """Score and store an item's rows, then succeed its job if they were its last, then end their streams."""
        m = item.member
        out = Outcome(m)
        if m.job_id in self.broken or m.status == TAKEN_OVER:  # taken over: its new owner stores its runs
            return out
        try:
            scores = item.scores
            if scores is None:
                scores = score_rows(item.engine, [m.kind] * len(item.rows), item.requests, item.results, self.settings)
            out.status = store_runs(session, m, zip(item.rows, item.results, scores), item.engine, self.worker,
                                    self.budget, stored=out.stored.append,
                                    last=lambda: item.last and m.status is None)
        except BaseException as exc:  # noqa: BLE001 - every error goes to the loop, which decides
            out.error = exc
            try:
                session.rollback()
            except Exception:  # noqa: BLE001 - a dead connection: the pool's pre-ping replaces it
                session.close()
            if not out.fatal:
                log.exception("job %s: storing its runs failed", m.job_id)
                self.broken.add(m.job_id)
        return out
