"""What a fault-table row acts on: a private PostgreSQL cluster, a private Redis, `instaboost serve`, workers.

Private, so that a row can really restart or empty them: the machine's shared PostgreSQL (5432) and Redis (6379)
are never touched. PostgreSQL runs from the Debian binaries (``/usr/lib/postgresql/*/bin``) as the ``postgres``
user when we are root; Redis runs ``redis-server --appendonly yes`` (as compose runs it) in a temporary folder.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
# The smallest useful job: the original and one boosted variant, 8 tokens each.
JOB = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "multipliers": [2],
       "layer_modes": ["all"], "max_new_tokens": 8}
JOB_VARIANTS = 2
# Short heartbeats and sweeps (as tests/jobs/test_faults.py): recovery in seconds, so the rows fit in a minute.
FAST_ENV = {"INSTABOOST_WORKER_HEARTBEAT_INTERVAL": "0.5", "INSTABOOST_WORKER_HEARTBEAT_TTL": "3",
            "INSTABOOST_SWEEPER_INTERVAL": "1", "INSTABOOST_SWEEPER_OUTBOX_GRACE": "3",
            "INSTABOOST_SWEEPER_LOST_AFTER": "3"}
DONE_LINE = re.compile(r"job (\d+): variant (\S+) done")


def free_port() -> int:
    """Return a TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, timeout: float, every: float = 0.2):
    """Return predicate()'s first truthy value, polling; raise TimeoutError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"never saw {what} within {timeout:.0f} s")
        time.sleep(every)


class PrivateRedis:
    """A redis-server with an append-only file in folder, on a port of its own."""

    def __init__(self, folder: Path):
        self.dir = folder / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it on its port with the data in its folder (an empty folder: an empty Redis)."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", "",
             "--dir", str(self.dir), "--logfile", str(self.dir.parent / "redis.log")])
        wait_for("Redis answering", self.ping, 30, 0.05)

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except Exception:
            return False

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (Redis writes its append-only file, like `docker restart`), or SIGKILL (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(60)

    def wipe(self) -> None:
        """Delete its data (the next start is an empty Redis)."""
        shutil.rmtree(self.dir)
        self.dir.mkdir()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else (shutil.which(name) or name)


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary folder (initdb, trust), on a port of its own."""

    def __init__(self):
        # Its own folder under /tmp: the postgres user must reach it (pytest's tmp_path is private to root).
        self.dir = Path(tempfile.mkdtemp(prefix="instaboost-faults-pg-")) / "pg"
        self.port = free_port()

    def _run(self, *cmd: str) -> None:
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-1000:]}")

    def init(self) -> None:
        """Create the cluster and start it."""
        self.dir.mkdir()
        if os.geteuid() == 0:
            os.chmod(self.dir.parent, 0o755)
            shutil.chown(self.dir, "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres", "-N")
        self.start()

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir), "-o", opts, "-l", str(self.dir / "server.log"),
                  "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop it: fast (sessions closed, as `docker restart` does) or immediate (a crash)."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop it (as a crash: nothing to keep) and delete its folder."""
        try:
            self.stop("immediate")
        except RuntimeError:  # already stopped
            pass
        shutil.rmtree(self.dir.parent, ignore_errors=True)

    def url(self, db: str = "instaboost") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, db: str) -> str:
        """Create an empty database, migrate it to head and return its URL."""
        import psycopg

        from shared.db import upgrade

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        upgrade(self.url(db))
        return self.url(db)


def child_env(db_url: str, redis_url: str, namespace: str, extra: dict[str, str]) -> dict[str, str]:
    """Return the environment of a serve or worker process of the stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTABOOST_") and k != "DATABASE_URL"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               DATABASE_URL=db_url, REDIS_URL=redis_url, INSTABOOST_REDIS_NAMESPACE=namespace, **extra)
    return env


class Serve:
    """`python -m worker.cli.serve` (web app + worker), its output in a log file."""

    def __init__(self, folder: Path, env: dict[str, str], port: int | None = None, name: str = "serve"):
        self.folder = folder
        self.env = env
        self.port = port or free_port()
        self.log_path = folder / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> "Serve":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.cli.serve", "--port", str(self.port)],
                                     cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, redis_url: str, namespace: str, timeout: float = 240) -> "Serve":
        """Wait for the web app's URL line and a worker whose heartbeat says its model is loaded."""
        wait_for("serve's URL line", lambda: self._alive() and "running at http" in self.log(), timeout)
        wait_for("a ready worker", lambda: self._alive() and ready_worker(redis_url, namespace), timeout)
        return self

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
        return True

    def child(self, word: str) -> int | None:
        """Return the pid of serve's child whose command line holds word (gunicorn, celery)."""
        import psutil

        for p in psutil.Process(self.proc.pid).children():
            try:
                if any(word in part for part in p.cmdline()):
                    return p.pid
            except psutil.NoSuchProcess:
                continue
        return None

    def kill_web(self) -> int:
        """SIGKILL the web process: gunicorn's master and its workers (its own process group)."""
        pid = self.child("gunicorn")
        os.killpg(pid, signal.SIGKILL)
        return pid

    def web_up(self) -> bool:
        """Return True when the web app answers HTTP at all (503 included: up, a backing service is not)."""
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self, timeout: float = 60) -> int | None:
        """Ctrl-C, then SIGKILL (serve and its children) if it does not exit in time; return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)
        return self.proc.returncode


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


class Worker:
    """An extra `celery worker --pool solo` beside serve's (a second worker, or another deployment's)."""

    def __init__(self, folder: Path, env: dict[str, str], name: str):
        self.hostname = f"{name}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        self.log_path = folder / f"{name}.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.jobs.app", "worker", "--pool", "solo", "--without-mingle",
             "--without-gossip", "--loglevel", "INFO", "-n", self.hostname],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)


def ready_worker(redis_url: str, namespace: str, not_pid: int | None = None) -> dict | None:
    """Return the heartbeat of a worker whose model is loaded (other than pid not_pid), or None."""
    from shared.worker_registry import live_workers, redis_client

    client = redis_client(redis_url)
    try:
        return next((b for b in live_workers(client, namespace)
                     if b.get("models") and not b.get("starting") and b.get("pid") != not_pid), None)
    except Exception:  # Redis down: no heartbeat to be seen
        return None
    finally:
        client.close()
