"""The fault table's rows: each injects one fault into a running stack while jobs stream in, then measures.

Each row is a function of the Stack (bench/fault_measure.py) returning its Result; FAULTS lists them with how
the fault is injected and recovered from, and whether the row takes under a minute ("fast": in the test suite)
or longer ("slow": the faults_slow group).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

from bench.fault_measure import (ACCEPTED, Result, Stack, count_rows, job_states, measure, percentile, stream_fault,
                                 submit)
from bench.fault_stack import MODEL, Serve, ready_worker, wait_for


def _web_back(stack: Stack) -> None:
    wait_for("the web app back", stack.serve.web_up, 120)


def _worker_back(stack: Stack, old_pid: int) -> None:
    wait_for("a new worker ready", lambda: ready_worker(stack.redis.url, stack.namespace, not_pid=old_pid), 180)


# -- the rows ------------------------------------------------------------------------------------------------------


def redis_restart(stack: Stack) -> Result:
    """Redis stopped (SIGTERM: it writes its append-only file) and started on the same data mid-batch."""
    return stream_fault(stack, "redis_restart", lambda: stack.redis.stop(), stack.redis.start)


def redis_empty(stack: Stack) -> Result:
    """Redis killed and replaced by an empty one: queued messages and heartbeats gone, the recovery loop re-sends."""
    def inject():
        stack.redis.stop(kill=True)
        stack.redis.wipe()
    return stream_fault(stack, "redis_empty", inject, stack.redis.start, after=20)


def redis_down_5min(stack: Stack) -> Result:
    """Redis down for 5 minutes (the slow-reconnect defect: the first job after it shows the worker's backoff).

    It goes down while the worker waits for work, as in issue 25: a worker busy with a batch only notices the lost
    connection when the batch ends, after Redis is back, and so never backs off. 310 s, not 300: Celery retries
    after 2, 4, ... 30 s, then every 30 s, so a try falls exactly 240 and 300 s into the outage and an outage of
    that length would hide the backoff.
    """
    def recover():
        time.sleep(310)
        stack.redis.start()
    return stream_fault(stack, "redis_down_5min", lambda: stack.redis.stop(), recover, every=2.0, after=40,
                        when="idle")


def pg_restart(stack: Stack) -> Result:
    """PostgreSQL stopped (-m fast) mid-batch and started 5 s later: submits meanwhile get 503 with Retry-After."""
    def recover():
        time.sleep(5)
        stack.pg.start()
    r = stream_fault(stack, "pg_restart", lambda: stack.pg.stop("fast"), recover)
    r.checks["no 500 answers"] = "500" not in r.refused
    r.checks["every 503 has Retry-After"] = r.extra["503_without_retry_after"] == 0
    return r


def web_kill_upload(stack: Stack) -> Result:
    """The web process (gunicorn, all of it) killed while a 2 MB file uploads: no file row, no batch."""
    files0, batches0 = count_rows(stack.db_url, "files"), count_rows(stack.db_url, "batches")
    started = threading.Event()
    outcome: dict = {}

    def upload():
        line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}}) + "\n"
        content = (line * (2_000_000 // len(line))).encode()
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\n"
                f"Content-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
                "Content-Type: application/jsonl\r\n\r\n").encode()
        body = head + content + f"\r\n--{boundary}--\r\n".encode()
        conn = http.client.HTTPConnection("127.0.0.1", stack.serve.port, timeout=30)
        try:
            conn.putrequest("POST", "/v1/files")
            conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            for i in range(0, len(body), 64 * 1024):  # slowly: the kill lands mid-body
                conn.send(body[i:i + 64 * 1024])
                started.set()
                time.sleep(0.2)
            outcome["status"] = conn.getresponse().status
        except OSError as exc:
            outcome["error"] = type(exc).__name__
        finally:
            conn.close()

    thread = threading.Thread(target=upload, daemon=True)

    def inject():
        thread.start()
        started.wait(30)
        time.sleep(1)
        stack.serve.kill_web()
        thread.join(60)
        return f"upload ended by {outcome.get('error') or 'HTTP %s' % outcome.get('status')}"
    r = stream_fault(stack, "web_kill_upload", inject, lambda: _web_back(stack), when="any")
    r.checks["no file or batch stored"] = (count_rows(stack.db_url, "files"), count_rows(
        stack.db_url, "batches")) == (files0, batches0)
    return r


def web_kill_stream(stack: Stack) -> Result:
    """The web process killed while a completion streams: its job ends (cancelled or finished), never hangs."""
    holder: dict = {}

    def inject():
        conn = http.client.HTTPConnection("127.0.0.1", stack.serve.port, timeout=60)
        conn.request("POST", "/v1/chat/completions", json.dumps({
            "model": MODEL, "stream": True, "max_tokens": 48,
            "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}]}),
            {"Content-Type": "application/json"})
        resp = conn.getresponse()
        while True:  # until the first content chunk: the job is decoding
            line = resp.readline().decode()
            if line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                holder["job"] = int(json.loads(line[6:])["id"])
                break
            if not line:
                break
        stack.serve.kill_web()
        conn.close()
        return "a completion streaming" if holder.get("job") else "no streamed content seen"
    r = stream_fault(stack, "web_kill_stream", inject, lambda: _web_back(stack), when="any")
    job = holder.get("job")
    end = None
    if job is not None:
        try:
            end = wait_for("the streamed job final", lambda: (lambda s: s[0] if s and s[0] not in (
                "queued", "running") else None)(job_states(stack.db_url, [job]).get(job)), 180)
        except TimeoutError:
            end = None
    r.notes += f"; its job ended {end or 'never (still running)'}"
    r.checks["streamed job ended"] = end is not None
    return r


def _kill_worker(stack: Stack, name: str, sig: signal.Signals) -> Result:
    holder: dict = {}

    def inject():
        holder["pid"] = stack.worker_pid()
        os.kill(holder["pid"], sig)
        return f"{sig.name} to the worker"
    return stream_fault(stack, name, inject, lambda: _worker_back(stack, holder["pid"]))


def worker_kill9(stack: Stack) -> Result:
    """The worker killed (-9) mid-batch: serve restarts it, its recovery loop re-sends the interrupted jobs."""
    return _kill_worker(stack, "worker_kill9", signal.SIGKILL)


def worker_sigterm(stack: Stack) -> Result:
    """The worker stopped (SIGTERM: warm shutdown) mid-batch: it finishes its step, serve restarts it."""
    return _kill_worker(stack, "worker_sigterm", signal.SIGTERM)


def port_in_use(stack: Stack) -> Result:
    """Defect 1: a second serve on a port in use must exit at once naming the port (not restart forever)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    # A database and namespace of its own: its worker and recovery loop must not touch the stack's jobs.
    env = stack.child_env(f"sqlite:///{stack.folder / 'port_in_use.db'}", namespace=f"{stack.namespace}_port")
    other = Serve(stack.folder, env, port=port, name="serve_port_in_use")
    t0 = time.time()
    other.spawn()
    try:
        other.proc.wait(45)
    except subprocess.TimeoutExpired:
        pass
    code, took = other.proc.poll(), time.time() - t0
    other.stop(10)
    holder.close()
    r = Result("port_in_use")
    said = str(port) in other.log() and "in use" in other.log()
    r.checks["exits with an error naming the port"] = code not in (None, 0) and said
    r.notes = (f"exit {code} after {took:.0f} s" if code is not None else "still running after 45 s (killed)") + \
        (", names the port" if said else "")
    return r


def two_deployments(stack: Stack) -> Result:
    """Defect 2: another deployment's worker (another database) on this Redis prefix refuses to start, or at
    least never acknowledges this deployment's jobs as done."""
    other_db = stack.pg.create_database(f"other_{uuid.uuid4().hex[:6]}")
    holder: dict = {}

    def inject():
        w = holder["w"] = stack.worker("other_deployment", db_url=other_db)
        try:
            wait_for("the other deployment's worker ready or gone", lambda: w.proc.poll() is not None or any(
                b.get("pid") == w.proc.pid and not b.get("starting") for b in _beats(stack)), 180)
        except TimeoutError:
            pass
        return "the other worker " + ("refused to start" if w.proc.poll() is not None else "ran")
    def cleanup():  # before counting: what the intruder did while our jobs streamed in, then it leaves
        holder["refused"] = holder["w"].proc.poll() is not None
        holder["w"].stop()
    r = stream_fault(stack, "two_deployments", inject, lambda: None, after=20, when="any", cleanup=cleanup)
    skipped = holder["w"].log().count("skipped (missing")
    refused = holder["refused"]
    r.notes += f"; it skipped {skipped} of our messages"
    r.checks["the other deployment takes none of our jobs"] = skipped == 0
    r.extra["other_refused_to_start"] = refused
    return r


def _beats(stack: Stack) -> list[dict]:
    from shared.worker_registry import live_workers, redis_client

    client = redis_client(stack.redis.url)
    try:
        return live_workers(client, stack.namespace)
    finally:
        client.close()


def load_500(stack: Stack, jobs: int = 500) -> Result:
    """Load: 500 jobs submitted as fast as one client can, two workers: all succeed, submit latency p50/p99."""
    stack.worker("second_worker")
    wait_for("two ready workers", lambda: len([b for b in _beats(stack) if not b.get("starting")]) >= 2, 240)
    t0 = time.time()
    submits = [submit(stack.serve.base) for _ in range(jobs)]
    took = time.time() - t0
    r = measure(stack, "load_500", submits, fault_at=t0, ended_at=t0, settle=1500)
    ms = [s.seconds * 1000 for s in submits if s.status in ACCEPTED]
    states = job_states(stack.db_url, [s.job_id for s in submits if s.job_id])
    last = max((v[1] for v in states.values() if v[1]), default=t0)
    r.extra.update(submit_p50_ms=round(percentile(ms, 50), 1), submit_p99_ms=round(percentile(ms, 99), 1),
                   submits_per_s=round(jobs / took, 1), jobs_per_min=round(60 * len(states) / max(1, last - t0), 1))
    r.notes = (f"submits {r.extra['submits_per_s']}/s, p50 {r.extra['submit_p50_ms']} ms, p99 "
               f"{r.extra['submit_p99_ms']} ms; {r.extra['jobs_per_min']} jobs/min with 2 workers")
    r.first_after_s = r.normal_after_s = None
    return r


@dataclass
class Fault:
    name: str
    run: object  # (Stack) -> Result
    inject: str
    recover: str
    duration: str  # "fast" (under a minute: in the test suite) or "slow" (the faults_slow group)


FAULTS = [
    Fault("redis_restart", redis_restart, "SIGTERM Redis (AOF written), start it on the same data", "automatic", "fast"),
    Fault("redis_empty", redis_empty, "SIGKILL Redis, delete its data, start an empty one", "recovery loop re-sends",
          "fast"),
    Fault("redis_down_5min", redis_down_5min, "stop Redis for 310 s", "start it again", "slow"),
    Fault("pg_restart", pg_restart, "pg_ctl stop -m fast, start 5 s later", "automatic", "fast"),
    Fault("web_kill_upload", web_kill_upload, "kill -9 gunicorn (all) mid file upload", "serve restarts it", "fast"),
    Fault("web_kill_stream", web_kill_stream, "kill -9 gunicorn (all) mid streamed completion", "serve restarts it",
          "fast"),
    Fault("worker_kill9", worker_kill9, "kill -9 serve's worker mid-batch", "serve restarts it; recovery loop", "fast"),
    Fault("worker_sigterm", worker_sigterm, "SIGTERM serve's worker mid-batch", "serve restarts it", "fast"),
    Fault("port_in_use", port_in_use, "a second serve on a port in use", "must exit naming the port", "fast"),
    Fault("two_deployments", two_deployments, "a worker of another database on the same Redis prefix",
          "must refuse to start", "fast"),
    Fault("load_500", load_500, "500 jobs from one client, 2 workers", "-", "slow"),
]
