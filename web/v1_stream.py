"""Streamed chat completions (SSE): the text deltas a worker appends to Redis, relayed as OpenAI chunks
(ChatFrames), or as the Responses API's events (web.v1_responses.ResponsesFrames).

The worker appends {"type": "delta"|"end", "attempt", "seq", ...} events to a Redis stream per job
(shared.streaming.publish_event); a stream here waits on it with blocking reads (XREAD BLOCK), waking when an
event arrives or a keepalive or a look at the job is due. A stream waits v1.wait_seconds for text, and as long
again after each piece (a stall bound, not a total); a client that goes away cancels the job, unless another
stream of the same job (the client's retry, web.v1's idempotency) still listens.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from flask import Response, stream_with_context
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from shared.chat import CHAT_VARIANT, choice_variant, completion_id, fingerprint
from shared.logprobs import chat_logprobs
from shared.errors import Conflict
from shared.store import lifecycle
from shared.store.tables import Job, JobStatus, Run
from shared.streaming import read_events
from shared.worker_registry import redis_client, stream_key
from web.context import services
from web.v1_errors import job_failure, openai_error, timeout_error

log = logging.getLogger(__name__)
POLL_SECONDS = 0.1  # how often a waiting (not streamed) completion looks at its job
STREAM_KEEPALIVE_SECONDS = 1.0  # an SSE comment this often while no text arrives: a gone client is noticed


def chat_run(session, job_id: int, variant: str = CHAT_VARIANT) -> Run | None:
    """Return the stored run of a chat job (or another variant: a completion's first prompt, p0), if it has one."""
    return session.execute(select(Run).where(Run.job_id == job_id, Run.variant == variant)).scalar_one_or_none()


def chat_runs(session, job_id: int, n: int) -> list[Run] | None:
    """Return the stored runs of a chat job's n choices in order, or None while any is missing."""
    names = [choice_variant(i) for i in range(n)]
    runs = {r.variant: r for r in session.scalars(select(Run).where(Run.job_id == job_id, Run.variant.in_(names)))}
    return [runs[v] for v in names] if len(runs) == n else None


def sse(data: Any) -> str:
    """Return one server-sent event carrying data as JSON."""
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


class ChatFrames:
    """The chat.completion.chunk framing of a streamed chat completion (the default of stream_completion).

    With n > 1 choices every chunk carries its choice's index; each choice gets its own finish chunk.
    """

    variant = CHAT_VARIANT  # the run a stream falls back to once its job has finished

    def __init__(self, job_id: int, params: dict):
        self.poll_path = f"/v1/chat/completions/{job_id}"
        self.n = int(params.get("n") or 1)
        self.base = {"id": completion_id(job_id), "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": params["model"], "system_fingerprint": fingerprint(params)}

    def _chunk(self, delta: dict, finish: str | None = None, logprobs: dict | None = None, index: int = 0) -> str:
        return sse({**self.base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                               "finish_reason": finish}]})

    def logprobs(self, end: dict) -> list[str]:
        """Each choice's tokens' logprobs, in one chunk before its finish (the worker reports them when the row ends)."""
        out = []
        for i, stored in enumerate(end.get("logprobs_list") or [end.get("logprobs")]):
            lp = chat_logprobs(stored)
            if lp is not None:
                out.append(self._chunk({"content": ""}, None, lp, index=i))
        return out

    def start(self) -> list[str]:
        return [self._chunk({"role": "assistant", "content": ""}, index=i) for i in range(self.n)]

    def delta(self, text: str, index: int = 0) -> list[str]:
        return [self._chunk({"content": text}, index=index)]

    def finish(self, end: dict) -> list[str]:
        # The prompt is read once for all choices; completion_tokens sums them (end, as stream_completion sums).
        p, c = int(end.get("prompt_tokens", 0)), int(end.get("completion_tokens", 0))
        reasons = end.get("finish_reasons") or [end.get("finish_reason", "stop")]
        return [*self.logprobs(end), *(self._chunk({}, reason, index=i) for i, reason in enumerate(reasons)),
                sse({**self.base, "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
                                                            "total_tokens": p + c}}),
                "data: [DONE]\n\n"]

    def failure(self, error: dict) -> list[str]:
        return [sse(error), "data: [DONE]\n\n"]  # the openai SDK raises an APIError for an event with "error"


def _combined(ends: dict[int, dict], n: int) -> dict:
    """Return the end of a stream of n choices: each one's finish reason, completion tokens summed."""
    return {"finish_reason": ends[0].get("finish_reason", "stop"),
            "finish_reasons": [ends[i].get("finish_reason", "stop") for i in range(n)],
            "logprobs": ends[0].get("logprobs"), "logprobs_list": [ends[i].get("logprobs") for i in range(n)],
            "prompt_tokens": int(ends[0].get("prompt_tokens", 0)),
            "completion_tokens": sum(int(ends[i].get("completion_tokens", 0)) for i in range(n))}


