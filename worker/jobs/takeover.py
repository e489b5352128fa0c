"""A restarted worker hands back at once the jobs its dead predecessor left ``running``.

A worker process's id is ``<node name>:<pid>:<random>`` (worker/jobs/heartbeat.py), and a restarted worker
keeps its node name: ``instaboost serve`` names its worker ``serve@<host>``, and compose's worker container
keeps its hostname across restarts (``-n worker@%h``). A job ``running`` under another id with this node name
was left by an earlier process of this name that died without handing it back (kill -9, out of memory).
The recovery loop would send it again only once that process's heartbeat expired (``worker.heartbeat_ttl``) and
stayed missing for two beats: a minute with the defaults. At startup, before loading its models, a worker
judges each such predecessor and hands its jobs back as soon as it is known dead:

- no heartbeat: dead;
- a heartbeat written in this machine's pid namespace (same kernel boot id and pid namespace, see
  ``process_facts``): dead unless that pid still runs with the same start time (a prefork sibling, left alone
  quietly, or a second worker started with the same name by mistake, left alone with a warning);
- a heartbeat from elsewhere (an earlier incarnation of this container, another machine): dead once its
  remaining TTL shows two missed beats; one that is refreshed meanwhile belongs to a live worker that shares
  this name by mistake, whose jobs are left alone (a warning says so).

A dead predecessor's heartbeat is removed (the web app stops counting it) and its jobs go back through the
recovery loop's path (``JobRecovery.recover_orphan``): queued and sent again, poisoned after ``worker.max_attempts``
deliveries, a ``cancelling`` one cancelled. Every change is conditional on the job's ``worker`` column.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from sqlalchemy import select

from shared import worker_registry
from shared.db import session_scope
from shared.store.tables import Job, JobStatus

log = logging.getLogger("instaboost.takeover")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> list[str]:
    stat = _read(f"/proc/{pid}/stat")
    return stat.rpartition(")")[2].split() if stat else []  # the command name, in parentheses, may hold spaces


def process_start(pid: int) -> str | None:
    """Return when process pid started (clock ticks since boot, from /proc), or None where unknown."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5): starttime


def is_sibling(pid: int | None) -> bool:
    """Return True when process pid has this process's parent (another child of one prefork worker)."""
    fields = _stat(pid) if pid and pid != os.getpid() else []
    return len(fields) > 1 and fields[1] == str(os.getppid())  # field 4 of proc(5): ppid


def process_facts() -> dict[str, str]:
    """Return what tells this process apart on its machine (Linux; empty elsewhere): boot id, pid namespace, start."""
    facts = {"boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid_start": process_start(os.getpid())}
    try:
        facts["pid_ns"] = os.readlink("/proc/self/ns/pid")
    except OSError:
        facts["pid_ns"] = None
    return {k: v for k, v in facts.items() if v}


def node_of(worker_id: str) -> str:
    """Return the node name of a worker id ``<node>:<pid>:<random>``."""
    parts = worker_id.rsplit(":", 2)
    return parts[0] if len(parts) == 3 else worker_id


def pid_of(worker_id: str) -> int | None:
    """Return the pid part of a worker id ``<node>:<pid>:<random>``."""
    parts = worker_id.rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def local_verdict(beat: dict, here: dict[str, str]) -> str | None:
    """Return "dead" or "alive" for a heartbeat written in this pid namespace, None when it came from elsewhere."""
    if not (here.get("boot_id") and here.get("pid_ns") and beat.get("boot_id") == here["boot_id"]
            and beat.get("pid_ns") == here["pid_ns"] and isinstance(beat.get("pid"), int)):
        return None
    start = process_start(beat["pid"])
    return "alive" if start is not None and start == beat.get("pid_start") else "dead"


