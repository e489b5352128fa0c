"""Taking jobs into a batch: claim queued jobs of the model whose messages wait in this worker's queue.

With ``worker.batch_jobs`` on, the batch runner fills its batch up to ``worker.max_batch_rows`` rows between
two steps. The jobs are claimed in the database exactly as a delivery claims (queued -> running under this
worker, one attempt counted), in one transaction that skips rows another worker is claiming
(``lifecycle.claim_queued``). Their messages stay in the queue; delivered later, they find the job finished,
or running under a live worker whose heartbeat lists it, and are skipped.
"""

from __future__ import annotations

import logging
from typing import Callable

from shared.store import lifecycle
from shared.store.tables import Job
from worker.jobs.endings import with_db_retry
from worker.jobs.kinds import row_count

log = logging.getLogger("instaboost.worker")


def claim_waiting(session, candidates: Callable[[str], set[int]], model: str, worker: str, *, held: set[int],
                  room: int, max_rows: int, advertise: Callable[[list[int]], None], budget: float) -> list[Job] | None:
    """Claim waiting jobs of model (not in held) while their rows fit in room; return them, None if none waited.

    advertise(ids) lists ids in this process's heartbeat next to the jobs it holds: the waiting jobs before
    the claim commits (so a duplicate delivery elsewhere never takes one of them over), then those it won.
    A job that alone is larger than max_rows is taken only into an empty batch.
    """
    try:
        waiting = set(candidates(model)) - held
    except Exception as exc:  # Redis away: run what we hold; the next step tries again
        log.warning("batch: cannot read the queue (%s)", type(exc).__name__)
        return None
    if not waiting:
        return None
    left = [room]

    def take(job: Job) -> bool:
        params = job.params or {}
        if (params.get("engine") or "fast") != "fast":
            return False  # the reference engine runs one row at a time: leave it to its own delivery
        n = row_count(params)
        if n is None:
            return False  # its own delivery fails it with the reason
        if n > left[0] and left[0] < max_rows:
            return False
        left[0] -= n
        return True

    advertise(sorted(waiting))
    try:
        won = with_db_retry(session, lifecycle.claim_queued, waiting, model, worker, take, budget=budget)
    except BaseException:
        advertise([])  # anything it claimed is found unlisted by the recovery loop and sent again
        raise
    advertise([job.id for job in won])
    return won
