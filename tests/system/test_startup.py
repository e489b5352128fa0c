"""The startup race (issue 9): a job submitted while the worker is still loading its model is accepted and runs.

A real worker subprocess announces the models it is loading before it loads them; meanwhile /readyz says
what is missing, /api/models and the form say "starting", and submissions for those models queue.
"""

from __future__ import annotations

import re
import time

from tests.fixtures.store import DEFAULT_MODEL, make_test_app
from tests.fixtures.worker import WorkerProcess, purge_namespace

TINY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 2,
        "multipliers": [10], "layer_modes": ["all"]}


def wait_until(predicate, timeout: float = 180, what: str = "", poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(poll)


def test_jobs_submitted_while_the_worker_loads_are_accepted_and_run(pg_url, redis_namespace, tmp_path):
    namespace = f"{redis_namespace}_startup"
    app = make_test_app(pg_url, namespace)
    client = app.test_client()
    # Nothing runs yet: not ready, and a submit is refused with the reason; with no heartbeat at all that may be
    # transient (workers starting, Redis just restarted), so it is a 503 to retry, not a bad request.
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "no worker" in ready.get_json()["model"]
    refused = client.post("/api/jobs", json=TINY)
    assert refused.status_code == 503 and refused.headers["Retry-After"], refused.get_json()

    worker = WorkerProcess(pg_url, namespace, tmp_path / "worker.log").spawn()
    try:
        beat = wait_until(lambda: worker.heartbeat() or (not worker.alive() and worker.log_tail()),
                          what="the worker's first heartbeat")
        assert isinstance(beat, dict), beat
        # Its first heartbeat comes before the model is loaded, and says so.
        assert beat["models"] == [] and beat["starting"] == [DEFAULT_MODEL], beat

        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["status"] == "starting", ready.get_json()
        assert "starting" in ready.get_json()["model"]
        models = client.get("/api/models").get_json()
        assert models["models"] == [{"name": DEFAULT_MODEL, "workers": 0, "starting": 1, "status": "starting",
                                     "recommended": False}]
        page = client.get("/").get_data(as_text=True)
        assert 'id="workers-warning"' in page and "starting" in page
        api_job = client.post("/api/jobs", json=TINY)
        assert api_job.status_code == 202, api_job.get_json()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        form_job = client.post("/", data={"csrf_token": csrf, **{k: str(v[0]) if isinstance(v, list) else str(v)
                                                                for k, v in TINY.items()}})
        assert form_job.status_code == 303, form_job.get_data(as_text=True)[:2000]
        # The submissions really happened while it was loading (loading takes seconds; these took milliseconds).
        assert worker.heartbeat()["models"] == [], "the worker finished loading before the test submitted"
        # A model nobody serves or loads is still refused.
        other = client.post("/api/jobs", json={**TINY, "model": "some-other-model"})
        assert other.status_code == 422 and "starting" in other.get_json()["detail"]

        worker.wait_ready(180)
        assert client.get("/readyz").status_code == 200
        job_ids = [api_job.get_json()["id"], int(form_job.headers["Location"].rsplit("/", 1)[1])]
        for job_id in job_ids:
            body = wait_until(lambda: (b := client.get(f"/api/jobs/{job_id}").get_json())["finished"] and b,
                              what=f"job {job_id} to finish", poll=0.3)
            assert body["status"] == "succeeded" and len(body["runs"]) == 2, body
    finally:
        worker.stop()
        purge_namespace(namespace)
