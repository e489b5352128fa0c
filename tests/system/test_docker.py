"""The compose stack for real, as users run it: built images, `docker compose --profile cpu up`, HTTP from the host.

Builds the local base images (scripts/docker-base.sh: no registry is needed) and the app images through compose,
starts the CPU profile with two workers (`--scale worker-cpu=2`) under a project name of its own on a free host
port, and, in this order (the crash last):

- a job through the JSON API to `succeeded` and its CSV;
- the real `openai` SDK against `/v1`: a completion with a boost, the same completion streamed, a 3-line batch to
  its output file;
- two completions that wait longer than 30 s (the workers are paused, so their jobs stay queued) while the app
  answers `/healthz` and `/api/jobs`, each request within its own 1 s client timeout; then they finish;
- a burst of jobs spread over both workers (which worker ran each is printed in the "docker stack" summary), and
  `kill -9` of one worker container's process in the middle of a job: the restart policy restarts the container,
  and every job ends `succeeded` with exactly one run per variant (lost 0, duplicated 0).

Tears everything down (`down -v`) whatever happens. Needs a Docker engine (`bash scripts/docker-engine.sh` starts
one; `make test` and .ci/run do) and Compose: v2 (`docker compose`) when present, else v1 (`docker-compose`);
INSTABOOST_COMPOSE="docker-compose" forces v1. Skipped, with the reason, otherwise. INSTABOOST_DOCKER_REGISTRY=1 uses
the registry's images (python:3.11-slim, redis:7-alpine, postgres:16-alpine, PyTorch's CPU index) instead.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import signal
import threading
import time

import pytest

from tests.fixtures.compose import MODEL, ROOT, Stack, compose_command, free_port, host_of, run


JOB = {"instruction": "Answer only in French.", "query": "What is the capital of Germany?", "multipliers": [5],
       "max_new_tokens": 16}
MESSAGES = [{"role": "system", "content": "Answer only in French."},
            {"role": "user", "content": "What is the capital of Germany?"}]
WORKERS = 2
BURST = 4  # jobs of 3 variants (JOB) each, one variant per batch step (INSTABOOST_WORKER_MAX_BATCH_ROWS=1 below)
# Safety nets only: every wait below polls for an event and fails (with the logs) only if it never comes.
START_TIMEOUT = 600
JOB_TIMEOUT = 900
LONG_WAIT = 33  # seconds the paused workers hold the completions back: past gunicorn's default 30 s timeout
TIMINGS: dict[str, float] = {}
USED: dict[str, str] = {}
REPORT: list[str] = []


def _timed(name: str, fn):
    t0 = time.monotonic()
    out = fn()
    TIMINGS[name] = round(time.monotonic() - t0, 1)
    return out


class _Summary:
    """Print the stack's timings and what ran where in pytest's terminal summary (section "docker stack")."""

    def pytest_terminal_summary(self, terminalreporter):
        if TIMINGS or REPORT:
            terminalreporter.section("docker stack")
            times = ", ".join(f"{k} {v} s" for k, v in TIMINGS.items())
            terminalreporter.write_line(f"{USED.get('compose')}: {times}")
            for line in REPORT:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    compose, why = compose_command()
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
        proc = _timed("base images", lambda: run(["bash", str(ROOT / "scripts" / "docker-base.sh")],
                                                   timeout=1800))
        assert proc.returncode == 0, f"scripts/docker-base.sh failed:\n{proc.stderr[-4000:]}"
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
    port = free_port()
    env.update(INSTABOOST_WEB_API_TOKEN=secrets.token_hex(16), INSTABOOST_WEB_SECRET_KEY=secrets.token_hex(16),
               POSTGRES_PASSWORD=secrets.token_hex(8), INSTABOOST_PORT=str(port), HF_HUB_OFFLINE="1",
               # One variant per batch step, one job per worker at a time: a burst spreads over both workers,
               # and a job spans several steps, so it can die with a run stored and more to come.
               INSTABOOST_WORKER_MAX_BATCH_ROWS="1",
               # The paused workers hold completions back LONG_WAIT s; then their jobs must still fit in the wait.
               INSTABOOST_V1_WAIT_SECONDS="600")
    env_file = tmp_path_factory.mktemp("docker") / "empty.env"
    env_file.write_text("")
    project = f"instaboost-test-{os.getpid()}-{secrets.token_hex(3)}"
    s = Stack(compose, env_file, env, project, port)
    try:
        s.compose("config", "-q", timeout=60)
        _timed("image builds", lambda: s.compose("build", "web", "worker-cpu", timeout=2400))
        _timed("up", lambda: s.compose("up", "-d", "--no-build", "--scale", f"worker-cpu={WORKERS}", timeout=600))

        def ready():
            return s.http("GET", "/healthz")[0] == 200 and s.live_workers() >= WORKERS

        _timed("healthy with live workers", lambda: s.wait(f"web healthy and {WORKERS} workers serving the model",
                                                           ready, START_TIMEOUT))
        TIMINGS["stack ready"] = round(time.monotonic() - t_start, 1)
        yield s
    finally:
        t0 = time.monotonic()
        if request.session.testsfailed:
            print(f"\n--- compose logs of {project} ---\n{s.logs()}")
        s.compose("unpause", "worker-cpu", timeout=60, check=False)  # `down` cannot stop paused containers
        s.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=300, check=False)
        TIMINGS["down"] = round(time.monotonic() - t0, 1)
        TIMINGS["total"] = round(time.monotonic() - t_start, 1)


@pytest.fixture(scope="module")
def oai(stack):
    """The real openai SDK on the stack's /v1; no retries, so a 5xx is seen, not resubmitted."""
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.token, max_retries=0, timeout=JOB_TIMEOUT)


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
    for r in body["runs"]:
        assert r["output_text"].strip(), r

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


