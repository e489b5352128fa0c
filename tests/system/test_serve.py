"""`instaboost serve`: one command runs migrations, the web app and a worker, and stops them cleanly."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
from contextlib import contextmanager
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.store import TEST_REDIS_URL
from tests.fixtures.worker import purge_namespace

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTABOOST_") and k != "DATABASE_URL"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def test_serve_without_redis_says_what_is_missing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "worker.cli.serve", "--port", str(free_port())], cwd=tmp_path,
                          env=serve_env(REDIS_URL="redis://127.0.0.1:1/0"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in proc.stderr and "REDIS_URL" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "instaboost.db").exists()  # nothing half-done


@pytest.mark.slow
@pytest.mark.services
@contextmanager
def running_serve(tmp_path, port: int, namespace: str, log, **env):
    """Run `instaboost serve` on port in namespace; yield (process, Redis client); always clean up after."""
    from shared.worker_registry import redis_client

    proc = subprocess.Popen([sys.executable, "-m", "worker.cli.serve", "--port", str(port)], cwd=tmp_path,
                            env=serve_env(REDIS_URL=TEST_REDIS_URL, INSTABOOST_REDIS_NAMESPACE=namespace, **env),
                            stdout=subprocess.PIPE, stderr=log, text=True)
    redis = redis_client(TEST_REDIS_URL)
    try:
        yield proc, redis
    finally:
        if proc.poll() is None:
            proc.terminate()  # serve stops its children (their own sessions: a SIGKILL to serve would orphan them)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        redis.close()
        purge_namespace(namespace)


def test_serve_runs_web_and_worker_and_stops_cleanly(tmp_path, redis_namespace):
    from shared.worker_registry import live_workers

    namespace = f"{redis_namespace}_serve"
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    with running_serve(tmp_path, port, namespace, log) as (proc, redis):
        line = proc.stdout.readline()
        assert f"running at http://127.0.0.1:{port}/" in line, open(tmp_path / "serve.log").read()
        deadline = time.monotonic() + 120
        while not live_workers(redis, namespace):
            assert time.monotonic() < deadline and proc.poll() is None, open(tmp_path / "serve.log").read()
            time.sleep(0.3)
        assert (tmp_path / "instaboost.db").is_file()  # the default store, migrated

        base = f"http://127.0.0.1:{port}"
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        job_ids = []
        for _ in range(2):  # two gunicorn workers: the form's CSRF token must be valid at either
            page = browser.open(base + "/").read().decode()
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            form = urllib.parse.urlencode({"csrf_token": token, "instruction": "Answer only in French.",
                                           "query": "What is the capital of Italy?", "multipliers": "10",
                                           "layer_modes": "all", "max_new_tokens": "8"}).encode()
            resp = browser.open(base + "/", data=form)
            job_ids.append(int(re.search(r"/jobs/(\d+)$", resp.geturl()).group(1)))
        for job_id in job_ids:
            while True:
                body = json.loads(urllib.request.urlopen(f"{base}/api/jobs/{job_id}").read())
                if body["finished"]:
                    break
                assert time.monotonic() < deadline, body
                time.sleep(0.3)
            assert body["status"] == "succeeded" and len(body["runs"]) == 2

        # The OpenAI-compatible API through gunicorn's threads: a streamed completion, with a boost.
        import openai

        client = openai.OpenAI(base_url=base + "/v1", api_key="any", max_retries=0, timeout=120)
        chunks = list(client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
            stream=True, extra_body={"instaboost": {"multiplier": 5}}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
        assert chunks[-1].usage.completion_tokens >= 1

        # An impatient user: Ctrl-C, then Ctrl-C again while it is stopping. Still a clean stop.
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(40) == 0
        log.seek(0)
        assert "Traceback" not in log.read()
        assert live_workers(redis, namespace) == []  # the worker removed its heartbeat
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- a worker that dies is restarted, like compose's restart: unless-stopped ---------------------------

FAST_WORKER = {"INSTABOOST_WORKER_HEARTBEAT_INTERVAL": "0.5", "INSTABOOST_WORKER_HEARTBEAT_TTL": "3",
               "INSTABOOST_SWEEPER_INTERVAL": "0.5", "INSTABOOST_SWEEPER_OUTBOX_GRACE": "2",
               "INSTABOOST_SWEEPER_LOST_AFTER": "2"}


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def _wait(what: str, predicate, log_path: Path, proc: subprocess.Popen, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"serve exited while waiting for {what}:\n{log_path.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"never saw {what}:\n{log_path.read_text()[-4000:]}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.services
def test_serve_restarts_a_killed_worker_and_the_job_resumes(tmp_path, redis_namespace):
    """Issue 9: kill -9 of the worker under `instaboost serve` took the web app down and the job never resumed.

    Issue 18: the job then waited for the dead worker's heartbeat to expire before it was sent again. The
    heartbeat here lives 900 s, far past this test's waits: only the restarted worker's takeover can hand it back.
    """
    from shared.worker_registry import live_workers

    namespace = f"{redis_namespace}_serve_restart"
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    base = f"http://127.0.0.1:{port}"

    def ready_worker():
        return next((b for b in live_workers(redis, namespace) if b["models"] and not b.get("starting")), None)

    # Each step sleeps 1 s first (the test-only fault hook): the job is surely mid-way when killed.
    with running_serve(tmp_path, port, namespace, log, INSTABOOST_TEST_FAULT="variant:sleep=1",
                       **{**FAST_WORKER, "INSTABOOST_WORKER_HEARTBEAT_TTL": "900"}) as (proc, redis):
        assert f"running at {base}/" in proc.stdout.readline(), log_path.read_text()
        # gunicorn's access log goes to serve's stdout: read it, or the full pipe blocks the web app mid-test.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        first = _wait("a ready worker", ready_worker, log_path, proc)
        body = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?",
                "multipliers": [2, 10], "layer_modes": ["all"], "max_new_tokens": 4}
        job_id = _api(base, "/api/jobs", body)["id"]
        _wait("the job running", lambda: _api(base, f"/api/jobs/{job_id}")["status"] == "running", log_path, proc)
        os.kill(first["pid"], signal.SIGKILL)

        _wait("the restart", lambda: "restarted the worker process" in log_path.read_text(), log_path, proc)
        text = log_path.read_text()
        assert f"the worker process (pid {first['pid']}) died (killed by SIGKILL); restarting it in 1 s" in text
        assert _api(base, f"/api/jobs/{job_id}")["id"] == job_id  # the web app stayed up throughout
        done = _wait("the job finished", lambda: (lambda j: j if j["finished"] else None)(
            _api(base, f"/api/jobs/{job_id}")), log_path, proc)
        assert done["status"] == "succeeded", done
        assert [r["variant"] for r in done["runs"]] == ["original", "all_x2", "all_x10"]
        assert done["attempts"] == 2 and done["worker"] != first["worker"]  # resumed by the new worker
        assert f"predecessor {first['worker']} is dead; its jobs [{job_id}] handed back at once" in log_path.read_text()

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert live_workers(redis, namespace) == []


def test_a_child_that_keeps_dying_is_restarted_with_backoff_and_a_clear_message(monkeypatch, capsys):
    from worker.cli import serve

    monkeypatch.setattr(serve, "RESTART_DELAYS", (0, 0, 0, 0, 0.2))
    child = serve._Child("worker", [sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ))
    child.start()
    starts = {child.proc.pid}
    deadline = time.monotonic() + 120
    while child.crashes < serve.CRASH_WARN_AFTER + 1:
        assert time.monotonic() < deadline, capsys.readouterr().err
        child.check()
        starts.add(child.proc.pid)
        time.sleep(0.02)
    child.proc.wait()
    err = capsys.readouterr().err
    assert len(starts) == serve.CRASH_WARN_AFTER + 1  # started again after every death
    assert err.count("died (exit code 3); restarting it in 0 s") == 4
    assert "died (exit code 3); restarting it in 0.2 s" in err
    assert "the worker process keeps dying: 5 times in a row" in err and "Still restarting it" in err


# -- what fails before it ever worked is not transient: serve exits with the cause (issue 25) ---------------

def _processes_in(namespace: str) -> list[int]:
    """Return the pids of live processes started for this Redis namespace (serve's children inherit it)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"INSTABOOST_REDIS_NAMESPACE={namespace}\0".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return [pid for pid in found if pid != os.getpid()]


def _run_serve(tmp_path, namespace: str, port: int, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """Run serve to its end (it must end by itself); whatever it leaves behind is killed after, and returned."""
    try:
        return subprocess.run([sys.executable, "-m", "worker.cli.serve", "--port", str(port)], cwd=tmp_path,
                              env=serve_env(REDIS_URL=TEST_REDIS_URL, INSTABOOST_REDIS_NAMESPACE=namespace, **env),
                              capture_output=True, text=True, timeout=timeout)
    finally:
        left = _processes_in(namespace)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        purge_namespace(namespace)
        assert not left, f"serve left processes running: {left}"


@pytest.mark.services
def test_serve_on_a_port_in_use_exits_at_once_and_starts_no_worker(tmp_path, redis_namespace):
    """Issue 25: gunicorn's "Address already in use" was restarted forever, and serve's worker ran meanwhile."""
    namespace = f"{redis_namespace}_busy"
    with socket.socket() as holder:  # any process holding the port: here, this test
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _run_serve(tmp_path, namespace, port, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr and "running at" not in proc.stdout
    assert not (tmp_path / "instaboost.db").exists()  # checked before anything started or was created


@pytest.mark.services
def test_serve_on_a_database_it_cannot_write_exits_naming_it(tmp_path, redis_namespace):
    proc = _run_serve(tmp_path, f"{redis_namespace}_nodb", free_port(), timeout=120,
                      DATABASE_URL="sqlite:////proc/instaboost/none.db")  # not even root creates files in /proc
    assert proc.returncode == 2, proc.stderr
    assert "cannot migrate the database sqlite:////proc/instaboost/none.db" in proc.stderr
    assert "DATABASE_URL" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.services
def test_serve_whose_worker_cannot_load_its_model_exits_with_the_workers_message(tmp_path, redis_namespace):
    namespace = f"{redis_namespace}_nomodel"
    proc = _run_serve(tmp_path, namespace, free_port(), INSTABOOST_WORKER_MODELS="no-such-model")
    assert proc.returncode == 1, proc.stderr
    assert ("cannot start: the worker process exited before it was ready (exit code 3): "
            "instaboost worker: cannot load model 'no-such-model'") in proc.stderr
    assert "restarting it" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.services
def test_serve_on_a_redis_prefix_another_database_owns_refuses_naming_both(tmp_path, redis_namespace):
    from shared import deployment
    from shared.db import upgrade
    from shared.worker_registry import redis_client

    namespace = f"{redis_namespace}_owned"
    first = f"sqlite:///{tmp_path / 'first.db'}"
    upgrade(first)
    client = redis_client(TEST_REDIS_URL)
    deployment.claim(client, namespace, first)  # a first deployment started on this prefix
    client.close()
    (tmp_path / "second").mkdir()
    proc = _run_serve(tmp_path / "second", namespace, free_port(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    second = f"sqlite:///{tmp_path / 'second' / 'instaboost.db'}"
    assert f"the Redis key prefix '{namespace}' belongs to another deployment: database {first}" in proc.stderr
    assert second in proc.stderr and "INSTABOOST_REDIS_NAMESPACE" in proc.stderr
