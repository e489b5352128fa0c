"""The continuous runner (worker.continuous, worker.jobs.scheduler) in-process on the real model and PostgreSQL.

Its runs must be the static runner's, row for row; twins are decoded once; a cancel ends only its job. Its rows
are scored and stored beside the decoding loop (worker.jobs.storer): the scores are the static runner's, a row
whose storing fails fails its job alone, and a warm shutdown stores every row handed to the storer first.
"""

from __future__ import annotations

import pytest

from shared.errors import JobErrorCode
from shared.metrics import METRICS
from shared.settings import load_settings
from shared.store.tables import JobStatus
from tests.fixtures.store import insert_job
from tests.fixtures.store import load_job as load


TINY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?",
        "max_new_tokens": 8, "multipliers": [10], "layer_modes": ["all"]}


def new_job(url: str, **fields) -> int:
    return insert_job(url, {**TINY, **fields}, JobStatus.queued, attempts=0, enqueued=False)


@pytest.fixture
def run(pg_url):
    from worker.jobs.delivery import execute_job

    def go(job_id: int, continuous: bool, rows: int, joins: int | None = None, **kw):
        """Run job_id's delivery; with joins, that job is in its queue and the batch takes it in at once."""
        overrides = {"database.url": pg_url, "worker.max_batch_rows": rows, "worker.continuous": continuous}
        if joins is not None:
            overrides["worker.batch_wait"] = 0
            kw.update(candidates=lambda model: {joins}, advertise=lambda ids: None)
        return execute_job(job_id, "pytest@host", db_url=pg_url, settings=load_settings(overrides=overrides), **kw)

    return go


def test_continuous_runs_equal_static_runs_and_twins_decode_once(pg_url, run, monkeypatch):
    from worker.engine.continuous import ContinuousDecoder

    submitted = []
    original = ContinuousDecoder.submit
    monkeypatch.setattr(ContinuousDecoder, "submit",
                        lambda self, req, key=None, **kw: submitted.append(key) or original(self, req, key, **kw))
    fields = {"multipliers": [1, 5, 20], "layer_modes": ["all", "middle"], "max_new_tokens": 10}
    static, continuous = new_job(pg_url, **fields), new_job(pg_url, **fields)
    assert run(static, continuous=False, rows=8) == "succeeded"
    before = METRICS.snapshot()
    assert run(continuous, continuous=True, rows=3) == "succeeded"  # three slots for 5 decodes: rows wait and join
    after = METRICS.snapshot()
    (_, want), (job, got) = load(pg_url, static), load(pg_url, continuous)
    assert {r.variant: r.output_text for r in got} == {r.variant: r.output_text for r in want}
    assert {r.variant: r.output_tokens for r in got} == {r.variant: r.output_tokens for r in want}
    assert len(got) == 7 and job.progress_done == job.progress_total == 7
    assert len(submitted) == 5  # all_x1 and middle_x1 compute the original: decoded once, stored three times
    assert min(r.seconds for r in got) > 0
    # The worker's counters count rows decoded and their tokens, not row-steps (one per row and token).
    decoded = [r for r in got if not r.variant.endswith("_x1")]
    assert after["rows"] - before["rows"] == 5 and after["steps"] - before["steps"] > 5
    ended_early = sum(r.output_tokens < 10 for r in decoded)  # their EOS was decoded, not kept in output_tokens
    assert after["tokens"] - before["tokens"] == sum(r.output_tokens for r in decoded) + ended_early
    # Scored in the storer thread (perplexity runs the plain model there, beside the decoding loop): the same scores.
    want_scores = {r.variant: r.scores for r in want}
    for r in got:
        assert r.scores.keys() == want_scores[r.variant].keys()
        for name, value in r.scores.items():
            assert value == (pytest.approx(want_scores[r.variant][name], rel=1e-3)
                             if isinstance(value, float) else want_scores[r.variant][name]), (r.variant, name)
    assert all(r.scores["perplexity"] is not None for r in got)


