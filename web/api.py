"""The JSON API under /api: submit, inspect, list and cancel jobs; list runs and models."""

from __future__ import annotations

import json

from flask import Blueprint, jsonify, request, url_for

from shared.errors import BadRequest, Unavailable, UnsupportedMediaType
from shared.schemas import JobRequest
from shared.store import idempotency, lifecycle, queries, serialize, submission
from shared.workers import live_workers, starting_in
from web.context import db, paging_args, services, submit_kwargs
from web.export import csv_response
from web.openapi import openapi_document
from web.openapi_responses import add_responses

bp = Blueprint("api", __name__, url_prefix="/api")


def _json_body():
    if not request.is_json:  # application/json or application/*+json
        raise UnsupportedMediaType(f"send the job as JSON with 'Content-Type: application/json' "
                                   f"(got {request.mimetype or 'no content type'!r})", field="Content-Type")
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body must be UTF-8 encoded JSON", field="body") from None
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", field="body") from None
    except RecursionError:  # e.g. [[[[...]]]] nested deeper than the parser's stack
        raise BadRequest("the body is nested too deeply to be a job request", field="body") from None


def _page(items, next_cursor, endpoint, filters):
    # Only the declared parameters travel to the next page: any other name (endpoint, _external, _anchor...)
    # would be taken by url_for itself.
    args = paging_args(filters)
    nxt = url_for(endpoint, **args, cursor=next_cursor) if next_cursor else None
    return jsonify({"items": items, "next_cursor": next_cursor, "next": nxt})


@bp.post("/jobs")
def submit():
    """Validate and enqueue a job; answer 202 with its URL (a retry with the same Idempotency-Key: the same job)."""
    from shared.store.recommended import resolve_recommended

    body = resolve_recommended(db(), _json_body(), services().settings)
    req = JobRequest.from_dict(body, services().settings, strict=True)
    job = submission.submit_job(db(), req, idempotency_key=idempotency.check_key(request.headers.get("Idempotency-Key")),
                                **submit_kwargs())
    resp = jsonify(serialize.job_to_dict(job))
    resp.status_code = 202
    resp.headers["Location"] = url_for("api.get_job", job_id=job.id)
    return resp


@bp.get("/jobs/<job_id>")
def get_job(job_id):
    """Return a job's status, progress, parameters and runs so far."""
    return jsonify(serialize.job_to_dict(queries.get_job(db(), job_id)))


@bp.get("/jobs")
def list_jobs():
    """Return a page of jobs, newest first."""
    rows, nxt = queries.list_jobs(db(), request.args, request.args.get("limit"), request.args.get("cursor"))
    return _page([serialize.job_to_dict(j, runs=False) for j in rows], nxt, "api.list_jobs", queries.JOB_FILTERS)


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id):
    """Cancel a queued job, or ask a running one to stop (its rows stop at the next token)."""
    job = queries.get_job(db(), job_id, with_runs=False)
    return jsonify(serialize.job_to_dict(lifecycle.cancel_job(db(), job.id)))


@bp.get("/runs")
def list_runs():
    """Return a page of runs, newest first."""
    rows, nxt = queries.list_runs(db(), request.args, request.args.get("limit"), request.args.get("cursor"))
    items = [{**serialize.run_to_dict(r, j.params), "model": j.model, "job_status": j.status.value} for r, j in rows]
    return _page(items, nxt, "api.list_runs", queries.RUN_FILTERS)


@bp.get("/runs.csv")
def runs_csv():
    """Stream every run matching the filters as CSV."""
    return csv_response(request.args)


@bp.post("/sweeps")
def create_sweep():
    """Validate a calibration sweep (a built-in pack or uploaded cases), store it and queue its first step."""
    from shared.calibration import parse_sweep_request
    from shared.store import sweeps

    s = services()
    req = parse_sweep_request(_json_body(), s.settings, strict=True)
    facts = submission.served_model_facts(req.params["model"], s.redis, s.settings["redis.namespace"])
    sweep = sweeps.create_sweep(db(), cases=req.cases, pack=req.pack, grid=req.grid, settings_=req.settings,
                                floor=req.floor, params=req.params, settings=s.settings,
                                sender=sweeps.celery_sender(s.celery), facts=facts)
    resp = jsonify(_sweep_json(sweep))
    resp.status_code = 202
    resp.headers["Location"] = url_for("api.get_sweep", sweep_id=sweep.id)
    return resp


