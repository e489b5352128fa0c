"""The web server as deployed: one gunicorn.conf.py for compose, the Docker image and `instaboost serve`.

The running tests start gunicorn exactly as `instaboost serve` does (worker.cli.serve._gunicorn_command, so
with gunicorn.conf.py) on a database of their own, with a heartbeat advertising the model and no worker:
chat completions wait for jobs nobody runs, as they would behind a busy queue.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from shared.chat import CHAT_VARIANT
from shared.db import session_scope
from shared.store import lifecycle
from shared.store.tables import Job, JobStatus
from tests.fixtures.store import DEFAULT_MODEL, TEST_REDIS_URL, live_heartbeat, migrated_pg_database
from tests.fixtures.worker import purge_namespace
from worker.cli.serve import _gunicorn_command

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "What is the capital of Italy?"}],
        "max_tokens": 4}
THREADS = 4  # per process; 2 stay for requests that do not wait: 2 waiting completions at once


def gunicorn_settings(**env: str) -> dict[str, str]:
    """Return what gunicorn makes of gunicorn.conf.py under env (its --print-config), name -> value."""
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--print-config"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return dict(re.findall(r"^(\w+)\s+= (.*)$", proc.stdout, re.M))


def test_compose_the_image_and_serve_start_gunicorn_with_the_one_config():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["web"]["command"][:3] == ["gunicorn", "-c", "gunicorn.conf.py"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    web_stage = dockerfile.split("AS web\n", 1)[1].split("\nFROM ", 1)[0]
    assert re.search(r'^CMD \["gunicorn", "-c", "gunicorn.conf.py"', web_stage, re.M)
    assert re.search(r"^COPY .*\bgunicorn\.conf\.py\b.* \./$", dockerfile, re.M)  # into /app, the workdir
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()[:1] not in ("", "#")]
    assert not [p for p in ignored if fnmatch.fnmatch("gunicorn.conf.py", p.lstrip("/"))]
    cmd = _gunicorn_command("127.0.0.1", 8123, None)
    assert cmd[cmd.index("-c") + 1] == str(ROOT / "gunicorn.conf.py") and "--workers" not in cmd
    assert "--workers" in _gunicorn_command("127.0.0.1", 8123, 3)


def test_the_config_takes_its_numbers_from_the_settings():
    default = gunicorn_settings()
    assert (default["worker_class"], default["wsgi_app"]) == ("gthread", "web:create_app()")
    assert (default["workers"], default["threads"], default["timeout"], default["graceful_timeout"]) == \
        ("2", "16", "60", "20")
    tuned = gunicorn_settings(INSTABOOST_WEB_WORKERS="3", INSTABOOST_WEB_THREADS="9", INSTABOOST_WEB_TIMEOUT="45",
                              INSTABOOST_WEB_GRACEFUL_TIMEOUT="12")
    assert (tuned["workers"], tuned["threads"], tuned["timeout"], tuned["graceful_timeout"]) == ("3", "9", "45", "12")
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--check-config"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "INSTABOOST_WEB_THREADS": "2"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "instaboost: error: web.threads must be at least 3" in proc.stderr and "Traceback" not in proc.stderr


# -- a running server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_server(redis_namespace, tmp_path_factory):
    """(port, database URL, gunicorn process) of the app under gunicorn.conf.py: 1 process of THREADS threads."""
    namespace = f"{redis_namespace}_web"
    tmp = tmp_path_factory.mktemp("web")
    port = _free_port()
    db = migrated_pg_database()
    url = next(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTABOOST_")}
    env.update(DATABASE_URL=url, REDIS_URL=TEST_REDIS_URL, INSTABOOST_REDIS_NAMESPACE=namespace,
               INSTABOOST_WEB_SECRET_KEY="k" * 32, INSTABOOST_WEB_WORKERS="1", INSTABOOST_WEB_THREADS=str(THREADS),
               INSTABOOST_V1_WAIT_SECONDS="300", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    log = open(tmp / "gunicorn.log", "w+")
    proc = subprocess.Popen(_gunicorn_command("127.0.0.1", port, None), cwd=tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        with live_heartbeat(namespace, "web-test-worker", [DEFAULT_MODEL]):
            deadline = time.monotonic() + 120
            while request(port, "GET", "/healthz", timeout=10)[0] != 200:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp / "gunicorn.log").read_text()
                time.sleep(0.3)
            yield port, url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        purge_namespace(namespace)
        db.close()  # drops the database


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: dict | None = None, timeout: float = 120,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Send one request over a fresh connection; (status, lower-cased headers, body), or (0, {}, b"") if refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except ConnectionRefusedError:
        return 0, {}, b""
    finally:
        conn.close()


def job_rows(url: str) -> list[tuple[int, JobStatus]]:
    with session_scope(url) as s:
        return [(j.id, j.status) for j in s.execute(select(Job).order_by(Job.id)).scalars()]


def wait_for(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def cancel_all(port: int, url: str) -> None:
    for job_id, status in job_rows(url):
        if not status.finished:
            request(port, "POST", f"/api/jobs/{job_id}/cancel", {})


@pytest.mark.services
@pytest.mark.slow
def test_waiting_completions_never_stop_the_app_answering(web_server):
    port, url, _ = web_server
    before = {j for j, _ in job_rows(url)}
    answers: list[tuple[int, dict, bytes]] = []
    waiting = [threading.Thread(target=lambda: answers.append(request(port, "POST", "/v1/chat/completions", BODY)))
               for _ in range(THREADS - 2)]
    for t in waiting:
        t.start()
    try:
        new = wait_for(lambda: [j for j, s in job_rows(url) if j not in before and s is JobStatus.queued]
                       if len(job_rows(url)) - len(before) == len(waiting) else None, "the completions' jobs")
        # Every waiting slot is held: the app still answers at once, and a further completion is refused
        # (429, OpenAI-shaped, retryable) before any job is made, rather than holding the last threads.
        status, _, _ = request(port, "GET", "/healthz", timeout=60)
        assert status == 200 and all(t.is_alive() for t in waiting) and not answers
        status, headers, body = request(port, "POST", "/v1/chat/completions", BODY, timeout=60)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"]["type"] == "rate_limit_error"
        assert request(port, "GET", "/api/jobs?limit=5", timeout=60)[0] == 200
        assert all(t.is_alive() for t in waiting) and not answers
        assert len(job_rows(url)) == len(before) + len(waiting)
    finally:
        cancel_all(port, url)
        for t in waiting:
            t.join(120)
    # A cancelled job ends each wait with OpenAI's error shape, not an HTML page, and tells the SDK not to retry.
    assert sorted(json.loads(b)["error"]["code"] for _, _, b in answers) == ["cancelled"] * len(waiting)
    assert {(s, h["x-should-retry"]) for s, h, _ in answers} == {(409, "false")}
    assert {j for j, s in job_rows(url) if s is JobStatus.cancelled} >= set(new)


@pytest.mark.services
@pytest.mark.slow
def test_a_client_that_leaves_a_stream_cancels_its_job(web_server):
    port, url, _ = web_server
    before = {j for j, _ in job_rows(url)}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**BODY, "stream": True}),
                 headers={"Content-Type": "application/json"})
    sock = conn.sock
    resp = conn.getresponse()
    assert resp.status == 200
    job_id = int(resp.getheader("X-InstaBoost-Job-Id"))
    assert job_id not in before
    assert resp.readline().startswith(b"data: ")  # the role chunk: the stream is open
    assert job_rows(url)[-1] == (job_id, JobStatus.queued)
    sock.shutdown(socket.SHUT_RDWR)  # the client goes away while the job still waits for a worker
    resp.close()
    conn.close()
    wait_for(lambda: dict(job_rows(url))[job_id] is JobStatus.cancelled, "the abandoned stream's job cancelled")


@pytest.mark.services
@pytest.mark.slow
def test_the_openai_sdk_retrying_after_a_dropped_connection_gets_its_first_job(web_server):
    """The web process dies under a waiting completion; the SDK retries (no Idempotency-Key); still one job."""
    openai = pytest.importorskip("openai")

    port, url, proc = web_server
    before = {j for j, _ in job_rows(url)}
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any", max_retries=3, timeout=300)
    result: list = []

    def call():
        try:
            result.append(client.chat.completions.create(**BODY))
        except Exception as exc:  # reported by the assertions below
            result.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    try:
        job_id, = wait_for(lambda: [j for j, _ in job_rows(url) if j not in before], "the completion's job")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for pid in children:  # gunicorn's web process: the client's connection drops, the master starts another
            os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: request(port, "GET", "/healthz", timeout=10)[0] == 200, "a new web process")
        with session_scope(url) as s:  # the worker's part: run the job and store its answer
            lifecycle.mark_running(s, job_id, "web-test-worker")
            lifecycle.record_run(s, job_id, CHAT_VARIANT, multiplier=1.0, layers="none", output_text="Rome.",
                                 prompt_tokens=9, output_tokens=2, finish_reason="stop")
            lifecycle.mark_succeeded(s, job_id)
        thread.join(300)
    finally:
        cancel_all(port, url)
    assert not isinstance(result[0], Exception), repr(result[0])
    assert result[0].id == str(job_id) and result[0].choices[0].message.content == "Rome."
    assert [j for j, _ in job_rows(url) if j not in before] == [job_id]  # the retry made no second job
