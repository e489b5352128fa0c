"""The job task body, in-process on the real model and PostgreSQL: resume, poison, time limit, cancel.

Plus the Celery configuration and heartbeats against the real Redis.
"""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import update

from shared.celery_config import celery_config, model_queue, soft_time_limit
from shared.db import session_scope
from shared.errors import ValidationError
from shared.settings import load_settings
from shared.store import lifecycle
from tests.fixtures.store import insert_job
from tests.fixtures.store import load_job as load
from shared.store.tables import Job, JobStatus, Run
from shared.worker_registry import live_workers, served_models
from tests.fixtures.store import DEFAULT_MODEL, TEST_REDIS_URL

TINY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?",
        "max_new_tokens": 8, "multipliers": [10], "layer_modes": ["all"]}


def new_job(url: str, status: JobStatus = JobStatus.queued, attempts: int = 0, **fields) -> int:
    return insert_job(url, {**TINY, **fields}, status, attempts=attempts, enqueued=False)


# The guarantees of a delivery (shutdown, resume, time limit, cancel) hold for both batch runners: such tests
# run once per runner. The others pin the static runner (worker.continuous: false), whose steps they count;
# the continuous runner's own mechanics are tested in test_continuous_runner.py.
RUNNERS = pytest.mark.parametrize("continuous", [False, True], ids=["static", "continuous"])


@pytest.fixture
def continuous() -> bool:
    """The runner `run` uses unless a test is parametrized with RUNNERS: the static one."""
    return False


@pytest.fixture
def run(pg_url, continuous):
    """Run one delivery of a job in this process, as the Celery task does."""
    from worker.jobs.delivery import execute_job

    def go(job_id: int, **kw):
        # One row at a time: the boundaries these tests act at (cancel, shutdown, take-over) fall between
        # variants. Batched steps are tested in test_batching.py.
        kw.setdefault("settings", settings_for(pg_url, continuous, **{"worker.max_batch_rows": 1}))
        return execute_job(job_id, "pytest@host", db_url=pg_url, **kw)

    return go


def settings_for(pg_url: str, continuous: bool, **overrides):
    return load_settings(overrides={"database.url": pg_url, "worker.continuous": continuous, **overrides})




@pytest.mark.slow
@RUNNERS
def test_shutdown_hands_job_back_and_redelivery_resumes_without_duplicates(pg_url, run, continuous):
    from worker.jobs.endings import ShutdownRequested

    # Four rows, decoded one at a time; the stop is asked once the first run is stored (an event: the continuous
    # runner asks at every decoding step, the static one before each step). The static runner stops right after
    # that step. The continuous one stores beside decoding (a storer thread whose queue holds one item here), so
    # by the time it sees the stored run it may have decoded up to two more rows, which it stores before handing
    # the job back; the fourth row has not been decoded: the job goes back to the queue.
    job_id = new_job(pg_url, multipliers=[2, 5, 10])
    variants = ["original", "all_x2", "all_x5", "all_x10"]

    def stop_once_a_run_is_stored() -> bool:
        return bool(load(pg_url, job_id)[1])

    with pytest.raises(ShutdownRequested):
        run(job_id, should_stop=stop_once_a_run_is_stored)
    job, runs = load(pg_url, job_id)
    assert job.status is JobStatus.queued and job.attempts == 0  # a clean stop is not a failed attempt
    stored = [r.variant for r in runs]
    assert stored == variants[:len(stored)] and 1 <= len(stored) <= (3 if continuous else 1), stored
    assert job.progress_done == len(stored)
    first = [(r.id, r.output_text) for r in runs]

    assert run(job_id) == "succeeded"
    job, runs = load(pg_url, job_id)
    assert [r.variant for r in runs] == variants
    assert [(r.id, r.output_text) for r in runs[:len(first)]] == first  # resumed, not regenerated
    assert job.attempts == 1 and job.progress_done == job.progress_total == 4 and job.error is None

    # A duplicate delivery of a finished job changes nothing.
    assert run(job_id) == "skipped"
    assert [r.id for r in load(pg_url, job_id)[1]] == [r.id for r in runs]


