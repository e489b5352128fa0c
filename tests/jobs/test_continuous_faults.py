"""Continuous batching (worker.continuous) under faults: real worker processes, the real model, Redis and PostgreSQL.

Each test queues two-row jobs of different lengths before it starts the worker, with room for two jobs' rows
(``worker.max_batch_rows`` 4): the first delivery takes two jobs in, and each time a job's rows leave (stored),
a waiting job's rows join the running batch. The guarantees of the static runner (``test_batching.py``) must
hold while rows join and leave: ``kill -9`` loses and duplicates nothing, a cancel stops only its job, a warm
shutdown hands the held jobs back, and a chat completion joins a running batch and ends before it.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from shared.db import session_scope
from shared.store import lifecycle
from shared.store.tables import Job
from tests.fixtures.store import DEFAULT_MODEL, make_test_app, migrated_pg_database
from tests.fixtures.worker import WorkerProcess, record_fault
from tests.jobs.test_batching import enqueue, job, wait_all
from tests.jobs.test_faults import Harness, harness_for, variants_of

# Two jobs of two rows at a time; a time limit no busy machine reaches (these tests are not about limits).
CONTINUOUS = {"continuous": 1, "max_batch_rows": 4, "batch_jobs": 1, "job_time_limit": 900, "visibility_timeout": 1800}
STORY = "Tell me a long story about {}."


@pytest.fixture(scope="module")
def continuous_db():
    """A migrated database of its own: these workers' recovery loops act on every row they see."""
    yield from migrated_pg_database("instaboost_test_continuous")


@pytest.fixture
def h(continuous_db, redis_namespace, tmp_path):
    yield from harness_for(continuous_db, redis_namespace, tmp_path, tag="c")


def joined_after_a_row_left(w: WorkerProcess) -> bool:
    """Whether the worker's log shows a job joining the batch after a row of another job was stored."""
    log = w.log_tail(10**7)
    done = re.search(r"job (\d+): variant \S+ done", log)
    if done is None:
        return False
    return any(m.group(1) != done.group(1) for m in re.finditer(r"job (\d+): joins the batch", log[done.end():]))


def wait_joined_after_a_row_left(w: WorkerProcess) -> None:
    """Wait until the worker's log shows a job joining after another job's row left (its batch changed)."""
    deadline = time.monotonic() + 240
    while not joined_after_a_row_left(w):
        assert time.monotonic() < deadline and w.alive(), w.log_tail(3000)
        time.sleep(0.05)


def finish_and_record(h: Harness, ids: list[int], bodies: list[dict], fault: str, **details) -> tuple[list, list]:
    """Wait for every job to finish, record the fault's row (lost, duplicated), return (finals, counts)."""
    finals = [h.wait_finished(i, 300) for i in ids]
    counts = [h.counts(i, variants_of(body)) for i, body in zip(ids, bodies)]
    record_fault(fault, injected=1, survived=all(f.status == "succeeded" for f in finals),
                 lost=sum(c[0] for c in counts), duplicated=sum(c[1] for c in counts), **details)
    return finals, counts


def assert_continuous(w: WorkerProcess) -> None:
    """The worker decoded its fast-engine rows in the continuous decoder, never in a static step."""
    log = w.log_tail(10**7)
    assert "batch: a step of" not in log and "join the decoder" in log and "variant" in log, log[-3000:]


def test_kill_9_while_rows_join_and_leave_every_job_ends_with_one_run_per_variant(h):
    bodies = [job(f"Tell me about {t}.", n) for t, n in
              (("cats", 8), ("rain", 40), ("dragons", 16), ("the sky", 48), ("bread", 24))]
    ids = [enqueue(h, b) for b in bodies]
    w = h.worker(fault="variant:sleep=2", **CONTINUOUS)  # each step that rows join waits 2 s first
    wait_joined_after_a_row_left(w)  # rows have left and others joined: the batch changes under us
    views = [h.job(i) for i in ids]
    held = [v.id for v in views if v.status == "running" and v.worker == w.worker_id]
    assert held and not all(v.finished for v in views), views
    w.kill()
    w2 = h.worker(**CONTINUOUS)  # its recovery loop finds every job of the dead worker's batch and sends it again
    finals, counts = finish_and_record(h, ids, bodies, "kill -9 worker while rows join and leave (continuous)",
                                       jobs_held=len(held))
    for final, body in zip(finals, bodies):
        assert final.status == "succeeded" and final.error is None, final
        assert sorted(final.variants) == sorted(variants_of(body)) and final.done == final.total, final
    assert counts == [(0, 0)] * len(ids)
    assert all(h.job(i).worker == w2.worker_id for i in held)  # the held jobs were finished by the new worker
    assert_continuous(w)
    assert_continuous(w2)


