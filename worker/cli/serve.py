"""`instaboost serve`: the whole service on one machine (web app + one Celery worker).

Checks that the port is free, that Redis answers and that no other deployment (another database) owns the
Redis key prefix, migrates the database, then runs gunicorn and a solo-pool Celery worker as child processes
against the local Redis, and stops both on Ctrl-C or SIGTERM.

What fails before it ever worked is not transient, and serve exits at once (stopping the other child) with
the cause: a port in use or any other bind failure, a model that cannot load, a database it cannot write,
another deployment on the Redis prefix. A child is ready when it answers: the web app on its port, the worker
once its heartbeat says its models are loaded. Like compose's ``restart: unless-stopped``, a child that dies
after it was ready (a worker killed, out of memory, or ended by its time-limit watchdog) is started again,
with a growing delay (``RESTART_DELAYS``) while it keeps dying quickly and a clear message once it has crashed
``CRASH_WARN_AFTER`` times in a row; the other child keeps running meanwhile (the web app stays up, jobs wait
in the queue), and the job the dead worker was running is sent again by the new worker's recovery loop.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
WSGI_APP = "web:create_app()"
STOP_GRACE = 20  # seconds each child gets to finish (the worker's current variant) before SIGKILL
RESTART_DELAYS = (1, 2, 4, 8, 16, 30)  # seconds before restarting a child after its 1st, 2nd, ... quick crash
STABLE_AFTER = 60  # a child that ran this long counts as healthy: its next crash starts the delays over
CRASH_WARN_AFTER = 5  # crashes in a row before saying that something is wrong for good


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `serve` options to an argparse (sub)parser."""
    parser.add_argument("--host", default="127.0.0.1", help="address the web app listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port of the web app (default 8000)")
    parser.add_argument("--web-workers", type=int, default=None,
                        help="gunicorn worker processes (default: the web.workers setting, 2)")
    parser.add_argument("--no-worker", action="store_true",
                        help="run only the web app (workers run elsewhere against the same Redis)")


def run_serve(args: argparse.Namespace) -> int:
    """Run `serve` from parsed arguments; return the exit code."""
    return serve(args.host, args.port, web_workers=args.web_workers, with_worker=not args.no_worker)


def _say(msg: str) -> None:
    print(f"instaboost serve: {msg}", file=sys.stderr, flush=True)


def check_redis(url: str) -> str | None:
    """Return None if Redis answers PING at url, else what is wrong and how to fix it."""
    from shared.worker_registry import redis_client

    try:
        redis_client(url).ping()
        return None
    except Exception as exc:  # redis-py raises ConnectionError, TimeoutError, AuthenticationError...
        return (f"cannot reach Redis at {url} ({type(exc).__name__}: {exc}).\n"
                "  Redis is the job queue; start one with `redis-server` (Debian: apt-get install redis-server)\n"
                "  or `docker run -d -p 6379:6379 redis:7`, or point REDIS_URL at a running Redis.")