@pytest.mark.slow
@RUNNERS
def test_job_left_running_by_a_dead_worker_resumes(pg_url, run):
    job_id = new_job(pg_url)
    assert run(job_id) == "succeeded"
    job, runs = load(pg_url, job_id)
    # Pretend the worker died after the first variant: its second run is lost, the row says running.
    with session_scope(pg_url) as s:
        s.execute(Run.__table__.delete().where(Run.id == runs[1].id))
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.running, progress_done=1))
    assert run(job_id) == "succeeded"
    job, again = load(pg_url, job_id)
    assert [r.variant for r in again] == ["original", "all_x10"] and again[0].id == runs[0].id
    assert job.attempts == 2
    assert again[1].output_text == runs[1].output_text  # greedy: the regenerated variant is the same


def test_poison_job_is_failed_without_running(pg_url, run):
    job_id = new_job(pg_url, status=JobStatus.running, attempts=3)  # max_attempts defaults to 3
    assert run(job_id) == "failed"
    job, runs = load(pg_url, job_id)
    assert job.status is JobStatus.failed and job.attempts == 4 and runs == []
    assert "poison" in job.error and "max_attempts=3" in job.error


@pytest.mark.slow
@RUNNERS
def test_time_limit_fails_the_job_and_the_worker_stays_usable(pg_url, run, monkeypatch, continuous):
    from worker.jobs import faults

    settings = settings_for(pg_url, continuous, **{"worker.job_time_limit": 2, "worker.visibility_timeout": 10})
    assert soft_time_limit(2) == 1
    # The first variant hangs (in Python) for up to 60 s, whatever the machine's speed: the 1 s soft limit
    # must end it. Without the limit the job would succeed after the hang.
    faults.reset()
    monkeypatch.setenv(faults.ENV, "variant:hang_py:1")
    job_id = new_job(pg_url, multipliers=[2, 10], layer_modes=["all", "middle"])
    assert run(job_id, settings=settings) == "failed"
    job, runs = load(pg_url, job_id)
    assert "time limit" in job.error and "worker.job_time_limit=2" in job.error
    assert runs == []

    monkeypatch.delenv(faults.ENV)
    small = new_job(pg_url)
    assert run(small) == "succeeded"


@pytest.mark.slow
@RUNNERS
def test_cancel_is_honoured_at_the_next_variant_boundary(pg_url, run):
    job_id = new_job(pg_url, multipliers=[2, 10])

    def cancel_during_first_variant() -> bool:
        with session_scope(pg_url) as s:
            if lifecycle.job_status(s, job_id) is JobStatus.running:
                assert lifecycle.cancel_job(s, job_id).status is JobStatus.cancelling
        return False

    assert run(job_id, should_stop=cancel_during_first_variant) == "cancelled"
    job, runs = load(pg_url, job_id)
    assert job.status is JobStatus.cancelled and job.finished_at is not None
    # The first variant either stopped at its next token (the step's watch saw the cancel) or finished
    # first; no later variant ran.
    assert [r.variant for r in runs] in ([], ["original"])


@pytest.mark.slow
def test_engine_error_fails_the_job_with_the_engines_message_before_any_compute(pg_url, run):
    job_id = new_job(pg_url, start_layer=40, layer_modes=["middle"])  # SmolLM2 has 30 layers
    assert run(job_id) == "failed"
    job, runs = load(pg_url, job_id)
    assert "start_layer 40 is out of range" in job.error and "30 layers" in job.error
    # Every variant's prompt and boost is checked when the job is taken: nothing is generated for a job
    # that cannot complete, and in a batch of several jobs the others never share a step with it.
    assert runs == []


def test_missing_job_is_skipped(pg_url, run):
    assert run(987654321) == "skipped"


# -- configuration and heartbeats --------------------------------------------------------------------

def test_model_queues_are_distinct_and_broker_safe():
    assert model_queue("smollm2-135m-instruct") == "models.smollm2-135m-instruct"
    a, b = model_queue("org/model"), model_queue("org_model")
    assert a != b and a.startswith("models.org_model-")
    assert all(c.isalnum() or c in "._-" for c in model_queue("/models/my model.gguf"))