class Takeover:
    """Judge this worker's predecessors (same node name) and hand their jobs back (see the module docstring)."""

    def __init__(self, recovery, node: str, own_id: str, interval: float, ttl: float, poll: float = 0.5):
        self.recovery = recovery
        self.redis = recovery.redis
        self.namespace = recovery.namespace
        self.node = node
        self.own_id = own_id
        self.interval = float(interval)
        self.ttl = float(ttl)
        self.poll = poll
        self.here = process_facts()
        self._stop = threading.Event()

    def predecessors(self) -> dict[str, list]:
        """Return {worker id: its jobs running or cancelling} for the other ids with this node name."""
        with session_scope(self.recovery.db_url) as s:
            rows = s.execute(select(Job.id, Job.status, Job.worker, Job.attempts, Job.model, Job.kind, Job.batch_id)
                             .where(Job.status.in_([JobStatus.running, JobStatus.cancelling]))).all()
        out: dict[str, list] = {}
        for r in rows:
            if r.worker and r.worker != self.own_id and node_of(r.worker) == self.node:
                out.setdefault(r.worker, []).append(r)
        return out

    def _judge(self, worker_id: str, last_ttl: dict[str, int]) -> str | None:
        """Return "dead", "alive" or None (not known yet) for one predecessor."""
        key = worker_registry.heartbeat_key(worker_id, self.namespace)
        raw, remaining = self.redis.get(key), self.redis.pttl(key)
        if raw is None or remaining == -2:
            return "dead"
        try:
            beat = json.loads(raw)
        except ValueError:
            beat = {}
        verdict = local_verdict(beat if isinstance(beat, dict) else {}, self.here)
        if verdict is not None:
            return verdict
        if remaining >= 0 and worker_id in last_ttl and remaining > last_ttl[worker_id]:
            return "alive"  # refreshed while we watched
        last_ttl[worker_id] = remaining
        # A live worker refreshes every interval, so its remaining TTL stays above ttl - interval; below
        # ttl - 2 intervals it has missed two beats (the recovery loop's own confirmation).
        if 0 <= remaining < 1000 * (self.ttl - 2 * self.interval):
            return "dead"
        return None

    def run(self) -> list[int]:
        """Hand back the jobs of every predecessor found dead (watching for at most one heartbeat TTL); return them."""
        pending = self.predecessors()
        handed: list[int] = []
        last_ttl: dict[str, int] = {}
        deadline = time.monotonic() + self.ttl + self.interval
        while pending and not self._stop.is_set():
            for worker_id in list(pending):
                verdict = self._judge(worker_id, last_ttl)
                if verdict == "alive" and is_sibling(pid_of(worker_id)):
                    del pending[worker_id]  # a prefork sibling: one worker, several processes of its name
                elif verdict == "alive":
                    log.warning("takeover: worker %s runs under this worker's name %s and is alive: two workers "
                                "share one name (-n); its jobs %s are left to it. Give each worker its own name.",
                                worker_id, self.node, [r.id for r in pending[worker_id]])
                    del pending[worker_id]
                elif verdict == "dead":
                    self.redis.delete(worker_registry.heartbeat_key(worker_id, self.namespace))
                    jobs = pending.pop(worker_id)
                    done = {r.id: self.recovery.recover_orphan(r, f"died (its successor {self.own_id} took over)")
                            for r in jobs}
                    handed += [job_id for job_id, kind in done.items() if kind]
                    log.warning("takeover: predecessor %s is dead; its jobs %s handed back at once (%s)", worker_id,
                                [r.id for r in jobs], ", ".join(f"{j}: {k or 'already moved on'}"
                                                                for j, k in done.items()))
            if pending and (time.monotonic() > deadline or self._stop.wait(self.poll)):
                break  # past one TTL its heartbeat is gone or refreshed: the recovery loop's ordinary pass decides
        return handed

    def start(self) -> "Takeover":
        """Run in a daemon thread (the worker loads its models meanwhile); errors are logged, the recovery loop remains."""
        def guarded():
            try:
                self.run()
            except Exception as exc:
                log.warning("takeover: failed (%s: %s); the recovery loop will hand the jobs back instead",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")

        threading.Thread(target=guarded, name="instaboost-takeover", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