def stream_completion(job_id: int, params: dict, wait: float, on_end: Callable[[], None] = lambda: None,
                      frames=None):
    """Yield the completion in frames' framing (ChatFrames: chat.completion.chunk events, a usage chunk, [DONE]).

    on_end is called when the stream ends, however it ends. The deadline is a stall bound: wait seconds for the
    first text and for each next piece. While nothing arrives an SSE comment goes out every
    STREAM_KEEPALIVE_SECONDS, so a client that went away is noticed (the write fails, the server closes this
    generator) and its job is cancelled.
    """
    s = services()
    redis = redis_client(s.settings.redis.url)
    key = stream_key(s.settings.redis.namespace, job_id)
    listeners = _listeners_key(s.settings.redis.namespace, job_id)
    frames = frames or ChatFrames(job_id, params)
    done = False  # the job ended (or the stream gave up on it): closing now cancels nothing
    abandoned = False
    try:
        redis.incr(listeners)
        redis.expire(listeners, 86400)
    except Exception:  # Redis down: the loop below reports it
        pass
    try:
        yield from frames.start()
        n = int(params.get("n") or 1)  # choices: each event names its index; the stream ends after all n
        sent = [0] * n  # characters of each choice already sent
        attempt, text, cursor = None, [""] * n, "0"
        ends: dict[int, dict] = {}
        end: dict | None = None

        def delta(piece: str, i: int):
            return frames.delta(piece, i) if n > 1 else frames.delta(piece)

        now = time.monotonic()
        deadline, next_check, next_keepalive = now + wait, now + 0.5, now + STREAM_KEEPALIVE_SECONDS
        outcome: Response | None = None
        seq = 0  # the next event number of this delivery; after a gap the stored run supplies the text
        gap = False
        while end is None:
            try:  # wake on the next event, or when a keepalive or a look at the job is due
                events, cursor = read_events(redis, key, cursor, max(0.001, min(next_keepalive, next_check)
                                                                      - time.monotonic()))
            except Exception as exc:  # redis-py connection errors
                outcome = openai_error(503, f"the broker (Redis) became unreachable while streaming job {job_id} "
                                            f"({type(exc).__name__}); poll GET {frames.poll_path}",
                                       retry=False)
                break
            for event in events:
                if event.get("attempt") != attempt:  # a redelivery starts over: skip what was already sent
                    attempt, text, ends, seq, gap = event.get("attempt"), [""] * n, {}, 0, False
                if event.get("seq", seq) != seq:  # trimmed (STREAM_MAXLEN): wait for the stored run
                    gap = True
                seq = int(event.get("seq", seq)) + 1
                i = int(event.get("index") or 0)
                if gap or not 0 <= i < n:
                    continue
                if event.get("type") == "delta":
                    text[i] += event["text"]
                    if len(text[i]) > sent[i]:
                        yield from delta(text[i][sent[i]:], i)
                        sent[i] = len(text[i])
                        now = time.monotonic()
                        deadline, next_keepalive = now + wait, now + STREAM_KEEPALIVE_SECONDS  # text arrived
                elif event.get("type") == "end":
                    ends[i] = event
            if events and gap:  # the job is alive, though its text now comes from the stored run
                deadline = time.monotonic() + wait
            if len(ends) == n:
                end = _combined(ends, n)
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
                            if n > 1:
                                runs = chat_runs(session, job_id, n)
                            else:
                                run = chat_run(session, job_id, getattr(frames, "variant", CHAT_VARIANT))
                                runs = None if run is None else [run]
                            if job.status is JobStatus.succeeded and runs is not None:
                                # Stored by an earlier delivery (or its events were lost): send what is missing.
                                for i, run in enumerate(runs):
                                    if len(run.produced_text) > sent[i]:
                                        yield from delta(run.produced_text[sent[i]:], i)
                                    ends[i] = {"finish_reason": run.finish_reason or "stop", "logprobs": run.logprobs,
                                               "prompt_tokens": run.prompt_tokens,
                                               "completion_tokens": run.output_tokens}
                                end = _combined(ends, n)
                            else:
                                outcome = job_failure(job)
                            break
                except SQLAlchemyError as exc:
                    outcome = openai_error(503, f"the database became unreachable while streaming job {job_id} "
                                                f"({type(exc).__name__}); poll GET {frames.poll_path}",
                                           retry=False)
                    break
                if now > deadline:
                    outcome = timeout_error(job_id, wait, frames.poll_path)
                    break
        done = True
        if outcome is not None:
            yield from frames.failure(json.loads(outcome.get_data(as_text=True)))
            return
        yield from frames.finish(end)
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


def sse_response(job_id: int, params: dict, wait: float, release_slot: Callable[[], None], frames=None) -> Response:
    """Return job_id's answer as a server-sent event stream that holds its wait slot until the response closes."""
    resp = Response(stream_with_context(stream_completion(job_id, params, wait, release_slot, frames)),
                    mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                                           "X-InstaBoost-Job-Id": str(job_id)})
    resp.call_on_close(release_slot)  # also when the stream never started: the server closes every response
    return resp


def wait_for_job(session, job_id: int, wait: float, poll_path: str | None = None) -> Job | Response:
    """Return job_id once it has finished, or the 504 that names poll_path once wait seconds have passed."""
    deadline = time.monotonic() + wait
    while True:
        job = session.get(Job, job_id, populate_existing=True)
        session.commit()
        if job.status.finished:
            return job
        if time.monotonic() > deadline:
            return timeout_error(job_id, wait, poll_path)
        time.sleep(POLL_SECONDS)
