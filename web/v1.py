"""The OpenAI-compatible API under /v1: models, chat completions (plain and streamed), files and batches.

Every chat completion is an ordinary stored job (kind "chat"): listed on the pages, exported in the CSV,
recovered by the sweeper. Its id is the job's id. The route enqueues it ahead of other work (see
shared.celery_config.PRIORITY) and waits up to v1.wait_seconds for it; on timeout it answers 504 naming
the job, which GET /v1/chat/completions/<id> (or /api/jobs/<id>) answers once it is done. A streamed
completion relays the text deltas the worker appends to a Redis list (worker.jobs.tasks.stream_key).
Errors take OpenAI's shape: {"error": {"message", "type", "param", "code"}}; invalid input is 400.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context

from shared.chat import CHAT_VARIANT, chat_params, completion_body, completion_id, fingerprint, is_chat
from shared.errors import InstaBoostError, ModelError, NotFound, UnsupportedMediaType, ValidationError
from shared.store import queries, submission
from shared.store.tables import Job, JobStatus, Run
from shared.workers import live_workers, stream_key
from web.context import db, services, submit_kwargs

bp = Blueprint("v1", __name__, url_prefix="/v1")

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
               404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "server_error"}
ERROR_CODES = {401: "invalid_api_key", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "request_too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded",
               503: "service_unavailable", 504: "timeout"}
POLL_SECONDS = 0.1
STREAM_POLL_SECONDS = 0.05


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None, retry: bool | None = None) -> Response:
    """Return an error in OpenAI's shape (secrets scrubbed); retry False tells the openai SDK not to retry it."""
    from web.errors import scrub

    body = {"error": {"message": scrub(message), "type": ERROR_TYPES.get(status, "invalid_request_error"
                                                                          if status < 500 else "server_error"),
                      "param": param, "code": code if code is not None else ERROR_CODES.get(status)}}
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="instaboost"'
    if retry is not None:
        resp.headers["x-should-retry"] = "true" if retry else "false"
    return resp


def error_from_exception(exc: InstaBoostError) -> Response:
    """Map a service error onto OpenAI's: invalid values are 400 (as OpenAI answers them), an unserved model 404."""
    from shared.errors import Unavailable

    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else {}
    param = exc.errors[0]["field"] if exc.errors and exc.errors[0].get("field") else exc.field
    message = exc.message
    if len(exc.errors) > 1:
        message += ": " + "; ".join(str(e.get("message")) for e in exc.errors)
    elif exc.errors and exc.errors[0].get("message") and exc.errors[0]["message"] != exc.message:
        message += ": " + str(exc.errors[0]["message"])
    if isinstance(exc, ModelError):
        return openai_error(404, message, param=param or "model", code="model_not_found")
    if isinstance(exc, ValidationError) or exc.status == 422:
        return openai_error(400, message, param=param, code="invalid_value")
    return openai_error(exc.status, message, param=param, headers=headers)


def _json_body() -> Any:
    from web.api import _json_body as parse

    return parse()


# -- models ----------------------------------------------------------------------------------------------------


def _served() -> list[dict]:
    from shared.errors import Unavailable

    s = services()
    try:
        return live_workers(s.redis, s.settings["redis.namespace"])
    except Exception as exc:  # redis-py connection errors
        raise Unavailable(f"the broker (Redis) is unreachable ({type(exc).__name__}); retry shortly") from None


def _model_object(name: str, beats: list[dict]) -> dict:
    started = [b.get("started_at") for b in beats if name in b.get("models", [])]
    created = 0
    for stamp in started:
        try:
            from datetime import datetime

            t = int(datetime.fromisoformat(str(stamp)).timestamp())
            created = t if not created else min(created, t)
        except (TypeError, ValueError):
            pass
    return {"id": name, "object": "model", "created": created, "owned_by": "instaboost"}


@bp.get("/models")
def models():
    """The models live workers serve, as OpenAI lists them."""
    beats = _served()
    names = sorted({m for b in beats for m in b.get("models", [])})
    return jsonify({"object": "list", "data": [_model_object(n, beats) for n in names]})


@bp.get("/models/<path:model>")
def model(model):
    """One served model."""
    beats = _served()
    if model not in {m for b in beats for m in b.get("models", [])}:
        raise ModelError(f"the model {model!r} is not served by any live worker (see GET /v1/models)",
                         field="model")
    return jsonify(_model_object(model, beats))


# -- chat completions -------------------------------------------------------------------------------------------


def _chat_run(session, job_id: int) -> Run | None:
    from sqlalchemy import select

    return session.execute(select(Run).where(Run.job_id == job_id, Run.variant == CHAT_VARIANT)).scalar_one_or_none()