def test_openai_sdk_completion_with_a_boost_and_streamed(stack, oai):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                  extra_body={"instaboost": {"multiplier": 5}})
    resp = oai.chat.completions.create(**kwargs)
    text = resp.choices[0].message.content
    assert resp.object == "chat.completion" and text.strip() and resp.usage.completion_tokens >= 1
    job = _job(stack, int(resp.id))  # a completion's id is its stored job's id
    assert job["status"] == "succeeded" and job["params"]["messages"][0]["segments"] == [[MESSAGES[0]["content"], 5.0]]

    chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces) == text  # streamed in pieces, the same greedy answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        resp.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens


def test_openai_sdk_batch_of_three_lines_to_its_output_file(stack, oai):
    questions = ["What is the capital of France?", "Name a colour.", "Say hello."]
    lines = [{"custom_id": f"line-{k}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "max_tokens": 8, "temperature": 0, "instaboost": {"multiplier": 3},
                       "messages": [{"role": "system", "content": "Answer in one short sentence."},
                                    {"role": "user", "content": q}]}} for k, q in enumerate(questions)]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = oai.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    batch = oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")

    def done():
        b = oai.batches.retrieve(batch.id)
        return b if b.status in ("completed", "failed", "cancelled", "expired") else None

    b = _timed("openai batch", lambda: stack.wait(f"batch {batch.id} done", done, JOB_TIMEOUT))
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (3, 0), b
    out = [json.loads(x) for x in oai.files.content(b.output_file_id).text.splitlines() if x.strip()]
    assert len(out) == 3 and sorted(x["custom_id"] for x in out) == ["line-0", "line-1", "line-2"]
    for x in out:
        assert x["response"]["status_code"] == 200 and x["error"] is None
        assert x["response"]["body"]["choices"][0]["message"]["content"].strip()


def test_completions_waiting_past_30_s_leave_the_app_answering(stack, oai):
    """Two completions wait > 30 s for their jobs (the workers are paused); meanwhile every /healthz and /api/jobs
    is answered within its own 1 s client timeout; then both complete with 200. Two sync gunicorn workers with
    gunicorn's default 30 s timeout fail this: the app stops answering, and at 30 s both completions get a 500."""
    stack.compose("pause", "worker-cpu", timeout=60)
    results: dict[int, object] = {}

    def complete(k: int) -> None:
        try:
            results[k] = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
        except Exception as exc:  # reported by the assertions below
            results[k] = exc

    threads = [threading.Thread(target=complete, args=(k,), daemon=True) for k in range(2)]
    t0 = time.monotonic()
    answered, missed = 0, []
    try:
        for th in threads:
            th.start()
        while time.monotonic() - t0 < LONG_WAIT:
            for path in ("/healthz", "/api/jobs?limit=5"):
                try:
                    status = stack.http("GET", path, timeout=1)[0]
                except OSError as exc:  # urllib's URLError and socket timeouts are OSErrors
                    missed.append(f"{time.monotonic() - t0:.1f} s {path}: {exc}")
                else:
                    answered += 1
                    assert status == 200, (path, status)
            time.sleep(0.2)
        early = {k: r for k, r in results.items()}
        queued = [j["status"] for j in stack.json("GET", "/api/jobs?limit=2")["items"]]
    finally:
        stack.compose("unpause", "worker-cpu", timeout=60)
    assert not early and not missed, (
        f"answered before their jobs could run: {early!r}; {len(missed)} of {answered + len(missed)} other "
        f"requests not answered within 1 s: {missed[:3]}")
    assert queued == ["queued", "queued"], queued
    for th in threads:
        th.join(JOB_TIMEOUT)
    waited = round(time.monotonic() - t0, 1)
    for k in range(2):
        resp = results.get(k)
        assert getattr(resp, "object", None) == "chat.completion", repr(resp)
        assert resp.choices[0].message.content.strip()
    REPORT.append(f"long completions: 2 answered 200 after {waited} s; {answered} other requests answered "
                  f"within 1 s meanwhile")


