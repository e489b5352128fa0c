"""The compose stack for real: built images, `docker compose --profile cpu up`, HTTP from the host.

Builds the local base images (scripts/docker-base.sh: no registry is needed) and the app images through compose,
starts the CPU profile under a project name of its own on a free host port, submits a job through the JSON API,
polls it to `succeeded`, downloads its CSV, then restarts the worker container in the middle of a second job
(SIGKILL at once: a crash, not a drain) and checks that job still ends `succeeded` with exactly one run per
variant. Tears everything down (`down -v`) whatever happens.

Needs a Docker engine (`bash scripts/docker-engine.sh` starts one; .ci/run does) and Compose: v2 (`docker
compose`) when present, else v1 (`docker-compose`); INSTABOOST_COMPOSE="docker-compose" forces v1. Skipped,
with the reason, otherwise. INSTABOOST_DOCKER_REGISTRY=1 uses the registry's images (python:3.11-slim,
redis:7-alpine, postgres:16-alpine, PyTorch's CPU index) instead of the local ones.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
JOB = {"instruction": "Answer only in French.", "query": "What is the capital of Germany?", "multipliers": [5],
       "max_new_tokens": 16}
# Safety nets only: every wait below polls for an event and fails (with the logs) only if it never comes.
START_TIMEOUT = 600
JOB_TIMEOUT = 900
TIMINGS: dict[str, float] = {}
USED: dict[str, str] = {}


def _run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _compose_command() -> tuple[list[str] | None, str]:
    """The compose CLI to use, or None and why not."""
    if shutil.which("docker") is None:
        return None, "no docker client (apt-get install docker.io)"
    try:
        info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except subprocess.TimeoutExpired:
        return None, "`docker info` hung: the engine does not answer"
    if info.returncode != 0:
        return None, "no Docker engine answers (start one: bash scripts/docker-engine.sh)"
    forced = os.environ.get("INSTABOOST_COMPOSE")
    candidates = [shlex.split(forced)] if forced else [["docker", "compose"], ["docker-compose"]]
    for cmd in candidates:
        if shutil.which(cmd[0]) and _run([*cmd, "version"], timeout=30).returncode == 0:
            return cmd, ""
    return None, f"no Compose CLI ({' or '.join(' '.join(c) for c in candidates)})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One compose project of the repo's docker-compose.yml, driven through the CLI."""

    def __init__(self, compose: list[str], env_file: Path, env: dict[str, str], project: str, port: int):
        self.cmd = [*compose, "--project-name", project, "--project-directory", str(ROOT),
                    "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(env_file), "--profile", "cpu"]
        self.env, self.project, self.port = env, project, port
        self.url = f"http://127.0.0.1:{port}"
        self.token = env["INSTABOOST_WEB_API_TOKEN"]

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        proc = _run([*self.cmd, *args], timeout=timeout, env=self.env)
        if check:
            assert proc.returncode == 0, f"compose {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        return proc

    def http(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              **({"Content-Type": "application/json"} if data else {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get_content_type()

    def json(self, method: str, path: str, body: dict | None = None, expect: int = 200) -> dict:
        status, raw, _ = self.http(method, path, body)
        assert status == expect, f"{method} {path}: HTTP {status}: {raw[:2000]!r}"
        return json.loads(raw)

    def logs(self) -> str:
        proc = self.compose("logs", "--no-color", "--tail", "80", timeout=60, check=False)
        return proc.stdout[-12000:] + proc.stderr[-2000:]

    def wait(self, what: str, probe, timeout: float, interval: float = 0.5):
        """Poll probe() until it returns something truthy; fail with the services' logs after timeout."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = probe()
            except (OSError, urllib.error.URLError) as exc:  # not listening yet, connection reset: poll again
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})\n{self.logs()}")


def _timed(name: str, fn):
    t0 = time.monotonic()
    out = fn()
    TIMINGS[name] = round(time.monotonic() - t0, 1)
    return out


class _Summary:
    """Print the stack's timings in pytest's terminal summary (section "docker stack")."""

    def pytest_terminal_summary(self, terminalreporter):
        if TIMINGS:
            terminalreporter.section("docker stack")
            times = ", ".join(f"{k} {v} s" for k, v in TIMINGS.items())
            terminalreporter.write_line(f"{USED.get('compose')}: {times}")


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    compose, why = _compose_command()
    if compose is None:
        pytest.skip(f"docker: {why}")
    if not request.config.pluginmanager.has_plugin("instaboost-docker-summary"):
        request.config.pluginmanager.register(_Summary(), "instaboost-docker-summary")
    USED["compose"] = " ".join(compose)
    t_start = time.monotonic()

    # The caller's INSTABOOST_*/POSTGRES_*/image variables and a local .env must not leak into the project.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INSTABOOST_", "POSTGRES_", "COMPOSE_", "TORCH_"))
           and k not in ("DATABASE_URL", "REDIS_URL", "PYTHON_IMAGE", "REDIS_IMAGE", "POSTGRES_IMAGE")}
    if os.environ.get("INSTABOOST_DOCKER_REGISTRY") != "1":
        proc = _timed("base images", lambda: _run(["bash", str(ROOT / "scripts" / "docker-base.sh")],
                                                   timeout=1800))
        assert proc.returncode == 0, f"scripts/docker-base.sh failed:\n{proc.stderr[-4000:]}"
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
    port = _free_port()
    env.update(INSTABOOST_WEB_API_TOKEN=secrets.token_hex(16), INSTABOOST_WEB_SECRET_KEY=secrets.token_hex(16),
               POSTGRES_PASSWORD=secrets.token_hex(8), INSTABOOST_PORT=str(port), HF_HUB_OFFLINE="1",
               # One variant per batch step: the restart test needs a job with a run stored and more to come
               # (progress moves a batch at a time, and by default a job's variants share one step).
               INSTABOOST_WORKER_MAX_BATCH_ROWS="1")
    env_file = tmp_path_factory.mktemp("docker") / "empty.env"
    env_file.write_text("")
    project = f"instaboost-test-{os.getpid()}-{secrets.token_hex(3)}"
    s = Stack(compose, env_file, env, project, port)
    try:
        s.compose("config", "-q", timeout=60)
        _timed("image builds", lambda: s.compose("build", "web", "worker-cpu", timeout=2400))
        _timed("up", lambda: s.compose("up", "-d", "--no-build", timeout=600))

        def ready():
            if s.http("GET", "/healthz")[0] != 200:
                return None
            models = json.loads(s.http("GET", "/api/models")[1])
            return [m for m in models["models"] if m["name"] == "smollm2-135m-instruct" and m["workers"] >= 1]

        _timed("healthy with a live worker", lambda: s.wait("web healthy and a worker serving the model", ready,
                                                           START_TIMEOUT))
        TIMINGS["stack ready"] = round(time.monotonic() - t_start, 1)
        yield s
    finally:
        t0 = time.monotonic()
        if request.session.testsfailed:
            print(f"\n--- compose logs of {project} ---\n{s.logs()}")
        s.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=300, check=False)
        TIMINGS["down"] = round(time.monotonic() - t0, 1)
        TIMINGS["total"] = round(time.monotonic() - t_start, 1)


def _job(s: Stack, job_id: int) -> dict:
    return s.json("GET", f"/api/jobs/{job_id}")


def _wait_finished(s: Stack, job_id: int) -> dict:
    def finished():
        body = _job(s, job_id)
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return s.wait(f"job {job_id} finished", finished, JOB_TIMEOUT)


def _check_runs(s: Stack, body: dict) -> list[str]:
    """The job succeeded with exactly one run per variant, in its JSON and in its CSV; return the variants."""
    assert body["status"] == "succeeded", body["error"]
    total = body["progress"]["total"]
    assert total >= 2 and body["progress"] == {"done": total, "total": total}
    variants = [r["variant"] for r in body["runs"]]
    assert len(variants) == total and len(set(variants)) == total, variants
    assert "original" in variants
    for run in body["runs"]:
        assert run["output_text"].strip(), run

    status, raw, ctype = s.http("GET", f"/api/runs.csv?job_id={body['id']}")
    assert status == 200 and ctype == "text/csv", (status, raw[:500])
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert sorted(r["variant"] for r in rows) == sorted(variants)
    assert {r["job_id"] for r in rows} == {str(body["id"])}
    return variants


def test_job_through_the_api_to_csv(stack):
    created = stack.json("POST", "/api/jobs", JOB, expect=202)
    body = _timed("job", lambda: _wait_finished(stack, created["id"]))
    _check_runs(stack, body)
    assert body["attempts"] == 1


def test_worker_restart_mid_job_keeps_one_run_per_variant(stack):
    created = stack.json("POST", "/api/jobs", JOB, expect=202)
    job_id = created["id"]
    t0 = time.monotonic()
    def mid_job():  # running, with a first run stored
        body = _job(stack, job_id)
        return body if body["status"] == "running" and body["progress"]["done"] >= 1 else None

    body = stack.wait(f"job {job_id} running with a first run stored", mid_job, JOB_TIMEOUT, interval=0.2)
    assert body["progress"]["done"] < body["progress"]["total"], "the job finished before the restart"
    # --timeout 0: SIGKILL right after SIGTERM, so the job in hand dies with its worker (a crash).
    stack.compose("restart", "--timeout", "0", "worker-cpu", timeout=120)
    assert _job(stack, job_id)["status"] == "running", "the job finished before the worker died"
    body = _wait_finished(stack, job_id)
    TIMINGS["job with worker restart"] = round(time.monotonic() - t0, 1)
    _check_runs(stack, body)
    # The dead worker's delivery counted; the restarted worker (a new worker id) finished the job.
    assert body["attempts"] >= 2, body
