"""The Responses API under /v1 (text only): POST /v1/responses and GET /v1/responses/<id>.

A response is an ordinary stored chat job (shared.responses translates the request into chat params); its id
is resp_<job id>. It runs, waits, streams and is retried exactly like a chat completion (web.v1): only the
framing differs. A stream sends the Responses events: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta…, response.output_text.done,
response.content_part.done, response.output_item.done, then response.completed (response.incomplete when
max_output_tokens cut it); a failure sends an error event, then response.failed.
"""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, jsonify, request

from shared.errors import NotFound, ValidationError
from shared.responses import (is_response, job_id_of, load_previous, message_item, output_text, response_body,
                              renamed, response_id, response_object, responses_params)
from shared.resources import openai as resources
from shared.store import idempotency, submission
from shared.store.tables import Job, JobStatus
from web.apidoc import RETRY_AFTER, V1_COMMON, V1_CROSS_SITE, Reply, oai_error, operation
from web.context import db, services, submit_kwargs
from web.inputs import json_body, sdk_retry
from web.limits import wait_slots
from web.openapi_params import IdempotencyHeaders
from web.openapi_responses import RESPONSE_REQUEST
from web.v1_errors import job_failure, openai_error, register
from web.v1_stream import chat_run, sse_response, wait_for_job

bp = Blueprint("v1_responses", __name__, url_prefix="/v1")
register(bp)


class ResponsesFrames:
    """The Responses API's server-sent events for one streamed response (see web.v1_stream.stream_completion)."""

    def __init__(self, job_id: int, params: dict):
        self.job_id, self.params, self.created = job_id, params, time.time()
        self.poll_path = f"/v1/responses/{response_id(job_id)}"
        self.item_id = message_item(job_id, None, "in_progress")["id"]
        self.sequence = 0
        self.text = ""

    def _event(self, kind: str, **data) -> str:
        body = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n"

    def _response(self, status: str, **kw) -> dict:
        return response_object(self.job_id, self.params, self.created, status, **kw)

    def _part(self, kind: str, part: dict) -> str:
        return self._event(kind, item_id=self.item_id, output_index=0, content_index=0, part=part)

    def start(self) -> list[str]:
        return [self._event("response.created", response=self._response("in_progress")),
                self._event("response.in_progress", response=self._response("in_progress")),
                self._event("response.output_item.added", output_index=0,
                            item=message_item(self.job_id, None, "in_progress")),
                self._part("response.content_part.added", output_text(""))]

    def delta(self, text: str) -> list[str]:
        self.text += text
        return [self._event("response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                            delta=text, logprobs=[])]

    def finish(self, end: dict) -> list[str]:
        status = "incomplete" if end.get("finish_reason") == "length" else "completed"
        usage = (int(end.get("prompt_tokens", 0)), int(end.get("completion_tokens", 0)))
        final = self._response(status, text=self.text, usage=usage, boost={"job_id": self.job_id})
        return [self._event("response.output_text.done", item_id=self.item_id, output_index=0, content_index=0,
                            text=self.text, logprobs=[]),
                self._part("response.content_part.done", output_text(self.text)),
                self._event("response.output_item.done", output_index=0, item=final["output"][0]),
                self._event(f"response.{status}", response=final)]

    def failure(self, error: dict) -> list[str]:
        e = error.get("error") or {}
        message = str(e.get("message") or "the response failed")
        return [self._event("error", code=e.get("code"), message=message, param=e.get("param")),
                self._event("response.failed", response=self._response("failed", error=message))]


@bp.post("/responses")
@operation("v1CreateResponse", {
    200: Reply("The response; with stream, the Responses API's server-sent events (response.created … "
               "response.completed).", resources.Response, also=("text/event-stream",)),
    400: oai_error("Invalid request, an unsupported field or item, or previous_response_id not found."),
    404: oai_error("No live worker serves the model (code model_not_found)."),
    409: oai_error("The job was cancelled, the previous response is not finished, or the Idempotency-Key was used "
                   "before with another body."),
    413: oai_error("The body is too large."),
    429: oai_error("Too many queued jobs or waiting completions.", RETRY_AFTER),
    503: oai_error("The broker is unreachable.", RETRY_AFTER),
    504: oai_error("The job did not finish within v1.wait_seconds; poll GET /v1/responses/{id}."),
    **V1_COMMON, **V1_CROSS_SITE}, json=RESPONSE_REQUEST, headers=IdempotencyHeaders,
    description="The Responses API for text: input as a string or message items, instructions (the system message, "
                "boosted by default under instaboost), previous_response_id. Tools, reasoning and non-text items "
                "answer 400 naming the field. Waits, streams and retries as POST /v1/chat/completions.")
def create_response():
    """Create a response: a stored chat job, answered when it is done (or streamed as Responses events).

    Idempotent under retries and bounded by the wait slots exactly as POST /v1/chat/completions.
    """
    s = services()
    body = json_body()
    prev = body.get("previous_response_id") if isinstance(body, dict) else None
    previous = load_previous(db(), prev) if job_id_of(prev) is not None else None  # a malformed id: params says
    params = responses_params(body, s.settings, previous)
    key = idempotency.check_key(request.headers.get("Idempotency-Key"))
    release_slot = wait_slots().take()
    try:
        job = submission.submit_chat(db(), params, idempotency_key=key, is_retry=sdk_retry(), **submit_kwargs())
    except idempotency.KeyReused as exc:
        release_slot()
        return openai_error(409, exc.message, param="Idempotency-Key", code="idempotency_key_reused", retry=False)
    except ValidationError as exc:  # the model's limits (chat's field names): say them as this request does
        release_slot()
        raise renamed(exc) from None
    except BaseException:
        release_slot()
        raise
    job_id = job.id
    wait = s.settings.v1.wait_seconds
    if params["stream"]:
        return sse_response(job_id, params, wait, release_slot, ResponsesFrames(job_id, params))
    try:
        session = db()
        job = wait_for_job(session, job_id, wait, f"/v1/responses/{response_id(job_id)}")
        if isinstance(job, Response):
            return job
        run = chat_run(session, job.id)
        if job.status is not JobStatus.succeeded or run is None:
            return job_failure(job)
        resp = jsonify(response_body(job, run))
        resp.headers["X-InstaBoost-Job-Id"] = str(job.id)
        return resp
    finally:
        release_slot()


@bp.get("/responses/<response_id>")
@operation("v1GetResponse", {200: Reply("The response (status queued, in_progress, completed, incomplete, failed or "
                                        "cancelled).", resources.Response),
                             404: oai_error("No such response."), **V1_COMMON})
def get_response(response_id):
    """Return a stored response by id (resp_<job id>), in whatever state it is (queued, in_progress, completed…)."""
    session = db()
    n = job_id_of(response_id)
    job = session.get(Job, n) if n is not None else None
    if job is None or not is_response(job.params):
        raise NotFound(f"no response with id {response_id!r} (ids look like resp_123)", field="response_id")
    return jsonify(response_body(job, chat_run(session, job.id)))
