"""The kinds of job a worker runs, one small class each: its rows, their generation requests, runs and scores.

- ``BoostJob``: an InstaBoost job (``/api/jobs``, a calibration sweep's jobs): one row per variant (the
  original, then every multiplier x layer mode), each run scored, the job's progress counted in variants;
- ``OpenAIJob``: a ``/v1`` chat completion or completion job: one row per choice (and prompt), named after
  its run; the text, usage and logprobs are stored, nothing is scored, and a streaming job publishes its
  tokens as they come (a Redis stream, ``shared.streaming.publish_event``).

The batch runner (``worker.jobs.runner``) treats every kind alike through ``job_kind``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from typing import Any, Callable, Mapping

from celery.exceptions import SoftTimeLimitExceeded

from shared.chat import choice_index
from shared.completions import openai_request, openai_rows
from shared.job_request import JobRequest, Variant
from shared.settings import Settings, get_settings
from shared.store import lifecycle
from shared.store.tables import Run
from shared.streaming import publish_event
from shared.worker_registry import redis_client, stream_key
from worker.jobs.endings import ShutdownRequested
from worker.scoring import judge_config, score_results

log = logging.getLogger("instaboost.worker")



class BoostJob:
    """An InstaBoost job: its variants are the rows; each run is scored and counts towards progress."""

    counts_progress = True  # the job's progress is its stored variants out of all

    def __init__(self, params: Mapping[str, Any]):
        self.request = JobRequest.from_params(params)
        self.engine = self.request.engine
        self.attention = bool(self.request.attention)

    def rows(self) -> list[Variant]:
        """Return the job's rows: every variant, the original first."""
        return self.request.variants()

    @staticmethod
    def name(row: Variant) -> str:
        """Return the run name a row is stored under."""
        return row.name

    def generation_request(self, row: Variant):
        """Return the engine's request for a row."""
        return self.request.generation_request(row)

    def score_group(self) -> tuple[bool, bool] | None:
        """Return the scoring a row asks for (rows asking the same are scored in one pass), None: not scored."""
        return self.request.score_perplexity, self.request.judge

    def publisher(self, job_id: int, attempt: int) -> None:
        """Return None: an InstaBoost job does not stream."""
        return None

    def record(self, session, job_id: int, row: Variant, result, score: dict | None, engine) -> Run:
        """Store a row's run (once: a redelivery's second write keeps the first)."""
        return lifecycle.record_run(
            session, job_id, row.name, multiplier=row.multiplier,
            layers="none" if row.is_original else row.layer_mode, heads=self._heads(row, engine),
            output_text=result.text, prompt_tokens=result.prompt_tokens, output_tokens=result.output_tokens,
            seconds=result.seconds, attention_mass=result.attention_mass, finish_reason=result.finish_reason,
            scores=score)

    def _heads(self, row: Variant, engine) -> Any:
        if row.is_original:
            return None
        if self.request.head_boost_percentage >= 100:
            return "all"
        return self.request.boost_spec(row).resolve_heads(engine.n_layers, engine.n_heads)


