"""The OpenAI-compatible API under /v1: models, chat completions (plain and streamed), files and batches.

Every chat completion is an ordinary stored job (kind "chat"): listed on the pages, exported in the CSV,
recovered by the recovery loop. Its id is the job's id. The route enqueues it ahead of other work (see
shared.celery_config.PRIORITY) and waits up to v1.wait_seconds for it; on timeout it answers 504 naming
the job, which GET /v1/chat/completions/<id> (or /api/jobs/<id>) answers once it is done. A streamed
completion relays the text deltas the worker appends to a Redis stream (web/v1_stream.py). Completions are
idempotent under client retries (shared.store.idempotency). Errors take OpenAI's shape, {"error": {"message",
"type", "param", "code"}} (web/v1_errors.py, whose handlers each /v1 blueprint registers); invalid input is 400.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from shared.chat import chat_params, completion_body, is_chat
from shared.errors import ModelError, NotFound, UnsupportedMediaType
from shared.resources import openai as resources
from shared.store import idempotency, queries, submission
from shared.store.tables import Job, JobStatus
from shared.worker_registry import live_workers
from web import openapi_params as params
from web.apidoc import RETRY_AFTER, V1_COMMON, V1_CROSS_SITE, Reply, oai_error, operation
from web.context import db, services, submit_kwargs
from web.openapi import BATCH_REQUEST, CHAT_REQUEST, FILE_UPLOAD, IGNORED
from web.limits import wait_slots
from web.inputs import json_body, sdk_retry
from web.v1_errors import ERROR_CODES, ERROR_TYPES, job_failure, openai_error, register, timeout_error  # noqa: F401
from web.v1_stream import POLL_SECONDS, chat_runs, sse_response, stream_completion, wait_for_job  # noqa: F401 (API)

bp = Blueprint("v1", __name__, url_prefix="/v1")
REDIS_DOWN = oai_error("Redis is unreachable.", RETRY_AFTER)
register(bp)


# -- models ----------------------------------------------------------------------------------------------------


def _served() -> list[dict]:
    from shared.errors import Unavailable

    s = services()
    try:
        return live_workers(s.redis, s.settings.redis.namespace)
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
    return resources.Model(id=name, object="model", created=created, owned_by="instaboost").dump()


@bp.get("/models")
@operation("v1ListModels", {200: Reply("The models.", resources.ModelList), 503: REDIS_DOWN, **V1_COMMON})
def models():
    """The models live workers serve, as OpenAI lists them."""
    beats = _served()
    names = sorted({m for b in beats for m in b.get("models", [])})
    return jsonify({"object": "list", "data": [_model_object(n, beats) for n in names]})


@bp.get("/models/<path:model>")
@operation("v1GetModel", {200: Reply("The model.", resources.Model), 404: oai_error("Not served."), 503: REDIS_DOWN,
                          **V1_COMMON}, path={"model": {"type": "string"}})
def model(model):
    """One served model."""
    beats = _served()
    if model not in {m for b in beats for m in b.get("models", [])}:
        raise ModelError(f"the model {model!r} is not served by any live worker (see GET /v1/models)",
                         field="model")
    return jsonify(_model_object(model, beats))


# -- chat completions -------------------------------------------------------------------------------------------


@bp.post("/chat/completions")
@operation("v1CreateChatCompletion", {
    200: Reply("The completion; with stream, server-sent chat.completion.chunk events, a usage chunk and "
               "data: [DONE].", resources.ChatCompletion, also=("text/event-stream",)),
    400: oai_error("Invalid request (OpenAI's invalid_request_error), e.g. a bad boost."),
    404: oai_error("No live worker serves the model (code model_not_found)."),
    409: oai_error("The job was cancelled, or the Idempotency-Key was used before with another body (code "
                   "idempotency_key_reused)."),
    413: oai_error("The body is too large."),
    429: oai_error("Too many queued jobs, or this web process holds as many waiting completions as it may "
                   "(web.threads).", RETRY_AFTER),
    503: oai_error("The broker is unreachable, or no worker heartbeat names the model while that may be transient; "
                   "the openai SDK retries after Retry-After.", RETRY_AFTER),
    504: oai_error("The job did not finish within v1.wait_seconds; poll GET /v1/chat/completions/{id}."),
    **V1_COMMON, **V1_CROSS_SITE}, json=CHAT_REQUEST, headers=params.ChatHeaders,
    description="The boost comes in the body's instaboost object (the openai SDK's extra_body). Boosted tokens: "
                "<boost>…</boost> spans in any message, a message's own boost M, or by default the system "
                "message(s). Waits up to v1.wait_seconds; then 504 naming the job. A retry (the same "
                "Idempotency-Key, or an openai SDK retry) answers from the job its first try created. A stream "
                "waits v1.wait_seconds for each next piece of text; closing it cancels the job.")
def chat_completions():
    """Create a chat completion: a stored chat job, answered when it is done (or streamed as it is generated).

    Idempotent under retries (shared.store.idempotency): an Idempotency-Key header, or an openai SDK retry,
    answers from the job the first try created. The request holds one of this process's wait slots
    (web.limits) while it waits or streams; with none free it is refused with 429 before a job exists.
    """
    s = services()
    params = chat_params(json_body(), s.settings)
    key = idempotency.check_key(request.headers.get("Idempotency-Key"))
    release_slot = wait_slots().take()
    try:
        job = submission.submit_chat(db(), params, idempotency_key=key, is_retry=sdk_retry(), **submit_kwargs())
    except idempotency.KeyReused as exc:
        release_slot()
        return openai_error(409, exc.message, param="Idempotency-Key", code="idempotency_key_reused", retry=False)
    except BaseException:
        release_slot()
        raise
    job_id = job.id
    wait = s.settings.v1.wait_seconds
    if params["stream"]:
        return sse_response(job_id, params, wait, release_slot)
    try:
        session = db()
        job = wait_for_job(session, job_id, wait)
        return job if isinstance(job, Response) else _finished(session, job)
    finally:
        release_slot()


def _finished(session, job: Job) -> Response:
    runs = chat_runs(session, job.id, int(job.params.get("n") or 1))
    if job.status is not JobStatus.succeeded or runs is None:
        return job_failure(job)
    resp = jsonify(completion_body(job, runs))
    resp.headers["X-InstaBoost-Job-Id"] = str(job.id)
    return resp


@bp.get("/chat/completions/<completion_id>")
@operation("v1GetChatCompletion", {200: Reply("The completion.", resources.ChatCompletion),
                                   400: oai_error("Its job failed on its input."),
                                   404: oai_error("No such completion."), 409: oai_error("Not finished yet."),
                                   **V1_COMMON})
def get_completion(completion_id):
    """Return a stored chat completion by id (its job's id); 409 while it is still queued or running."""
    session = db()
    job = queries.get_job(session, completion_id, with_runs=False)
    if not is_chat(job.params):
        raise NotFound(f"job {job.id} is not a chat completion (see GET /api/jobs/{job.id})", field="completion_id")
    if not job.status.finished:
        return openai_error(409, f"job {job.id} is {job.status.value}; retry shortly", code="not_finished")
    return _finished(session, job)


# -- files -----------------------------------------------------------------------------------------------------


def _limit(default: int = 20, hi: int = 100) -> int:
    from shared.validation import parse_int

    value = request.args.get("limit")
    return default if value in (None, "") else parse_int("limit", value, lo=1, hi=hi)


@bp.post("/files")
@operation("v1UploadFile", {200: Reply("The stored file.", resources.File),
                            400: oai_error("Not JSONL of objects, or a wrong purpose."),
                            413: oai_error("Larger than limits.max_file_bytes."),
                            429: oai_error("The file store is full (limits.max_files or "
                                           "limits.max_file_storage_bytes): delete files first."),
                            **V1_COMMON, **V1_CROSS_SITE}, form=FILE_UPLOAD)
def upload_file():
    """Upload a JSONL file (multipart: file, purpose=batch, optional expires_after), up to limits.max_file_bytes."""
    from shared.errors import BadRequest
    from shared.store import files

    s = services()
    request.max_content_length = s.settings.limits.max_file_bytes + 64 * 1024  # the form's other parts
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
    limit = s.settings.limits.max_file_bytes
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
@operation("v1ListFiles", {200: Reply("A page of files.", resources.FileList), 400: oai_error("Invalid limit."),
                           **V1_COMMON}, query=params.FileQuery)
def list_files():
    """List files, newest first (purpose, limit, after); never loads their content."""
    from shared.store import files

    return jsonify(files.list_files(db(), request.args.get("purpose") or None, _limit(10_000, 10_000),
                                    request.args.get("after") or None))


@bp.get("/files/<file_id>")
@operation("v1GetFile", {200: Reply("The file.", resources.File), 404: oai_error("No such file."), **V1_COMMON})
def get_file(file_id):
    """A file's description."""
    from shared.store import files

    return jsonify(files.file_to_dict(files.get_file(db(), file_id)))


@bp.get("/files/<file_id>/content")
@operation("v1GetFileContent", {200: Reply("The JSONL.", media="application/jsonl"), 404: oai_error("No such file."),
                                **V1_COMMON})
def file_content(file_id):
    """A file's bytes."""
    from shared.store import files

    f = files.get_file(db(), file_id)
    return Response(f.content, mimetype="application/jsonl",
                    headers={"Content-Disposition": f'attachment; filename="{f.id}.jsonl"'})


@bp.delete("/files/<file_id>")
@operation("v1DeleteFile", {200: Reply("Deleted.", resources.FileDeleted), 404: oai_error("No such file."),
                            **V1_COMMON, **V1_CROSS_SITE}, json=IGNORED,
           description="Send 'Content-Type: application/json' or an 'Authorization' header (the openai SDK sends "
                       "both).")
def delete_file(file_id):
    """Delete a file."""
    from shared.store import files

    return jsonify(files.delete_file(db(), file_id))


# -- batches ---------------------------------------------------------------------------------------------------


@bp.post("/batches")
@operation("v1CreateBatch", {
    200: Reply("The batch.", resources.Batch),
    400: oai_error("Invalid body: endpoint, completion_window, a file of another purpose."),
    404: oai_error("No such input file."),
    429: oai_error("The batch's lines would pass the queue's limit.", RETRY_AFTER),
    503: oai_error("The broker is unreachable.", RETRY_AFTER), **V1_COMMON, **V1_CROSS_SITE},
    json=BATCH_REQUEST, headers=params.IdempotencyHeaders,
    description="A create that repeats an Idempotency-Key (or a retry of the openai SDK, x-stainless-retry-count > 0, "
                "of the same request within 10 minutes) returns the batch the first one stored.")
def create_batch():
    """Create a batch: each line of the input file becomes one stored chat job, queued behind interactive work."""
    from shared.store import batches

    # The openai SDK marks its retries (x-stainless-retry-count); a client may send its own Idempotency-Key.
    retry = request.headers.get("x-stainless-retry-count", "0").strip() not in ("", "0")
    b = batches.create_batch(db(), json_body(), idempotency_key=request.headers.get("Idempotency-Key"), retry=retry,
                             **submit_kwargs())
    return jsonify(batches.batch_to_dict(db(), b))


@bp.get("/batches/<batch_id>")
@operation("v1GetBatch", {200: Reply("The batch.", resources.Batch), 404: oai_error("No such batch."), **V1_COMMON})
def get_batch(batch_id):
    """A batch, its status and request_counts."""
    from shared.store import batches

    session = db()
    b = batches.get_batch(session, batch_id)
    b = batches.refresh_batch(session, b.id)
    return jsonify(batches.batch_to_dict(session, b))


@bp.get("/batches")
@operation("v1ListBatches", {200: Reply("A page of batches.", resources.BatchList), 400: oai_error("Invalid limit."),
                             404: oai_error("No batch with id after."), **V1_COMMON}, query=params.BatchQuery)
def list_batches():
    """List batches, newest first (after: the last id of the previous page; limit 1..100, default 20)."""
    from shared.store import batches

    return jsonify(batches.list_batches(db(), _limit(), request.args.get("after") or None))


@bp.post("/batches/<batch_id>/cancel")
@operation("v1CancelBatch", {200: Reply("Cancelling (or cancelled).", resources.Batch),
                             404: oai_error("No such batch."), 409: oai_error("The batch already ended."),
                             **V1_COMMON, **V1_CROSS_SITE}, json=IGNORED,
           description="Send 'Content-Type: application/json' (the body is ignored and may be empty) or an "
                       "'Authorization' header (the openai SDK sends both).")
def cancel_batch(batch_id):
    """Cancel a batch in progress."""
    from shared.store import batches

    session = db()
    return jsonify(batches.batch_to_dict(session, batches.cancel_batch(session, batch_id)))