def test_celery_config_reliability_settings():
    conf = celery_config(load_settings(overrides={"worker.job_time_limit": 600, "worker.visibility_timeout": 900,
                                                  "redis.namespace": "ns1"}))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["task_ignore_result"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_time_limit"] == 600 and conf["task_soft_time_limit"] == 540
    assert conf["broker_transport_options"] == {"visibility_timeout": 900, "global_keyprefix": "ns1:",
                                                "priority_steps": [0, 3, 6, 9]}
    with pytest.raises(ValidationError) as err:
        celery_config(load_settings(overrides={"worker.job_time_limit": 600, "worker.visibility_timeout": 600}))
    assert err.value.field == "worker.visibility_timeout"


def test_heartbeat_is_written_with_ttl_and_removed_on_stop(redis_client, redis_namespace):
    from worker.jobs.heartbeat import Heartbeat

    beat = Heartbeat("hb-test@host", ["m1", "m2"], TEST_REDIS_URL, redis_namespace,
                     interval=0.2, ttl=5).start()
    try:
        key = f"{redis_namespace}:worker:hb-test@host"
        body = json.loads(redis_client.get(key))
        assert body["models"] == ["m1", "m2"] and body["hostname"] == "hb-test@host"
        assert {"pid", "started_at", "seen_at"} <= body.keys()
        assert {"jobs", "rows", "tokens", "step_rows", "ttft"} <= body["metrics"].keys()  # for /metrics
        assert 0 < redis_client.ttl(key) <= 5
        redis_client.persist(key)  # drop the TTL: only the thread's next refresh sets one again
        deadline = time.monotonic() + 60
        while redis_client.ttl(key) == -1:  # wait for the thread's refresh (-1: no TTL, -2: gone)
            assert time.monotonic() < deadline, "the heartbeat was never refreshed"
            time.sleep(0.05)
        assert redis_client.ttl(key) > 1
        assert {"m1", "m2"} <= served_models(redis_client, redis_namespace)
    finally:
        beat.stop()
    assert redis_client.get(key) is None
    assert all(w["hostname"] != "hb-test@host" for w in live_workers(redis_client, redis_namespace))


def test_live_workers_ignores_malformed_heartbeats(redis_client, redis_namespace):
    key = f"{redis_namespace}:worker:garbage"
    redis_client.set(key, "not json", ex=5)
    try:
        assert all(w.get("hostname") != "garbage" for w in live_workers(redis_client, redis_namespace))
    finally:
        redis_client.delete(key)


@pytest.mark.slow
def test_worker_process_advertises_its_models(celery_worker):
    beat = celery_worker.heartbeat()
    assert beat["models"] == ["smollm2-135m-instruct"] and beat["pid"] == celery_worker.proc.pid


def test_worker_with_an_unloadable_model_exits_with_the_reason(pg_url, redis_namespace, tmp_path):
    from tests.fixtures.worker import WorkerProcess

    worker = WorkerProcess(pg_url, f"{redis_namespace}_bad", tmp_path / "bad.log", models=("no-such-model",))
    with pytest.raises(RuntimeError, match="worker exited with 3"):
        worker.start(timeout=60)
    assert "cannot load model 'no-such-model'" in worker.log_tail()
    assert worker.heartbeat() is None


@pytest.mark.slow
def test_batched_variants_store_the_same_runs_as_one_by_one(pg_url, run):
    fields = {"multipliers": [5, 20], "layer_modes": ["all", "middle"], "max_new_tokens": 8}
    one, batched = new_job(pg_url, **fields), new_job(pg_url, **fields)
    assert run(one) == "succeeded"
    # Static steps of five rows (the continuous runner against the static one: test_continuous_runner.py).
    settings = settings_for(pg_url, False, **{"worker.max_batch_rows": 5})
    assert run(batched, settings=settings) == "succeeded"
    (_, runs_one), (job, runs_batched) = load(pg_url, one), load(pg_url, batched)
    assert len(runs_batched) == 5 and job.progress_done == 5
    assert {r.variant: r.output_text for r in runs_batched} == {r.variant: r.output_text for r in runs_one}
    # Each row reports the time to its own last token (issue 10), not the batch's wall time.
    costs = [r.seconds for r in runs_batched]
    assert min(costs) > 0


def test_a_failure_the_worker_raises_stores_its_code_for_v1_to_answer(pg_url, run):
    """The worker stores a failed job's code where it raises the error (jobs.error_code); /v1 answers by the code."""
    from shared.chat import chat_params
    from web.v1_errors import job_failure

    settings = load_settings(overrides={"database.url": pg_url})
    params = chat_params({"model": settings.model.name, "messages": [{"role": "user", "content": "Hi"}],
                          "max_tokens": 4}, settings)
    params["max_new_tokens"] = 10**6  # past the model's context: the worker's engine refuses it
    with session_scope(pg_url) as s:
        job = Job(status=JobStatus.queued, model=params["model"], params=params, kind="chat")
        s.add(job)
        s.flush()
        chat_id = job.id
    boost_id = new_job(pg_url, layer_modes=["middle"], start_layer=99)  # past the model's layers
    assert run(chat_id) == "failed" and run(boost_id) == "failed"
    job, boosted = load(pg_url, chat_id)[0], load(pg_url, boost_id)[0]
    assert (job.error_code, boosted.error_code) == ("context_length_exceeded", "out_of_range")
    assert "exceeds the model's context" in job.error and "out of range" in boosted.error
    body = json.loads(job_failure(job).get_data())["error"]
    assert (body["code"], body["param"]) == ("context_length_exceeded", "messages")
    assert json.loads(job_failure(boosted).get_data())["error"]["code"] == "invalid_value"


def test_a_poison_job_and_an_internal_error_store_their_codes(pg_url, run):
    poison = new_job(pg_url, status=JobStatus.running, attempts=3)
    assert run(poison) == "failed"
    assert load(pg_url, poison)[0].error_code == "poison"
    with session_scope(pg_url) as s:  # stored params the worker cannot read: an internal error, answered 500
        bad = Job(status=JobStatus.queued, model="smollm2-135m-instruct", params={"kind": "chat"}, kind="chat")
        s.add(bad)
        s.flush()
        bad_id = bad.id
    assert run(bad_id) == "failed"
    job = load(pg_url, bad_id)[0]
    assert job.error_code == "worker_error" and job.error.startswith("internal error in the worker")


@pytest.fixture
def decoded(monkeypatch):
    """Count the rows the engine decodes (its generate calls' requests), on the real engine."""
    from worker.engine import get_engine

    engine, counts = get_engine(DEFAULT_MODEL), []
    generate = engine.generate

    def counting(requests, **kw):
        counts.append(len(requests))
        return generate(requests, **kw)

    monkeypatch.setattr(engine, "generate", counting)
    return counts


def test_rows_of_a_job_that_compute_the_same_are_decoded_once_and_stored_under_each_name(pg_url, run, decoded):
    from shared.completions import completion_params

    # The static runner's generate() calls are counted; the continuous runner's twins: test_continuous_runner.py.
    settings = settings_for(pg_url, False)
    job_id = new_job(pg_url, multipliers=[1, 10], layer_modes=["all", "middle"])  # M = 1: the original twice more
    assert run(job_id, settings=settings) == "succeeded"
    job, runs = load(pg_url, job_id)
    by_name = {r.variant: r for r in runs}
    assert sorted(by_name) == ["all_x1", "all_x10", "middle_x1", "middle_x10", "original"]
    assert sum(decoded) == 3 and job.progress_done == job.progress_total == 5
    assert by_name["all_x1"].output_text == by_name["middle_x1"].output_text == by_name["original"].output_text
    assert (by_name["middle_x1"].multiplier, by_name["middle_x1"].layers) == (1.0, "middle")  # stored as itself
    assert by_name["original"].layers == "none" and by_name["original"].heads is None

    decoded.clear()  # a completion with the same prompt listed twice: one decode, two choices
    params = completion_params({"model": DEFAULT_MODEL, "prompt": ["Paris is", "Paris is"], "max_tokens": 4},
                               settings)
    with session_scope(pg_url) as s:
        job = Job(status=JobStatus.queued, model=DEFAULT_MODEL, params=params, kind="completion")
        s.add(job)
        s.flush()
        completion_id = job.id
    assert run(completion_id, settings=settings) == "succeeded"
    runs = load(pg_url, completion_id)[1]
    assert [r.variant for r in runs] == ["p0", "p1"] and runs[0].output_text == runs[1].output_text
    assert sum(decoded) == 1