def test_a_cancel_while_rows_join_and_leave_stops_only_its_job(pg_url, run, monkeypatch):
    """Job A's delivery takes B into its batch (a candidate in its queue); B is cancelled mid-decoding (as the web
    does, cancelling); A's rows go on and are stored, B ends cancelled with none of its partial rows stored."""
    from shared.db import session_scope
    from shared.store import lifecycle
    from worker.engine.continuous import ContinuousDecoder

    a = new_job(pg_url, multipliers=[5, 20], max_new_tokens=12)
    b = new_job(pg_url, multipliers=[3, 9], max_new_tokens=40, query="Tell me a long story about Rome.")
    steps = []
    original = ContinuousDecoder.step

    def step(self):
        steps.append(len(self.rows))
        if len(steps) == 4:
            with session_scope(pg_url) as s:
                lifecycle.cancel_job(s, b)  # running -> cancelling: the runner finishes it at its next check
        return original(self)

    monkeypatch.setattr(ContinuousDecoder, "step", step)
    status = run(a, continuous=True, rows=8, joins=b)
    assert status == "succeeded"
    (job_a, runs_a), (job_b, runs_b) = load(pg_url, a), load(pg_url, b)
    assert job_b.status is JobStatus.cancelled and len(runs_a) == 3
    assert all(r.output_tokens < 40 for r in runs_b)  # none of B's rows ran to its end
    assert max(steps) == 6  # both jobs' rows shared the steps


def test_a_storer_error_fails_only_its_job(pg_url, run, fault):
    """The first row the storer records raises (A's: its rows end first); A fails with that error, B is untouched."""

    a = new_job(pg_url, multipliers=[5, 20], max_new_tokens=3)
    b = new_job(pg_url, multipliers=[3], max_new_tokens=16, query="Tell me a long story about Rome.")
    fault("store:error:1")
    status = run(a, continuous=True, rows=8, joins=b)
    assert status == "failed"
    (job_a, runs_a), (job_b, runs_b) = load(pg_url, a), load(pg_url, b)
    assert job_a.error_code == JobErrorCode.worker_error and "injected error at store" in job_a.error
    assert job_b.status is JobStatus.succeeded and len(runs_b) == job_b.progress_done == 2
    assert runs_a == []  # the failed row (its first) and the rows after it are not stored


def test_a_warm_shutdown_stores_every_row_handed_to_the_storer_before_handing_back(pg_url, run, fault,
                                                                                   monkeypatch):
    """A's rows end and wait in a slow storer while B decodes; the worker is asked to stop: the storer stores all
    of A's rows (A succeeds), then B, whose rows were still decoding, is handed back with nothing stored."""
    from worker.engine.continuous import ContinuousDecoder
    from worker.jobs.endings import ShutdownRequested

    a = new_job(pg_url, multipliers=[5, 20], max_new_tokens=3)
    b = new_job(pg_url, multipliers=[3], max_new_tokens=64, query="Tell me a long story about Rome.")
    fault("store:sleep=0.5")  # every row: A's three take 1.5 s to store, far more than the steps to the stop
    steps, finished = [], []
    original = ContinuousDecoder.step

    def step(self):
        out = original(self)
        steps.append(len(self.rows))
        finished.extend(key for key, _ in out)
        return out

    monkeypatch.setattr(ContinuousDecoder, "step", step)
    # A's decodes (the original and x20; x5... all ended) are handed over; stop two steps later, B still decoding.
    stop = lambda: len(finished) >= 3 and len(steps) >= 6  # noqa: E731
    with pytest.raises(ShutdownRequested):
        run(a, continuous=True, rows=8, joins=b, should_stop=stop)
    (job_a, runs_a), (job_b, runs_b) = load(pg_url, a), load(pg_url, b)
    assert job_a.status is JobStatus.succeeded and len(runs_a) == 3  # drained: nothing handed over was lost
    assert job_b.status is JobStatus.queued and runs_b == []  # handed back: its next delivery decodes it


def test_rows_that_end_in_the_same_step_are_scored_in_one_pass(pg_url, run, monkeypatch):
    from worker.jobs import storer

    scored = []
    original = storer.score_rows
    monkeypatch.setattr(storer, "score_rows", lambda engine, kinds, *a: scored.append(len(kinds)) or
                        original(engine, kinds, *a))
    job = new_job(pg_url, multipliers=[2, 4], max_new_tokens=6, query="Tell me a long story about Rome.")
    assert run(job, continuous=True, rows=8) == "succeeded"
    _, runs = load(pg_url, job)
    assert [r.output_tokens for r in runs] == [6, 6, 6]  # the three rows joined together and ended together
    assert scored == [3]  # one scoring call (one perplexity pass) for the step's three rows, not one per row
    assert all(r.scores and r.scores.get("perplexity") for r in runs)