def check_port(host: str, port: int) -> str | None:
    """Return None if the web app can listen on host:port, else what is wrong and how to fix it."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does: TIME_WAIT is free
            probe.bind(addr)
        return None
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: unknown host {host!r} ({exc.strerror}); check --host"
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"port {port} on {host} is already in use (another `instaboost serve`, or `make run` twice?).\n"
                    f"  Stop what holds it (`ss -ltnp 'sport = :{port}'` names it) or choose another with --port.")
        return (f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                "(ports below 1024 need root) or --host (an address of this machine)")


def _child_env(settings) -> dict[str, str]:
    env = dict(os.environ)
    # Children resolve the same settings even when they came from config.yaml or .env.
    env["DATABASE_URL"] = settings.database.url
    env["REDIS_URL"] = settings.redis.url
    env["INSTABOOST_REDIS_NAMESPACE"] = settings.redis.namespace
    if not settings.web.secret_key:
        # gunicorn's workers must share one key, or a form served by one fails CSRF at another.
        env["INSTABOOST_WEB_SECRET_KEY"] = secrets.token_hex(32)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _gunicorn_command(host: str, port: int, workers: int | None) -> list[str]:
    import gunicorn.config

    # The one gunicorn configuration (threaded workers, timeouts, sizes from web.*) that compose and the Docker
    # image use too; the command line only adds where to listen and, when given, --web-workers.
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--bind", f"{host}:{port}"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        # Newer gunicorns open one fixed control socket per user: two instances would collide.
        cmd.append("--no-control-socket")
    return cmd + [WSGI_APP]


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # celery: warm shutdown; gunicorn: graceful stop
    deadline = time.monotonic() + STOP_GRACE
    for name, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{name} did not stop within {STOP_GRACE} s; killing it")
            proc.kill()
            proc.wait()


class _Stop(Exception):
    pass


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    from worker.jobs.watchdog import WATCHDOG_EXIT

    if code == WATCHDOG_EXIT:
        return (f"exit code {code}: it ended itself because a job was stuck past its time limit or the job's "
                "end could not be recorded; see its log")
    return f"exit code {code}"


class _Fatal(Exception):
    """A child died before it was ever ready: what failed is not transient (a port, a model, the database)."""


def _last_words(lines) -> str:
    """Return the line of a child's last output that says most about why it stopped."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith("instaboost") or "Error" in line or "error:" in line.lower():
            return line
    return lines[-1] if lines else "it printed nothing"


class _Child:
    """One supervised child process: how to start it, how to tell it is ready, and its crash history.

    Its stderr passes through a thread that keeps the last lines, so a fatal message can quote them.
    """

    def __init__(self, name: str, command: list[str], env: dict[str, str],
                 ready: Callable[[subprocess.Popen], bool] | None = None):
        self.name = name
        self.command = command
        self.env = env
        self.probe = ready
        self.was_ready = ready is None  # without a probe a child counts as ready once started
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.crashes = 0  # quick crashes in a row
        self.restart_at: float | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=40)

    def start(self) -> subprocess.Popen:
        # Own sessions: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        self.proc = subprocess.Popen(self.command, env=self.env, start_new_session=True, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        threading.Thread(target=self._relay, args=(self.proc.stderr,), name=f"serve-{self.name}-stderr",
                         daemon=True).start()
        self.started = time.monotonic()
        self.restart_at = None
        return self.proc

    def _relay(self, stream) -> None:
        for line in stream:
            self.tail.append(line)
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is gone; keep draining so the child never blocks
                pass

    def check(self) -> None:
        """Notice readiness or a death (schedule the restart, say why; _Fatal before it was ever ready), or
        start the child again once its delay is over."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
                _say(f"restarted the {self.name} process (pid {self.proc.pid})")
            return
        code = self.proc.poll()
        if code is None:
            if not self.was_ready and self.probe(self.proc):
                self.was_ready = True
            return
        if not self.was_ready and self.probe(self.proc):
            # It became ready between two polls and died right after: a crash to restart, not a failed start.
            self.was_ready = True
        if not self.was_ready:
            time.sleep(0.2)  # let the relay thread read its last lines
            raise _Fatal(f"the {self.name} process exited before it was ready ({_exit_reason(code)}): "
                         f"{_last_words(self.tail)}")
        self.crashes = 1 if now - self.started >= STABLE_AFTER else self.crashes + 1
        delay = RESTART_DELAYS[min(self.crashes, len(RESTART_DELAYS)) - 1]
        self.restart_at = now + delay
        _say(f"the {self.name} process (pid {self.proc.pid}) died ({_exit_reason(code)}); restarting it in {delay} s")
        if self.crashes >= CRASH_WARN_AFTER:
            _say(f"the {self.name} process keeps dying: {self.crashes} times in a row, each within {STABLE_AFTER} s "
                 f"of its start (last: {_exit_reason(code)}). Its log above says why (running out of memory, "
                 "the database or Redis unreachable). Still restarting it every "
                 f"{RESTART_DELAYS[-1]} s; the web app stays up and jobs wait in the queue. Ctrl-C stops everything.")


def _port_open(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


def _worker_ready(redis, namespace: str) -> Callable[[subprocess.Popen], bool]:
    """Return a probe: has the worker process's heartbeat announced its models as loaded?"""
    from shared.worker_registry import live_workers

    def ready(proc: subprocess.Popen) -> bool:
        try:
            beats = live_workers(redis, namespace)
        except Exception:  # Redis away for a moment: not ready yet
            return False
        return any(b.get("pid") == proc.pid and b["models"] and not b.get("starting") for b in beats)

    return ready


