"""POST /v1/completions (OpenAI's legacy completions) and GET /v1/completions/<id>: stored completion jobs.

A completion is an ordinary stored job (kind "completion", one run per prompt), waited for and streamed as a
chat completion is (web.v1, web.v1_stream); errors take OpenAI's shape like every /v1 path (web.errors).
"""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, jsonify, request, stream_with_context
from sqlalchemy import select

from shared.completions import completion_body, completion_params, is_completion, openai_rows
from shared.errors import NotFound, ValidationError
from shared.store import idempotency, queries, submission
from shared.store.tables import Job, JobStatus, Run
from web.context import db, services, submit_kwargs
from web.limits import wait_slots
from web.v1 import POLL_SECONDS, _json_body, _sdk_retry
from web.v1_errors import job_failure, openai_error, timeout_error
from web.v1_stream import stream_completion

bp = Blueprint("v1_completions", __name__, url_prefix="/v1")
BOOST_HEADER = "X-InstaBoost"


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
def completions():
    """Create a completion: one stored job, a row per prompt, answered when done (or streamed)."""
    s = services()
    params = completion_params(_json_body(), s.settings, header_boost=_header_boost())
    key = idempotency.check_key(request.headers.get("Idempotency-Key"))
    give_back = wait_slots().take()
    try:
        job = submission.submit_chat(db(), params, idempotency_key=key, is_retry=_sdk_retry(), **submit_kwargs())
    except idempotency.KeyReused as exc:
        give_back()
        return openai_error(409, exc.message, param="Idempotency-Key", code="idempotency_key_reused", retry=False)
    except BaseException:
        give_back()
        raise
    job_id = job.id
    wait = float(s.settings["v1.wait_seconds"])
    if params["stream"]:
        resp = Response(stream_with_context(stream_completion(job_id, params, wait, give_back)),
                        mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                                               "X-InstaBoost-Job-Id": str(job_id)})
        resp.call_on_close(give_back)
        return resp
    try:
        session = db()
        deadline = time.monotonic() + wait
        while True:
            job = session.get(Job, job_id, populate_existing=True)
            session.commit()
            if job.status.finished:
                return _finished(session, job)
            if time.monotonic() > deadline:
                return timeout_error(job_id, wait)
            time.sleep(POLL_SECONDS)
    finally:
        give_back()


def _finished(session, job: Job) -> Response:
    names = openai_rows(job.params)
    by_name = {r.variant: r for r in session.scalars(select(Run).where(Run.job_id == job.id))}
    if job.status is not JobStatus.succeeded or any(n not in by_name for n in names):
        return job_failure(job)
    resp = jsonify(completion_body(job, [by_name[n] for n in names]))
    resp.headers["X-InstaBoost-Job-Id"] = str(job.id)
    return resp


@bp.get("/completions/<completion_id>")
def get_completion(completion_id):
    """Return a stored completion by id (cmpl-<job id>, or the job id); 409 while it is queued or running."""
    session = db()
    job = queries.get_job(session, completion_id.removeprefix("cmpl-"), with_runs=False)
    if not is_completion(job.params):
        raise NotFound(f"job {job.id} is not a completion (see GET /api/jobs/{job.id})", field="completion_id")
    if not job.status.finished:
        return openai_error(409, f"job {job.id} is {job.status.value}; retry shortly", code="not_finished")
    return _finished(session, job)
