"""`instaboost serve`: the whole service on one machine (web app + one Celery worker).

Migrates the database, then runs gunicorn and a solo-pool Celery worker as child processes
against the local Redis, and stops both on Ctrl-C or SIGTERM.

Like compose's ``restart: unless-stopped``, a child that dies (a worker killed, out of memory, or ended
by its time-limit watchdog) is started again, with a growing delay (``RESTART_DELAYS``) while it keeps
dying quickly and a clear message once it has crashed ``CRASH_WARN_AFTER`` times in a row; the other child
keeps running meanwhile (the web app stays up, jobs wait in the queue), and the job the dead worker was
running is sent again by the new worker's sweeper.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--no-worker", action="store_true",
                        help="run only the web app (workers run elsewhere against the same Redis)")


def run_serve(args: argparse.Namespace) -> int:
    """Run `serve` from parsed arguments; return the exit code."""
    return serve(args.host, args.port, web_workers=args.web_workers, with_worker=not args.no_worker)


def _say(msg: str) -> None:
    print(f"instaboost serve: {msg}", file=sys.stderr, flush=True)


def check_redis(url: str) -> str | None:
    """Return None if Redis answers PING at url, else what is wrong and how to fix it."""
    from shared.workers import redis_client

    try:
        redis_client(url).ping()
        return None
    except Exception as exc:  # redis-py raises ConnectionError, TimeoutError, AuthenticationError...
        return (f"cannot reach Redis at {url} ({type(exc).__name__}: {exc}).\n"
                "  Redis is the job queue; start one with `redis-server` (Debian: apt-get install redis-server)\n"
                "  or `docker run -d -p 6379:6379 redis:7`, or point REDIS_URL at a running Redis.")


def _mask(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _child_env(settings) -> dict[str, str]:
    env = dict(os.environ)
    # Children resolve the same settings even when they came from config.yaml or .env.
    env["DATABASE_URL"] = settings["database.url"]
    env["REDIS_URL"] = settings["redis.url"]
    env["INSTABOOST_REDIS_NAMESPACE"] = settings["redis.namespace"]
    if not settings["web.secret_key"]:
        # gunicorn's workers must share one key, or a form served by one fails CSRF at another.
        env["INSTABOOST_WEB_SECRET_KEY"] = secrets.token_hex(32)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _gunicorn_command(host: str, port: int, workers: int) -> list[str]:
    import gunicorn.config

    # Threads: /v1/chat/completions waits for its job (v1.wait_seconds) and streams; a thread per request keeps
    # other requests answered meanwhile, and gthread's worker timeout does not count a request's duration.
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(workers),
           "--worker-class", "gthread", "--threads", "8",
           "--access-logfile", "-", "--graceful-timeout", "10"]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        # Newer gunicorns open one fixed control socket per user: two instances would collide.
        cmd.append("--no-control-socket")
    return cmd + [WSGI_APP]


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((target, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


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


class _Child:
    """One supervised child process: how to start it, and its crash history."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]):
        self.name = name
        self.command = command
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.crashes = 0  # quick crashes in a row
        self.restart_at: float | None = None

    def start(self) -> subprocess.Popen:
        # Own sessions: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        self.proc = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None
        return self.proc

    def check(self) -> None:
        """Notice a death (schedule the restart, say why) or start the child again once its delay is over."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
                _say(f"restarted the {self.name} process (pid {self.proc.pid})")
            return
        code = self.proc.poll()
        if code is None:
            return
        self.crashes = 1 if now - self.started >= STABLE_AFTER else self.crashes + 1
        delay = RESTART_DELAYS[min(self.crashes, len(RESTART_DELAYS)) - 1]
        self.restart_at = now + delay
        _say(f"the {self.name} process (pid {self.proc.pid}) died ({_exit_reason(code)}); restarting it in {delay} s")
        if self.crashes >= CRASH_WARN_AFTER:
            _say(f"the {self.name} process keeps dying: {self.crashes} times in a row, each within {STABLE_AFTER} s "
                 f"of its start (last: {_exit_reason(code)}). Its log above says why (a model that cannot load, "
                 "running out of memory, the database or Redis unreachable). Still restarting it every "
                 f"{RESTART_DELAYS[-1]} s; the web app stays up and jobs wait in the queue. Ctrl-C stops everything.")


def serve(host: str = "127.0.0.1", port: int = 8000, *, web_workers: int = 2, with_worker: bool = True,
          ready_timeout: float = 120.0) -> int:
    """Migrate, start the web app and one worker, print the URL and run until interrupted."""
    from shared.settings import get_settings

    settings = get_settings()
    if not settings["web.api_token"]:
        from shared.settings import OPEN_MODE_MESSAGE

        _say(f"{OPEN_MODE_MESSAGE} (fine on 127.0.0.1; set INSTABOOST_WEB_API_TOKEN before exposing it)")
        if host not in ("127.0.0.1", "localhost", "::1") and not settings["web.allowed_hosts"]:
            # Without a token the web app answers only loopback Host names (web/auth.py: DNS rebinding).
            _say(f"--host {host} without a token: the web app answers only requests for localhost, 127.0.0.1 and "
                 "[::1]; set INSTABOOST_WEB_ALLOWED_HOSTS to the names clients use to reach it (web.allowed_hosts), "
                 "and preferably INSTABOOST_WEB_API_TOKEN")
    problem = check_redis(settings["redis.url"])
    if problem:
        _say(problem)
        return 2
    try:
        from shared.db import upgrade

        upgrade(settings["database.url"])
    except Exception as exc:
        _say(f"cannot migrate the database {_mask(settings['database.url'])} "
             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).\n"
             "  Check DATABASE_URL (the default is a SQLite file instaboost.db in the current folder).")
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
        children["web"] = _Child("web", _gunicorn_command(host, port, web_workers), env)
        web = children["web"].start()
        if with_worker:
            children["worker"] = _Child("worker", [
                sys.executable, "-m", "celery", "-A", "worker.jobs.app", "worker", "--pool", "solo",
                "--loglevel", "INFO", "--without-mingle", "--without-gossip", "-n", f"serve@{socket.gethostname()}"],
                env)
            children["worker"].start()
        if not _wait_port(host, port, web, ready_timeout):
            _say(f"the web app did not start on {host}:{port} (is the port in use?)")
            return 1
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        print(f"InstaBoost is running at http://{shown}:{port}/  (Ctrl-C stops it)", flush=True)
        while True:
            for child in children.values():
                child.check()
            time.sleep(0.5)
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
