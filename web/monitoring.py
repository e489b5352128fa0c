"""GET /metrics: the deployment's numbers in the Prometheus text format (prometheus-client).

Everything is read at scrape time, so any web process (gunicorn runs several) answers the same and no
multiprocess directory is needed: the store gives jobs by status, failed jobs by kind and recent
throughput; Redis gives queue depth per model and the live workers' heartbeats, each of which carries that
worker process's own counters and histograms (shared.metrics: steps, rows, tokens, job latencies, time to
first token), exposed here labelled by worker id. So Prometheus scrapes one target, the web app, however
many workers run on however many hosts. Behind the API token like every data route (``Authorization:
Bearer``). A store or broker outage gives ``instaboost_source_up{source=...} 0`` and the numbers that
remain, not an error.
"""

from __future__ import annotations

import logging
from itertools import accumulate

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.monitoring import overview
from shared.store import stats
from web.context import db, services

log = logging.getLogger(__name__)
bp = Blueprint("monitoring", __name__)

# Worker counters in the heartbeat's "metrics" -> (family name, help).
WORKER_COUNTERS = {
    "steps": ("instaboost_worker_steps", "Decoding rounds (generate() calls over a cohort's rows) this worker process ran."),
    "rows": ("instaboost_worker_rows", "Rows (job variants) this worker process decoded; rate() is rows per second."),
    "tokens": ("instaboost_worker_tokens", "Tokens this worker process generated; rate() is tokens per second."),
    "busy_seconds": ("instaboost_worker_busy_seconds", "Seconds this worker process spent decoding steps."),
}
WORKER_HISTOGRAMS = {
    "step_rows": ("instaboost_worker_step_rows", "Rows per decoding round."),
    "queue_wait": ("instaboost_job_queue_wait_seconds", "Jobs' time from submission to a worker's claim "
                   "(queued -> running), observed by the worker that claimed them."),
    "run_time": ("instaboost_job_run_seconds", "Jobs' time from a worker's claim to their end (running -> done)."),
    "ttft": ("instaboost_completion_ttft_seconds", "Streamed chat completions' time from submission to their "
             "first generated text (time to first token)."),
}