def _crash(stack: Stack, container: dict) -> str:
    """kill -9 the container's main process, as a crash would (the restart policy restarts it); how it was done."""
    try:
        os.kill(container["pid"], signal.SIGKILL)
        return "kill -9 of the main process"
    except PermissionError:  # not root: `docker kill` stops it for good (manually stopped), so start it again
        run(["docker", "kill", "-s", "KILL", container["name"]], timeout=60)
        run(["docker", "start", container["name"]], timeout=60)
        return "docker kill -s KILL, then docker start"


def test_two_workers_share_a_burst_and_kill_9_of_one_loses_nothing(stack):
    containers = stack.workers()
    assert len(containers) == WORKERS, containers
    ids = [stack.json("POST", "/api/jobs", JOB, expect=202)["id"] for _ in range(BURST)]
    seen: dict[int, set[str]] = {i: set() for i in ids}  # job -> the worker ids seen running it

    def look() -> dict[int, dict]:
        items = {j["id"]: j for j in stack.json("GET", f"/api/jobs?limit={BURST}")["items"] if j["id"] in seen}
        for j in items.values():
            if j["worker"]:
                seen[j["id"]].add(j["worker"])
        return items

    def spread_and_half_done():  # both workers have run burst jobs, and one job has 1 of its 3 runs stored
        items = look()
        mid = [j for j in items.values() if j["status"] == "running" and j["progress"]["done"] == 1]
        hosts = {host_of(w) for ws in seen.values() for w in ws}
        return mid[0] if len(hosts) >= WORKERS and mid else None

    t0 = time.monotonic()
    victim = stack.wait("both workers running the burst, a job half done", spread_and_half_done, JOB_TIMEOUT,
                        interval=0.2)
    dead = containers[host_of(victim["worker"])]
    how = _crash(stack, dead)
    t_kill = time.monotonic()
    assert _job(stack, victim["id"])["status"] == "running", "the job finished before its worker died"
    _wait_finished(stack, victim["id"])
    TIMINGS["killed job done after the kill"] = round(time.monotonic() - t_kill, 1)
    bodies = [_wait_finished(stack, i) for i in ids]
    TIMINGS["burst with kill -9"] = round(time.monotonic() - t0, 1)
    look()

    names = {h: c["name"].removeprefix(stack.project + "-") for h, c in containers.items()}

    def who(worker_id: str) -> str:  # the container, and the process's random id part (a restart makes a new one)
        return f"{names.get(host_of(worker_id), host_of(worker_id))}#{worker_id.rsplit(':', 1)[-1]}"

    lost = duplicated = 0
    for body in bodies:
        variants = [r["variant"] for r in body["runs"]]
        lost += body["progress"]["total"] - len(set(variants))
        duplicated += len(variants) - len(set(variants))
        ran = sorted({who(w) for w in seen[body["id"]] | {body["worker"]}})
        REPORT.append(f"job {body['id']}: {body['status']}, {len(variants)} runs, attempts {body['attempts']}, "
                      f"ran on {', '.join(ran)}{' (killed mid-job)' if body['id'] == victim['id'] else ''}")
    REPORT.append(f"burst of {BURST} jobs ({sum(b['progress']['total'] for b in bodies)} runs) on {WORKERS} "
                  f"workers; {how} of {names[host_of(victim['worker'])]} in job {victim['id']}: lost {lost}, "
                  f"duplicated {duplicated}")
    for body in bodies:
        _check_runs(stack, body)
    assert (lost, duplicated) == (0, 0)
    assert next(b for b in bodies if b["id"] == victim["id"])["attempts"] >= 2  # the dead delivery counted
    # Both workers ran jobs of the burst.
    assert {host_of(w) for ws in seen.values() for w in ws} == set(containers)
    # The restart policy brought the killed container back, and its new worker joins.
    stack.wait("the killed worker container restarted and serving", lambda: (
        stack.workers().get(host_of(victim["worker"]), {}).get("restarts", 0) >= 1 or "docker start" in how)
        and stack.live_workers() >= WORKERS, START_TIMEOUT)
