"""Streamed chat completions (SSE): the text deltas a worker appends to Redis, relayed as OpenAI chunks.

The worker appends {"type": "delta"|"end", "attempt", ...} events to a Redis list per job
(shared.workers.stream_key). A stream waits v1.wait_seconds for text, and as long again after each piece
(a stall bound, not a total); a client that goes away cancels the job, unless another stream of the same
job (the client's retry, web.v1's idempotency) still listens.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from flask import Response
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from shared.chat import CHAT_VARIANT, completion_id, fingerprint
from shared.completions import is_completion, prompt_text
from shared.logprobs import chat_logprobs, completion_logprobs
from shared.errors import Conflict
from shared.store import lifecycle
from shared.store.tables import Job, JobStatus, Run
from shared.workers import redis_client, stream_key
from web.context import services
from web.v1_errors import job_failure, openai_error, timeout_error

log = logging.getLogger(__name__)
STREAM_POLL_SECONDS = 0.05
STREAM_KEEPALIVE_SECONDS = 1.0  # an SSE comment this often while no text arrives: a gone client is noticed


def chat_run(session, job_id: int, variant: str = CHAT_VARIANT) -> Run | None:
    """Return the stored run of a chat job (or a completion's first prompt, variant p0), if it has one."""
    return session.execute(select(Run).where(Run.job_id == job_id, Run.variant == variant)).scalar_one_or_none()


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _listeners_key(namespace: str, job_id: int) -> str:
    return f"{namespace}:stream-listeners:{job_id}"


def _cancel_abandoned(s, job_id: int) -> None:
    """Cancel the job of a stream whose client went away (a no-op once it finished)."""
    try:
        with s.sessionmaker() as session:
            lifecycle.cancel_job(session, job_id)
        log.info("the client of streamed job %s went away: job cancelled", job_id)
    except Conflict:  # it finished meanwhile
        pass
    except Exception as exc:  # the database down: the job runs to its end, as if the client had stayed
        log.warning("could not cancel job %s after its client went away: %s", job_id, type(exc).__name__)


def stream_completion(job_id: int, params: dict, wait: float, on_end: Callable[[], None] = lambda: None):
    """Yield the completion as OpenAI chat.completion.chunk events, a usage chunk, then [DONE].

    on_end is called when the stream ends, however it ends. The deadline is a stall bound: wait seconds for the first text and for each next piece. While nothing
    arrives an SSE comment goes out every STREAM_KEEPALIVE_SECONDS, so a client that went away is noticed (the
    write fails, the server closes this generator) and its job is cancelled.
    """
    s = services()
    redis = redis_client(s.settings["redis.url"])
    key = stream_key(s.settings["redis.namespace"], job_id)
    listeners = _listeners_key(s.settings["redis.namespace"], job_id)
    created = int(time.time())
    legacy = is_completion(params)  # /v1/completions: text_completion chunks
    base = {"id": f"cmpl-{job_id}" if legacy else completion_id(job_id),
            "object": "text_completion" if legacy else "chat.completion.chunk", "created": created,
            "model": params["model"], "system_fingerprint": fingerprint(params)}

    def chunk(delta: dict, finish: str | None = None, logprobs: dict | None = None) -> str:
        if legacy:
            return _sse({**base, "choices": [{"index": 0, "text": delta.get("content", ""), "logprobs": logprobs,
                                              "finish_reason": finish}]})
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

    def logprobs_chunk(stored: dict | None) -> str | None:
        """The tokens' logprobs, in one chunk before the last (the worker reports them when the row ends)."""
        if not stored or (legacy and params.get("logprobs") is None):
            return None
        if legacy:
            return chunk({}, None, completion_logprobs([stored.get("prompt") if params["echo"] else None,
                                                        stored.get("output")]))
        lp = chat_logprobs(stored)
        return None if lp is None else chunk({"content": ""}, None, lp)

    done = False  # the job ended (or the stream gave up on it): closing now cancels nothing
    abandoned = False
    try:
        redis.incr(listeners)
        redis.expire(listeners, 86400)
    except Exception:  # Redis down: the loop below reports it
        pass
    try:
        if not legacy:
            yield chunk({"role": "assistant", "content": ""})
        elif params.get("echo"):
            yield chunk({"content": prompt_text(params, 0) or ""})
        sent = 0  # characters of the answer already sent
        attempt, text, cursor = None, "", 0
        end: dict | None = None
        now = time.monotonic()
        deadline, next_check, next_keepalive = now + wait, now + 0.5, now + STREAM_KEEPALIVE_SECONDS
        outcome: Response | None = None
        while end is None:
            try:
                events = redis.lrange(key, cursor, -1)
            except Exception as exc:  # redis-py connection errors
                outcome = openai_error(503, f"the broker (Redis) became unreachable while streaming job {job_id} "
                                            f"({type(exc).__name__}); poll GET /v1/chat/completions/{job_id}",
                                       retry=False)
                break
            for raw in events:
                cursor += 1
                event = json.loads(raw)
                if event.get("attempt") != attempt:  # a redelivery starts over: skip what was already sent
                    attempt, text = event.get("attempt"), ""
                if event.get("type") == "delta":
                    text += event["text"]
                    if len(text) > sent:
                        yield chunk({"content": text[sent:]})
                        sent = len(text)
                        now = time.monotonic()
                        deadline, next_keepalive = now + wait, now + STREAM_KEEPALIVE_SECONDS  # text arrived
                elif event.get("type") == "end":
                    end = event
            if end is not None:
                break
            now = time.monotonic()
            if now >= next_keepalive:
                next_keepalive = now + STREAM_KEEPALIVE_SECONDS
                yield ": waiting\n\n"
            if now >= next_check:
                next_check = now + 0.5
                try:
                    with s.sessionmaker() as session:
                        job = session.get(Job, job_id)
                        if job is not None and job.status.finished:
                            run = chat_run(session, job_id, "p0" if legacy else CHAT_VARIANT)
                            if job.status is JobStatus.succeeded and run is not None:
                                # Stored by an earlier delivery (or its events were lost): send what is missing.
                                if len(run.produced_text) > sent:
                                    yield chunk({"content": run.produced_text[sent:]})
                                end = {"finish_reason": run.finish_reason or "stop", "logprobs": run.logprobs,
                                       "prompt_tokens": run.prompt_tokens, "completion_tokens": run.output_tokens}
                            else:
                                outcome = job_failure(job)
                            break
                except SQLAlchemyError as exc:
                    outcome = openai_error(503, f"the database became unreachable while streaming job {job_id} "
                                                f"({type(exc).__name__}); poll GET /v1/chat/completions/{job_id}",
                                           retry=False)
                    break
                if now > deadline:
                    outcome = timeout_error(job_id, wait)
                    break
            time.sleep(STREAM_POLL_SECONDS)
        done = True
        if outcome is not None:  # the openai SDK raises an APIError for an event carrying "error"
            yield _sse(json.loads(outcome.get_data(as_text=True)))
            yield "data: [DONE]\n\n"
            return
        extra = logprobs_chunk(end.get("logprobs"))
        if extra is not None:
            yield extra
        yield chunk({}, end.get("finish_reason", "stop"))
        p, c = int(end.get("prompt_tokens", 0)), int(end.get("completion_tokens", 0))
        if not legacy or params.get("include_usage"):  # completions: only when asked, as OpenAI streams them
            yield _sse({**base, "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
                                                         "total_tokens": p + c}})
        yield "data: [DONE]\n\n"
    except GeneratorExit:
        abandoned = not done
        raise
    finally:
        try:  # another stream of the same job (a client's retry) may still listen: then the job goes on
            left = redis.decr(listeners)
        except Exception:  # Redis down: nobody can be counted
            left = 0
        redis.close()
        if abandoned and left <= 0:
            _cancel_abandoned(s, job_id)
        on_end()
