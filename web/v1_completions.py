"""POST /v1/completions (OpenAI's legacy completions) and GET /v1/completions/<id>: stored completion jobs.

A completion is an ordinary stored job (kind "completion", one run per prompt and choice), waited for and streamed as a
chat completion is (web.v1, web.v1_stream); errors take OpenAI's shape like every /v1 path (web.errors).
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from shared.completions import completion_body, completion_params, is_completion, openai_rows, prompt_text
from shared.errors import NotFound, ValidationError
from shared.logprobs import completion_logprobs
from shared.resources.openai import Completion
from shared.store import idempotency, queries, submission
from shared.store.tables import Job, JobStatus, Run
from web.apidoc import RETRY_AFTER, V1_COMMON, V1_CROSS_SITE, Reply, oai_error, operation
from web.context import db, services, submit_kwargs
from web.inputs import json_body, sdk_retry
from web.limits import wait_slots
from web.openapi_completions import COMPLETION_REQUEST
from web.openapi_params import CompletionHeaders
from web.v1_errors import job_failure, openai_error, register
from web.v1_stream import ChatFrames, sse, sse_response, wait_for_job

bp = Blueprint("v1_completions", __name__, url_prefix="/v1")
register(bp)
BOOST_HEADER = "X-InstaBoost"


class CompletionFrames(ChatFrames):
    """OpenAI's text_completion chunks: the echo first, the text, its logprobs, usage when asked, [DONE]."""

    variant = "p0"  # a streamed completion has one prompt

    def __init__(self, job_id: int, params: dict):
        super().__init__(job_id, params)
        self.params = params
        self.poll_path = f"/v1/completions/cmpl-{job_id}"
        self.base = {**self.base, "id": f"cmpl-{job_id}", "object": "text_completion"}

    def _chunk(self, delta: dict, finish: str | None = None, logprobs: dict | None = None, index: int = 0) -> str:
        return sse({**self.base, "choices": [{"index": index, "text": delta.get("content", ""), "logprobs": logprobs,
                                               "finish_reason": finish}]})

    def start(self) -> list[str]:
        echo = prompt_text(self.params, 0) if self.params.get("echo") else None
        return [self._chunk({"content": echo})] if echo else []

    def logprobs(self, end: dict) -> list[str]:
        stored = end.get("logprobs")
        if not stored or self.params.get("logprobs") is None:
            return []
        return [self._chunk({}, None, completion_logprobs([stored.get("prompt") if self.params["echo"] else None,
                                                           stored.get("output")]))]

    def finish(self, end: dict) -> list[str]:
        out = [*self.logprobs(end), self._chunk({}, end.get("finish_reason", "stop"))]
        if self.params.get("include_usage"):  # only when asked, as OpenAI streams completions
            p, c = int(end.get("prompt_tokens", 0)), int(end.get("completion_tokens", 0))
            out.append(sse({**self.base, "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
                                                                   "total_tokens": p + c}}))
        return [*out, "data: [DONE]\n\n"]


def _header_boost():
    """Return the X-InstaBoost header's boost object (the body's instaboost wins), or None."""
    raw = request.headers.get(BOOST_HEADER)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValidationError(f"the {BOOST_HEADER} header must be a JSON object like the body's instaboost, e.g. "
                              '{"multiplier": 5, "spans": [[0, 12]]}', field=BOOST_HEADER)
    return value


@bp.post("/completions")
@operation("v1CreateCompletion", {
    200: Reply("The completion; with stream, server-sent text_completion chunks and data: [DONE].", Completion,
               also=("text/event-stream",)),
    400: oai_error("Invalid request (OpenAI's invalid_request_error)."),
    404: oai_error("No live worker serves the model (code model_not_found)."),
    409: oai_error("Cancelled, or the Idempotency-Key was used with another body."),
    413: oai_error("The body is too large."),
    429: oai_error("Too many queued jobs or waiting completions.", RETRY_AFTER),
    503: oai_error("The broker is unreachable.", RETRY_AFTER),
    504: oai_error("Not finished within v1.wait_seconds; poll GET /v1/completions/{id}."),
    **V1_COMMON, **V1_CROSS_SITE}, json=COMPLETION_REQUEST, headers=CompletionHeaders,
    description="OpenAI's legacy completions: echo and logprobs for likelihood evaluation (lm-eval's "
                "local-completions), max_tokens 0 to score a prompt. The boost: <boost>…</boost> in a string prompt, "
                "or instaboost.spans; in the body's instaboost or the X-InstaBoost header.")
def completions():
    """Create a completion: one stored job, a row per prompt and choice, answered when done (or streamed)."""
    s = services()
    params = completion_params(json_body(), s.settings, header_boost=_header_boost())
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
        return sse_response(job_id, params, wait, release_slot, CompletionFrames(job_id, params))
    try:
        session = db()
        job = wait_for_job(session, job_id, wait, f"/v1/completions/cmpl-{job_id}")
        return job if isinstance(job, Response) else _finished(session, job)
    finally:
        release_slot()


def _finished(session, job: Job) -> Response:
    names = openai_rows(job.params)
    by_name = {r.variant: r for r in session.scalars(select(Run).where(Run.job_id == job.id))}
    if job.status is not JobStatus.succeeded or any(n not in by_name for n in names):
        return job_failure(job)
    resp = jsonify(completion_body(job, [by_name[n] for n in names]))
    resp.headers["X-InstaBoost-Job-Id"] = str(job.id)
    return resp


@bp.get("/completions/<completion_id>")
@operation("v1GetCompletion", {200: Reply("The completion.", Completion), 400: oai_error("Its job failed on its input."),
                               404: oai_error("No such completion."), 409: oai_error("Not finished yet."),
                               **V1_COMMON})
def get_completion(completion_id):
    """Return a stored completion by id (cmpl-<job id>, or the job id); 409 while it is queued or running."""
    session = db()
    job = queries.get_job(session, completion_id.removeprefix("cmpl-"), with_runs=False)
    if not is_completion(job.params):
        raise NotFound(f"job {job.id} is not a completion (see GET /api/jobs/{job.id})", field="completion_id")
    if not job.status.finished:
        return openai_error(409, f"job {job.id} is {job.status.value}; retry shortly", code="not_finished")
    return _finished(session, job)