def job_failure(job: Job) -> Response:
    """Return the error for a chat job that failed or was cancelled."""
    if job.status is JobStatus.cancelled:
        return openai_error(409, f"job {job.id} was cancelled before it finished", code="cancelled", retry=False)
    error = job.error or "the job failed"
    if "context" in error and "exceeds" in error:
        return openai_error(400, f"job {job.id} failed: {error}", param="messages", code="context_length_exceeded",
                            retry=False)
    if "out of range" in error:
        return openai_error(400, f"job {job.id} failed: {error}", param="instaboost", code="invalid_value",
                            retry=False)
    return openai_error(500, f"job {job.id} failed: {error}", code="job_failed", retry=False)


def _timeout(job_id: int, waited: float) -> Response:
    return openai_error(504, f"job {job_id} did not finish within {waited:g} s (v1.wait_seconds); it is still "
                             f"queued or running: poll GET /v1/chat/completions/{job_id} (or GET /api/jobs/{job_id}) "
                             "for its result", code="timeout", param=None, retry=False,
                        headers={"Location": f"/v1/chat/completions/{job_id}"})


@bp.post("/chat/completions")
def chat_completions():
    """Create a chat completion: a stored chat job, answered when it is done (or streamed as it is generated)."""
    s = services()
    params = chat_params(_json_body(), s.settings)
    job = submission.submit_chat(db(), params, **submit_kwargs())
    job_id = job.id
    wait = float(s.settings["v1.wait_seconds"])
    if params["stream"]:
        return Response(stream_with_context(_stream(job_id, params, wait)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                 "X-InstaBoost-Job-Id": str(job_id)})
    session = db()
    deadline = time.monotonic() + wait
    while True:
        job = session.get(Job, job_id, populate_existing=True)
        session.commit()
        if job.status.finished:
            break
        if time.monotonic() > deadline:
            return _timeout(job_id, wait)
        time.sleep(POLL_SECONDS)
    return _finished(session, job)


def _finished(session, job: Job) -> Response:
    run = _chat_run(session, job.id)
    if job.status is not JobStatus.succeeded or run is None:
        return job_failure(job)
    resp = jsonify(completion_body(job, run))
    resp.headers["X-InstaBoost-Job-Id"] = str(job.id)
    return resp