class OpenAIJob:
    """A chat completion or completion job: its runs are the rows; text and usage are stored, not scored."""

    counts_progress = False

    def __init__(self, params: Mapping[str, Any]):
        self.params = params
        self.engine = params.get("engine") or "fast"
        self.attention = False

    def rows(self) -> list[str]:
        """Return the job's rows: its run names (a chat job's choices, a completion's prompts and choices)."""
        return openai_rows(self.params)

    @staticmethod
    def name(row: str) -> str:
        """Return the run name a row is stored under (the row itself)."""
        return row

    def generation_request(self, row: str):
        """Return the engine's request for a row."""
        return openai_request(self.params, row)

    def score_group(self) -> None:
        """Return None: an OpenAI job stores its text and usage only."""
        return None

    def publisher(self, job_id: int, attempt: int) -> Callable[[dict], None] | None:
        """Return a function that appends an event to the job's stream, or None when the job does not stream."""
        if not self.params.get("stream"):
            return None
        settings = get_settings()
        redis, key = _redis(settings.redis.url), stream_key(settings.redis.namespace, job_id)

        seq = itertools.count()  # numbers this delivery's events, so a reader sees a gap
        # Deltas come from the decoding loop, end events from the storer thread: one at a time, in seq order.
        lock = threading.Lock()

        def publish(event: dict) -> None:
            try:
                with lock:
                    publish_event(redis, key, {**event, "attempt": attempt, "seq": next(seq)})
            except Exception as exc:  # streaming is best effort: the stored result is the answer
                log.warning("job %s: could not publish a stream event (%s)", job_id, type(exc).__name__)

        return publish

    def record(self, session, job_id: int, row: str, result, score: dict | None, engine) -> Run:
        """Store a row's run (once: a redelivery's second write keeps the first)."""
        mults = [x for _, _, x in result.spans]
        return lifecycle.record_run(
            session, job_id, row, multiplier=max(mults, key=lambda x: abs(x - 1)) if mults else 1.0,
            layers=self.params["layers"] if mults else "none", heads=None, output_text=result.text,
            prompt_tokens=result.prompt_tokens, output_tokens=result.output_tokens, seconds=result.seconds,
            attention_mass=None, finish_reason=result.finish_reason, logprobs=result.logprobs)

    @staticmethod
    def end_event(row: str, result) -> dict:
        """Return the stream event that closes a row's choice."""
        return {"type": "end", "index": choice_index(row) or 0, "finish_reason": result.finish_reason,
                "logprobs": result.logprobs, "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.output_tokens}


JobKind = BoostJob | OpenAIJob


def job_kind(params: Mapping[str, Any]) -> JobKind:
    """Return the kind of job stored with params (raises InstaBoostError for params it cannot read)."""
    return OpenAIJob(params) if openai_rows(params) is not None else BoostJob(params)


def row_count(params: Mapping[str, Any]) -> int | None:
    """Return how many rows a job with these stored params has, or None when they cannot be read."""
    try:
        return len(job_kind(params).rows())
    except Exception:  # noqa: BLE001 - stored params it cannot read: its own delivery fails it with the reason
        return None


def score_rows(engine, kinds: list[JobKind], requests: list, results: list,
               settings: Settings) -> list[dict | None]:
    """Score rows' outputs (worker.scoring), row i being of kinds[i]: one pass per scoring choice, whatever the job.

    A kind that is not scored gets None. One perplexity pass serves every row of a choice, whichever job it
    comes from. A scorer's failure is logged and stored with the rows, never fails a job.
    """
    scores: list[dict | None] = [None] * len(kinds)
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, kind in enumerate(kinds):
        group = kind.score_group()
        if group is not None:
            groups.setdefault(group, []).append(i)
    for idx in groups.values():
        jobs = [kinds[i].request for i in idx]
        for i, score in zip(idx, _score(engine, jobs, [requests[i] for i in idx], [results[i] for i in idx],
                                        settings)):
            scores[i] = score
    return scores


def _score(engine, jobs: list[JobRequest], gen_requests, results, settings: Settings) -> list[dict | None]:
    first = jobs[0]
    try:
        judge = judge_config(settings) if first.judge else None
        scores = score_results(engine, gen_requests, results, cases=[j.case() for j in jobs],
                               perplexity=first.score_perplexity, judge=judge,
                               copy_words=settings.scoring.copy_words)
        if first.judge and judge is None:
            for s in scores:
                s["judge_reason"] = "no judge configured on this worker (judge.url is empty)"
        return scores
    except (SoftTimeLimitExceeded, ShutdownRequested):
        raise
    except Exception as exc:
        log.exception("job: scoring failed")
        return [{"score_error": f"{type(exc).__name__}: {exc}"[:500]} for _ in results]


@functools.cache
def _redis(url: str):
    return redis_client(url)