class Collector:
    """A prometheus_client collector over one scrape's reads of the store and Redis."""

    def __init__(self, session, client, settings):
        self.session, self.client, self.settings = session, client, settings

    def _up(self) -> dict[str, bool]:
        up = {}
        try:
            self.session.execute(text("SELECT 1"))
            self.session.commit()
            up["database"] = True
        except Exception:  # any driver error: the store is away
            self.session.rollback()
            up["database"] = False
        try:
            up["broker"] = bool(self.client.ping())
        except Exception:
            up["broker"] = False
        return up

    def collect(self):
        """Yield every metric family (called by generate_latest)."""
        up = self._up()
        g = GaugeMetricFamily("instaboost_source_up", "1 when /metrics could read the source (database, broker).",
                              labels=["source"])
        for source, ok in up.items():
            g.add_metric([source], 1.0 if ok else 0.0)
        yield g
        view = None
        if all(up.values()):
            try:
                view = overview(self.session, self.client, self.settings)
            except (RedisError, SQLAlchemyError) as exc:  # went away since the check: report what remains
                self.session.rollback()
                log.warning("/metrics: could not read the queue (%s)", type(exc).__name__)
        if view is not None:
            yield from self._queue(view)
            yield from self._workers(view["workers"])
        if up["database"]:
            try:
                failures = stats.failures_by_kind(self.session)
                self.session.commit()
            except SQLAlchemyError as exc:
                self.session.rollback()
                log.warning("/metrics: could not count failures (%s)", type(exc).__name__)
            else:
                g = GaugeMetricFamily("instaboost_failed_jobs", "Failed jobs in the store, by kind of failure.",
                                      labels=["kind"])
                for kind, n in failures.items():
                    g.add_metric([kind], n)
                yield g

    @staticmethod
    def _queue(view: dict):
        jobs = GaugeMetricFamily("instaboost_jobs", "Jobs in the store by model and status.", labels=["model", "status"])
        for model, status, n in view["jobs_by_status"]:
            jobs.add_metric([model, status], n)
        yield jobs
        per_model = {
            "messages": ("instaboost_queue_messages", "Messages waiting in the model's broker queue (every priority)."),
            "queued": ("instaboost_queue_jobs", "Jobs of the model waiting to be claimed (status queued)."),
            "workers": ("instaboost_model_workers", "Live workers that serve the model."),
            "jobs_per_second": ("instaboost_throughput_jobs_per_second",
                                f"Jobs of the model finished per second over the last {stats.RECENT_WINDOW:.0f} s."),
            "rows_per_second": ("instaboost_throughput_rows_per_second",
                                f"Rows of the model stored per second over the last {stats.RECENT_WINDOW:.0f} s."),
            "oldest_queued_seconds": ("instaboost_queue_oldest_age_seconds",
                                      "Age of the model's oldest queued job (absent when none waits)."),
        }
        for key, (name, doc) in per_model.items():
            g = GaugeMetricFamily(name, doc, labels=["model"])
            for m in view["models"]:
                if m[key] is not None:
                    g.add_metric([m["model"]], m[key])
            yield g
        g = GaugeMetricFamily("instaboost_queue_wait_estimate_seconds", "A rough wait before a new job of the model "
                              "starts (queued jobs / recent jobs per second; absent when unknown).", labels=["model"])
        for m in view["models"]:
            if m["wait"]["seconds"] is not None:
                g.add_metric([m["model"]], m["wait"]["seconds"])
        yield g

    @staticmethod
    def _workers(workers: list[dict]):
        up = GaugeMetricFamily("instaboost_worker_up", "1 for each live worker process (from its heartbeat).",
                               labels=["worker", "hostname"])
        age = GaugeMetricFamily("instaboost_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.",
                                labels=["worker"])
        started = GaugeMetricFamily("instaboost_worker_start_time_seconds", "When the worker process started (Unix time).",
                                    labels=["worker"])
        running = GaugeMetricFamily("instaboost_worker_running_jobs", "Jobs the worker runs now (its cohort).",
                                    labels=["worker"])
        tps = GaugeMetricFamily("instaboost_worker_tokens_per_second", "Tokens per second of the worker's last "
                                "decoding step (all its rows together).", labels=["worker"])
        done = CounterMetricFamily("instaboost_worker_jobs", "Jobs this worker process ended, by how they ended; "
                                   "rate() is jobs per second.", labels=["worker", "status"])
        counters = {k: CounterMetricFamily(name, doc, labels=["worker"]) for k, (name, doc) in WORKER_COUNTERS.items()}
        histograms = {k: HistogramMetricFamily(name, doc, labels=["worker"]) for k, (name, doc) in WORKER_HISTOGRAMS.items()}
        for w in workers:
            wid = str(w["worker"])
            up.add_metric([wid, str(w["hostname"])], 1)
            if w["heartbeat_age_seconds"] is not None:
                age.add_metric([wid], max(0.0, w["heartbeat_age_seconds"]))
            if w["started_at"] is not None:
                started.add_metric([wid], w["started_at"].timestamp())
            running.add_metric([wid], len(w["running"]))
            numbers = w["metrics"]
            if not numbers:
                continue  # an older worker without numbers in its heartbeat
            tps.add_metric([wid], float(numbers.get("tokens_per_second") or 0))
            for status, n in (numbers.get("jobs") or {}).items():
                done.add_metric([wid, str(status)], n)
            for key, family in counters.items():
                family.add_metric([wid], float(numbers.get(key) or 0))
            for key, family in histograms.items():
                h = numbers.get(key)
                if isinstance(h, dict) and len(h.get("counts", [])) == len(h.get("le", [])) + 1:
                    cumulative = list(accumulate(h["counts"]))
                    buckets = [(_le(b), c) for b, c in zip(h["le"], cumulative)] + [("+Inf", cumulative[-1])]
                    family.add_metric([wid], buckets, sum_value=h["sum"])
        yield from (up, age, started, running, tps, done, *counters.values(), *histograms.values())


def _le(bound) -> str:
    return repr(float(bound))


@bp.get("/metrics")
def metrics():
    """Answer the Prometheus text format: jobs, queues, workers and their latencies (see the module docstring)."""
    s = services()
    body = generate_latest(Collector(db(), s.redis, s.settings))
    return Response(body, mimetype=None, content_type=CONTENT_TYPE_LATEST)