def _sweep_json(sweep) -> dict:
    from shared.store import sweeps

    return {**sweeps.sweep_to_dict(db(), sweep), "links": {
        "self": url_for("api.get_sweep", sweep_id=sweep.id), "csv": url_for("api.sweep_csv", sweep_id=sweep.id),
        "page": url_for("pages.sweep", sweep_id=sweep.id), "jobs_csv": url_for("api.jobs_csv", sweep_id=sweep.id)}}


@bp.get("/sweeps")
def list_sweeps():
    """Return the latest sweeps, newest first (at most 100)."""
    from sqlalchemy import select

    from shared.store.tables import Sweep

    rows = db().scalars(select(Sweep).order_by(Sweep.id.desc()).limit(100)).all()
    return jsonify({"items": [_sweep_json(x) for x in rows]})


@bp.get("/sweeps/<sweep_id>.csv")
def sweep_csv(sweep_id):
    """Return a sweep's per-(setting, M, split) table as CSV (success, fluency, CIs, copy and repetition rates)."""
    return sweep_csv_response(sweep_id)


def sweep_csv_response(sweep_id):
    from flask import Response

    from shared.calibration import table_csv
    from shared.store import sweeps

    sweep = sweeps.get_sweep(db(), sweep_id)
    resp = Response(table_csv(sweep.result or {"table": [], "best": None}), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="instaboost-sweep-{sweep.id}.csv"'
    return resp


@bp.get("/sweeps/<sweep_id>")
def get_sweep(sweep_id):
    """Return a sweep: status, step, per-M table (validation and test) and the recommendation."""
    from shared.store import sweeps

    return jsonify(_sweep_json(sweeps.get_sweep(db(), sweep_id)))


@bp.post("/sweeps/<sweep_id>/cancel")
def cancel_sweep(sweep_id):
    """Cancel a running sweep and its unfinished jobs."""
    from shared.store import sweeps

    sweep = sweeps.get_sweep(db(), sweep_id)
    return jsonify(_sweep_json(sweeps.cancel_sweep(db(), sweep.id)))


@bp.get("/jobs.csv")
def jobs_csv():
    """Stream one row per job (filters: status, model, sweep_id) with the seed's comparison columns."""
    from web.export import jobs_csv_response

    return jobs_csv_response(request.args)


@bp.get("/models")
def models():
    """Return the models live workers hold or are loading, and how many workers do each."""
    s = services()
    try:
        workers = live_workers(s.redis, s.settings["redis.namespace"])
    except Exception as exc:  # redis-py connection errors
        raise Unavailable(f"the broker (Redis) is unreachable ({type(exc).__name__}); retry shortly") from None
    ready: dict[str, int] = {}
    loading: dict[str, int] = {}
    for w in workers:
        for m in w.get("models", []):
            ready[m] = ready.get(m, 0) + 1
        for m in starting_in(w):
            loading[m] = loading.get(m, 0) + 1
    names = sorted(ready.keys() | loading.keys())
    return jsonify({
        "default": s.settings["model.name"],
        "models": [{"name": m, "workers": ready.get(m, 0), "starting": loading.get(m, 0),
                    "status": "ready" if ready.get(m) else "starting"} for m in names],
        "workers": [{"hostname": w.get("hostname"), "models": w.get("models"), "starting": starting_in(w),
                     **{k: w.get(k) for k in ("pid", "started_at", "seen_at")}} for w in workers],
    })


@bp.get("/openapi.json")
def openapi():
    """Return the OpenAPI 3.1 description of this API."""
    s = services()
    try:
        beats = live_workers(s.redis, s.settings["redis.namespace"])
    except Exception:  # Redis down: describe the default model; submissions answer 503 anyway
        beats = []
    models = sorted({m for beat in beats for m in beat["models"]})
    # With one served model its advertised facts bound the request exactly; with several they differ.
    facts = submission.model_facts(beats, models[0]) if len(models) == 1 else None
    try:  # "recommended" is a valid multipliers value once every served model has a finished sweep
        from shared.store.recommended import models_with_recommendation

        recommended = bool(models) and models_with_recommendation(db(), models) == set(models)
    except Exception:  # the database is down: describe numbers only
        db().rollback()
        recommended = False
    document = openapi_document(s.settings, models, token_required=bool(s.settings["web.api_token"]), facts=facts,
                                recommended=recommended)
    return jsonify(add_responses(document, s.settings, models or [s.settings["model.name"]]))