@bp.get("/chat/completions/<completion_id>")
def get_completion(completion_id):
    """Return a stored chat completion by id (its job's id); 409 while it is still queued or running."""
    session = db()
    job = queries.get_job(session, completion_id, with_runs=False)
    if not is_chat(job.params):
        raise NotFound(f"job {job.id} is not a chat completion (see GET /api/jobs/{job.id})", field="completion_id")
    if not job.status.finished:
        return openai_error(409, f"job {job.id} is {job.status.value}; retry shortly", code="not_finished")
    return _finished(session, job)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _stream(job_id: int, params: dict, wait: float):
    """Yield the completion as OpenAI chat.completion.chunk events, a usage chunk, then [DONE]."""
    from shared.workers import redis_client

    s = services()
    redis = redis_client(s.settings["redis.url"])
    key = stream_key(s.settings["redis.namespace"], job_id)
    created = int(time.time())
    base = {"id": completion_id(job_id), "object": "chat.completion.chunk", "created": created,
            "model": params["model"], "system_fingerprint": fingerprint(params)}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    sent = 0  # characters of the answer already sent
    attempt, text, cursor = None, "", 0
    end: dict | None = None
    deadline = time.monotonic() + wait
    next_check = time.monotonic() + 0.5
    outcome: Response | None = None
    try:
        while end is None:
            for raw in redis.lrange(key, cursor, -1):
                cursor += 1
                event = json.loads(raw)
                if event.get("attempt") != attempt:  # a redelivery starts over: skip what was already sent
                    attempt, text = event.get("attempt"), ""
                if event.get("type") == "delta":
                    text += event["text"]
                    if len(text) > sent:
                        yield chunk({"content": text[sent:]})
                        sent = len(text)
                elif event.get("type") == "end":
                    end = event
            if end is not None:
                break
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.5
                with s.sessionmaker() as session:
                    job = session.get(Job, job_id)
                    if job is not None and job.status.finished:
                        run = _chat_run(session, job_id)
                        if job.status is JobStatus.succeeded and run is not None:
                            # Stored by an earlier delivery (or its events were lost): send what is missing.
                            if len(run.produced_text) > sent:
                                yield chunk({"content": run.produced_text[sent:]})
                            end = {"finish_reason": run.finish_reason or "stop",
                                   "prompt_tokens": run.prompt_tokens, "completion_tokens": run.output_tokens}
                        else:
                            outcome = job_failure(job)
                        break
                if now > deadline:
                    outcome = _timeout(job_id, wait)
                    break
            time.sleep(STREAM_POLL_SECONDS)
    finally:
        redis.close()
    if outcome is not None:  # the openai SDK raises an APIError for an event carrying "error"
        yield _sse(json.loads(outcome.get_data(as_text=True)))
        yield "data: [DONE]\n\n"
        return
    yield chunk({}, end.get("finish_reason", "stop"))
    p, c = int(end.get("prompt_tokens", 0)), int(end.get("completion_tokens", 0))
    yield _sse({**base, "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
    yield "data: [DONE]\n\n"


# -- files -----------------------------------------------------------------------------------------------------


def _limit(default: int = 20, hi: int = 100) -> int:
    from shared.validation import parse_int

    value = request.args.get("limit")
    return default if value in (None, "") else parse_int("limit", value, lo=1, hi=hi)


@bp.post("/files")
def upload_file():
    """Upload a JSONL file (multipart: file, purpose=batch, optional expires_after), up to limits.max_file_bytes."""
    from shared.errors import BadRequest
    from shared.store import files

    s = services()
    request.max_content_length = int(s.settings["limits.max_file_bytes"]) + 64 * 1024  # the form's other parts
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(f"send the file as multipart/form-data with fields file and purpose (got "
                                   f"{request.mimetype or 'no content type'!r})", field="Content-Type")
    upload = request.files.get("file")  # werkzeug spools it (to disk past 500 KB): read below line by line
    purpose = request.form.get("purpose")
    if purpose is None:
        raise BadRequest("purpose is required: batch", field="purpose")
    if upload is None:
        raise BadRequest("file is required: the JSONL file as a multipart part named file", field="file")
    expires = files.expires_after_seconds(request.form.get("expires_after[anchor]"),
                                          request.form.get("expires_after[seconds]"))
    limit = int(s.settings["limits.max_file_bytes"])
    stream = upload.stream
    stream.seek(0, 2)
    if stream.tell() > limit:
        return openai_error(413, f"the file is larger than {limit} bytes (limits.max_file_bytes); split it",
                            param="file", code="file_too_large")
    try:
        f = files.create_file(db(), purpose, upload.filename or "upload.jsonl", stream, settings=s.settings,
                              expires_after=expires)
    except files.StorageFull as exc:
        return openai_error(429, exc.message, param="file", code="storage_limit_exceeded", retry=False)
    return jsonify(files.file_to_dict(f))


@bp.get("/files")
def list_files():
    """List files, newest first (purpose, limit, after); never loads their content."""
    from shared.store import files

    return jsonify(files.list_files(db(), request.args.get("purpose") or None, _limit(10_000, 10_000),
                                    request.args.get("after") or None))


@bp.get("/files/<file_id>")
def get_file(file_id):
    from shared.store import files

    return jsonify(files.file_to_dict(files.get_file(db(), file_id)))


@bp.get("/files/<file_id>/content")
def file_content(file_id):
    from shared.store import files

    f = files.get_file(db(), file_id)
    return Response(f.content, mimetype="application/jsonl",
                    headers={"Content-Disposition": f'attachment; filename="{f.id}.jsonl"'})


@bp.delete("/files/<file_id>")
def delete_file(file_id):
    from shared.store import files

    return jsonify(files.delete_file(db(), file_id))


# -- batches ---------------------------------------------------------------------------------------------------


@bp.post("/batches")
def create_batch():
    """Create a batch: each line of the input file becomes one stored chat job, queued behind interactive work."""
    from shared.store import batches

    # The openai SDK marks its retries (x-stainless-retry-count); a client may send its own Idempotency-Key.
    retry = request.headers.get("x-stainless-retry-count", "0").strip() not in ("", "0")
    b = batches.create_batch(db(), _json_body(), idempotency_key=request.headers.get("Idempotency-Key"), retry=retry,
                             **submit_kwargs())
    return jsonify(batches.batch_to_dict(db(), b))


@bp.get("/batches/<batch_id>")
def get_batch(batch_id):
    from shared.store import batches

    session = db()
    b = batches.get_batch(session, batch_id)
    b = batches.refresh_batch(session, b.id)
    return jsonify(batches.batch_to_dict(session, b))


@bp.get("/batches")
def list_batches():
    """List batches, newest first (after: the last id of the previous page; limit 1..100, default 20)."""
    from shared.store import batches

    return jsonify(batches.list_batches(db(), _limit(), request.args.get("after") or None))


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id):
    from shared.store import batches

    session = db()
    return jsonify(batches.batch_to_dict(session, batches.cancel_batch(session, batch_id)))