def _preflight(host: str, port: int, settings) -> str | None:
    """Return why serve cannot start (port, Redis, database, another deployment on the prefix), else None."""
    from shared.db import upgrade
    from shared.deployment import DeploymentConflict, claim_if_reachable, mask_url
    from shared.worker_registry import redis_client

    problem = check_port(host, port) or check_redis(settings.redis.url)
    if problem:
        return problem
    try:
        upgrade(settings.database.url)
    except Exception as exc:
        return (f"cannot migrate the database {mask_url(settings.database.url)} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).\n"
                "  Check DATABASE_URL (the default is a SQLite file instaboost.db in the current folder).")
    try:
        claim_if_reachable(redis_client(settings.redis.url), settings.redis.namespace, settings.database.url)
    except DeploymentConflict as exc:
        return exc.message
    return None


def serve(host: str = "127.0.0.1", port: int = 8000, *, web_workers: int | None = None, with_worker: bool = True,
          ready_timeout: float = 120.0) -> int:
    """Check, migrate, start the web app and one worker, print the URL and run until interrupted."""
    from shared.settings import get_settings
    from shared.worker_registry import redis_client

    settings = get_settings()
    if not settings.web.api_token:
        from shared.settings import OPEN_MODE_MESSAGE

        _say(f"{OPEN_MODE_MESSAGE} (fine on 127.0.0.1; set INSTABOOST_WEB_API_TOKEN before exposing it)")
        if host not in ("127.0.0.1", "localhost", "::1") and not settings.web.allowed_hosts:
            # Without a token the web app answers only loopback Host names (web/auth.py: DNS rebinding).
            _say(f"--host {host} without a token: the web app answers only requests for localhost, 127.0.0.1 and "
                 "[::1]; set INSTABOOST_WEB_ALLOWED_HOSTS to the names clients use to reach it (web.allowed_hosts), "
                 "and preferably INSTABOOST_WEB_API_TOKEN")
    problem = _preflight(host, port, settings)
    if problem:
        _say(problem)
        return 2

    env = _child_env(settings)

    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        if stopping:  # a second Ctrl-C (or SIGTERM) while stopping: keep stopping in order
            return
        stopping = True
        raise _Stop(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, _Child] = {}
    try:
        children["web"] = _Child("web", _gunicorn_command(host, port, web_workers), env,
                                 ready=lambda _proc: _port_open(host, port))
        children["web"].start()
        if with_worker:
            children["worker"] = _Child("worker", [
                sys.executable, "-m", "celery", "-A", "worker.jobs.app", "worker", "--pool", "solo",
                "--loglevel", "INFO", "--without-mingle", "--without-gossip", "-n", f"serve@{socket.gethostname()}"],
                env, ready=_worker_ready(redis_client(settings.redis.url), settings.redis.namespace))
            children["worker"].start()
        deadline = time.monotonic() + ready_timeout
        announced = False
        while True:
            for child in children.values():
                child.check()
            if not announced and children["web"].was_ready:
                shown = "localhost" if host in ("0.0.0.0", "::") else host
                print(f"InstaBoost is running at http://{shown}:{port}/  (Ctrl-C stops it)", flush=True)
                announced = True
            elif not announced and time.monotonic() > deadline:
                _say(f"the web app did not start on {host}:{port} within {ready_timeout:.0f} s; its log above says why")
                return 1
            time.sleep(0.2 if not announced else 0.5)
    except _Fatal as exc:
        _say(f"cannot start: {exc}; stopping")
        return 1
    except _Stop:
        _say("stopping (waiting for the worker to finish its current variant)")
        return 0
    finally:
        stopping = True  # from here on signals are swallowed by on_signal until the children are gone
        try:
            _stop({n: c.proc for n, c in children.items() if c.proc is not None})
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m worker.cli.serve`."""
    parser = argparse.ArgumentParser(prog="instaboost serve", description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