def test_cancel_while_rows_join_and_leave_stops_only_that_job(h):
    # A and D are short; B and C are long. A and B start; A's rows leave and C's join; then B is cancelled,
    # its rows leave mid-decoding and D's join.
    bodies = [job("Tell me about cats.", 4), job(STORY.format("the sea"), 200), job(STORY.format("rain"), 200),
              job("Describe bread.", 4)]
    ids = [enqueue(h, b) for b in bodies]
    a, b, c, d = ids
    w = h.worker(**CONTINUOUS)
    wait_all(h, ids, lambda vs: vs[0].status == "succeeded" and vs[2].status == "running", 240,
             "had C join after A left")
    assert h.job(b).status == "running" and h.job(b).done == 0  # B decodes still
    with session_scope(h.db_url) as s:
        assert lifecycle.cancel_job(s, b).status.value in ("cancelling", "cancelled")
    cancelled = h.wait_finished(b, 120)
    others = [h.wait_finished(i, 300) for i in (a, c, d)]
    assert cancelled.status == "cancelled" and cancelled.variants == [], cancelled  # its partial rows dropped
    for view, body in zip(others, (bodies[0], bodies[2], bodies[3])):
        assert view.status == "succeeded" and sorted(view.variants) == sorted(variants_of(body)), view
        assert view.attempts == 1 and h.counts(view.id, variants_of(body)) == (0, 0)
    log = w.log_tail(10**7)
    assert f"job {d}: joins the batch" in log and f"job {c}: joins the batch" in log, log[-3000:]
    assert_continuous(w)


def test_warm_shutdown_while_rows_join_and_leave_hands_the_jobs_back_and_they_finish(h):
    bodies = [job(f"Tell me about {t}.", n) for t, n in (("cats", 8), (STORY.format("rain"), 96),
                                                         ("dragons", 16), (STORY.format("the sea"), 96))]
    ids = [enqueue(h, b) for b in bodies]
    w = h.worker(fault="variant:sleep=1", **CONTINUOUS)
    wait_joined_after_a_row_left(w)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(120) == 0, w.log_tail()
    back = [h.job(i) for i in ids]
    handed = [v for v in back if not v.finished]
    assert handed, back  # the batch was stopped with jobs still held
    assert all(v.status == "queued" for v in handed), handed  # handed back, none left running
    assert "worker stopping; job handed back to the queue" in w.log_tail(10**7)
    w2 = h.worker(**CONTINUOUS)  # the delivered job's message went back; the others are sent by its recovery loop
    finals, counts = finish_and_record(h, ids, bodies, "warm shutdown while rows join and leave (continuous)",
                                       handed_back=len(handed))
    for final, body in zip(finals, bodies):
        assert final.status == "succeeded" and sorted(final.variants) == sorted(variants_of(body)), final
    assert counts == [(0, 0)] * len(ids)
    assert all(h.job(v.id).worker == w2.worker_id and h.job(v.id).attempts == 1 for v in handed)
    assert_continuous(w2)


def test_chat_completion_overtakes_a_running_batch(h):
    # A (short) and B (long) share the batch; once A's rows left, B decodes alone with room beside it. A chat
    # sent then joins the running batch at once and its completion comes back while B still decodes.
    bodies = [job("Tell me about cats.", 4), job(STORY.format("the sea"), 256)]
    a, b = [enqueue(h, body) for body in bodies]
    w = h.worker(**CONTINUOUS)
    wait_all(h, [a, b], lambda vs: vs[0].status == "succeeded" and vs[1].status == "running", 240,
             "had A end beside a running B")
    web = make_test_app(h.db_url, h.namespace).test_client()
    resp = web.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "max_tokens": 6,
                                                  "messages": [{"role": "user", "content": "Say hi."}]})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["choices"][0]["message"]["content"]
    during = h.job(b)
    assert during.status == "running" and during.done < during.total, during  # the batch had not ended
    with session_scope(h.db_url) as s:
        chat = s.query(Job).filter(Job.id.notin_([a, b])).one()
        chat_id, chat_end = chat.id, chat.finished_at
    final = h.wait_finished(b, 300)
    with session_scope(h.db_url) as s:
        batch_end = s.get(Job, b).finished_at
    assert final.status == "succeeded" and chat_end < batch_end
    log = w.log_tail(10**7)
    assert f"job {chat_id}: joins the batch of job {a}'s delivery" in log, log[-3000:]  # it joined the running batch
    assert_continuous(w)
