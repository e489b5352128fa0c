"""The JSON API under /api: submit, inspect, list and cancel jobs; list runs and models."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for

from shared.errors import Unavailable
from shared.resources import jobs as res
from shared.job_request import JobRequest
from shared.store import idempotency, lifecycle, queries, serialize, submission
from shared.store.export import EXPORT_COLUMNS, WIDE_COLUMNS
from shared.store.recommended import recommendations
from shared.worker_registry import live_workers, starting_in
from web import openapi_params as params
from web.apidoc import COMMON, CROSS_SITE, LOCATION, RETRY_AFTER, Reply, document, operation, problem
from web.context import db, paging_args, services, submit_kwargs
from web.export import csv_response, sweep_csv_response
from web.inputs import json_body
from web.openapi import IGNORED, JOB_REQUEST, SWEEP_REQUEST

bp = Blueprint("api", __name__, url_prefix="/api")

NOT_JSON = {400: problem("The body is not valid JSON."), 413: problem("The body is too large."),
            415: problem("The body is not JSON.")}
UNSERVED = {422: problem("A field is invalid, or no live worker serves the model."),
            503: problem("The broker is unreachable, or no worker heartbeat names the model while that may be "
                         "transient (none at all, or its worker restarting); retry after Retry-After.", RETRY_AFTER)}
LIST_ERRORS = {400: problem("Malformed cursor."), 422: problem("Invalid filter or limit.")}
CSV = {422: problem("Invalid filter."), **COMMON}
CANCEL = ("Send 'Content-Type: application/json' (the body is ignored and may be empty) or an 'Authorization' "
          "header: a request with neither could come from another site's page, and is refused (415).")


def _page(items, next_cursor, endpoint, filters):
    # Only the declared parameters travel to the next page: any other name (endpoint, _external, _anchor...)
    # would be taken by url_for itself.
    args = paging_args(filters)
    nxt = url_for(endpoint, **args, cursor=next_cursor) if next_cursor else None
    return jsonify({"items": items, "next_cursor": next_cursor, "next": nxt})


@bp.post("/jobs")
@operation("submitJob", {
    202: Reply("Queued.", res.Job, headers=(LOCATION,)), **NOT_JSON, **UNSERVED,
    409: problem("Its Idempotency-Key was used before with another body."),
    429: problem("Too many queued jobs.", RETRY_AFTER), **COMMON, 403: CROSS_SITE[403]},
    json=JOB_REQUEST, headers=params.IdempotencyHeaders)
def submit():
    """Validate and enqueue a job; answer 202 with its URL (a retry with the same Idempotency-Key: the same job)."""
    from shared.store.recommended import resolve_recommended

    body = resolve_recommended(db(), json_body(), services().settings)
    req = JobRequest.from_dict(body, services().settings, strict=True)
    job = submission.submit_job(db(), req, idempotency_key=idempotency.check_key(request.headers.get("Idempotency-Key")),
                                **submit_kwargs())
    resp = jsonify(serialize.job_to_dict(job))
    resp.status_code = 202
    resp.headers["Location"] = url_for("api.get_job", job_id=job.id)
    return resp


@bp.get("/jobs/<job_id>")
@operation("getJob", {200: Reply("The job.", res.Job), 404: problem("No such job."), **COMMON},
           path={"job_id": params.ID_PATH})
def get_job(job_id):
    """Return a job's status, progress, parameters and runs so far."""
    return jsonify(serialize.job_to_dict(queries.get_job(db(), job_id)))


@bp.get("/jobs")
@operation("listJobs", {200: Reply("A page of jobs.", res.JobPage), **LIST_ERRORS, **COMMON}, query=params.JobPaging)
def list_jobs():
    """Return a page of jobs, newest first."""
    rows, nxt = queries.list_jobs(db(), request.args, request.args.get("limit"), request.args.get("cursor"))
    return _page([serialize.job_to_dict(j, runs=False) for j in rows], nxt, "api.list_jobs", queries.JOB_FILTERS)


@bp.post("/jobs/<job_id>/cancel")
@operation("cancelJob", {200: Reply("Cancelled (queued) or cancelling (running).", res.Job),
                         404: problem("No such job."), 409: problem("The job already finished."),
                         **COMMON, **CROSS_SITE}, json=IGNORED, path={"job_id": params.ID_PATH}, description=CANCEL)
def cancel(job_id):
    """Cancel a queued job, or ask a running one to stop (its rows stop at the next token)."""
    job = queries.get_job(db(), job_id, with_runs=False)
    return jsonify(serialize.job_to_dict(lifecycle.cancel_job(db(), job.id)))


@bp.get("/runs")
@operation("listRuns", {200: Reply("A page of runs.", res.RunPage), **LIST_ERRORS, **COMMON}, query=params.RunPaging)
def list_runs():
    """Return a page of runs, newest first."""
    rows, nxt = queries.list_runs(db(), request.args, request.args.get("limit"), request.args.get("cursor"))
    items = [serialize.run_to_dict(r, job=j) for r, j in rows]
    return _page(items, nxt, "api.list_runs", queries.RUN_FILTERS)


@bp.get("/runs.csv")
@operation("exportRuns", {200: Reply("CSV, one row per run.", media="text/csv"), **CSV}, query=params.RunFilters,
           description="Columns: " + ", ".join(EXPORT_COLUMNS) + ". Cells starting with = + - @ tab or CR are "
                       "prefixed with ' against spreadsheet formula injection.")
def runs_csv():
    """Stream every run matching the filters as CSV."""
    return csv_response(request.args)


@bp.post("/sweeps")
@operation("createSweep", {
    202: Reply("Started.", res.Sweep, headers=(LOCATION,)), **NOT_JSON, **UNSERVED,
    429: problem("The first step would pass limits.max_queued_jobs, or limits.max_running_sweeps sweeps are "
                 "running; nothing was stored.", RETRY_AFTER), **COMMON, 403: CROSS_SITE[403]},
    json=SWEEP_REQUEST, description="A case set x a grid of M x settings (layer modes x head fractions x scopes "
    "x target masses), run as ordinary jobs one M at a time with the paper's stop rule per setting; the "
    "recommendation is the setting and M with the best validation effective success among fluent ones under the "
    "copy ceiling, and multipliers 'recommended' then takes that whole setting.")
def create_sweep():
    """Validate a calibration sweep (a built-in pack or uploaded cases), store it and queue its first stage."""
    from shared.calibration import parse_sweep_request
    from shared.store import sweeps

    s = services()
    req = parse_sweep_request(json_body(), s.settings, strict=True)
    facts = submission.served_model_facts(req.params["model"], s.redis, s.settings.redis.namespace)
    sweep = sweeps.create_sweep(db(), cases=req.cases, pack=req.pack, grid=req.grid, settings_=req.settings,
                                floor=req.floor, params=req.params, settings=s.settings,
                                sender=sweeps.celery_sender(s.celery), facts=facts)
    resp = jsonify(_sweep_json(sweep))
    resp.status_code = 202
    resp.headers["Location"] = url_for("api.get_sweep", sweep_id=sweep.id)
    return resp


def _sweep_json(sweep) -> dict:
    from shared.store import sweep_views

    return sweep_views.sweep_to_dict(db(), sweep, links={
        "self": url_for("api.get_sweep", sweep_id=sweep.id), "csv": url_for("api.sweep_csv", sweep_id=sweep.id),
        "page": url_for("pages.sweep", sweep_id=sweep.id), "jobs_csv": url_for("api.jobs_csv", sweep_id=sweep.id)})


@bp.get("/sweeps")
@operation("listSweeps", {200: Reply("Sweeps.", res.SweepList), **COMMON})
def list_sweeps():
    """Return the latest sweeps, newest first (at most 100)."""
    from sqlalchemy import select

    from shared.store.tables import Sweep

    rows = db().scalars(select(Sweep).order_by(Sweep.id.desc()).limit(100)).all()
    return jsonify({"items": [_sweep_json(x) for x in rows]})


@bp.get("/sweeps/<sweep_id>.csv")
@operation("exportSweep", {200: Reply("CSV.", media="text/csv"), 404: problem("No such sweep."), **COMMON},
           path={"sweep_id": params.ID_PATH})
def sweep_csv(sweep_id):
    """Return a sweep's per-(setting, M, split) table as CSV (success, fluency, CIs, copy and repetition rates)."""
    return sweep_csv_response(sweep_id)


@bp.get("/sweeps/<sweep_id>")
@operation("getSweep", {200: Reply("The sweep.", res.Sweep), 404: problem("No such sweep."), **COMMON},
           path={"sweep_id": params.ID_PATH})
def get_sweep(sweep_id):
    """Return a sweep: status, step, per-M table (validation and test) and the recommendation."""
    from shared.store import sweep_views

    return jsonify(_sweep_json(sweep_views.get_sweep(db(), sweep_id)))


@bp.post("/sweeps/<sweep_id>/cancel")
@operation("cancelSweep", {200: Reply("Cancelled.", res.Sweep), 404: problem("No such sweep."),
                           409: problem("The sweep already finished."), **COMMON, **CROSS_SITE},
           json=IGNORED, path={"sweep_id": params.ID_PATH}, description=CANCEL)
def cancel_sweep(sweep_id):
    """Cancel a running sweep and its unfinished jobs."""
    from shared.store import sweep_views, sweeps

    sweep = sweep_views.get_sweep(db(), sweep_id)
    return jsonify(_sweep_json(sweeps.cancel_sweep(db(), sweep.id)))


@bp.get("/jobs.csv")
@operation("exportJobs", {200: Reply("CSV, one row per job.", media="text/csv"), **CSV}, query=params.JobExportFilters,
           description="Columns: " + ", ".join(WIDE_COLUMNS) + ", then <variant>_output, <variant>_fluency and "
                       "<variant>_follows for every further variant. Cells starting with = + - @ tab or CR are "
                       "prefixed with '.")
def jobs_csv():
    """Stream one row per job (filters: status, model, sweep_id) with the prototype's comparison columns."""
    from web.export import jobs_csv_response

    return jobs_csv_response(request.args)


@bp.get("/models")
@operation("listModels", {200: Reply("Models and workers.", res.Models),
                          503: problem("Redis is unreachable.", RETRY_AFTER), **COMMON})
def models():
    """Return the models live workers hold or are loading, and how many workers do each."""
    s = services()
    try:
        workers = live_workers(s.redis, s.settings.redis.namespace)
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
    try:  # "recommended" is a valid multipliers value for a model with a finished calibration sweep
        recommended: dict[str, dict] | None = recommendations(db(), names)
    except Exception:  # the database is down: unknown
        db().rollback()
        recommended = None
    return jsonify(res.Models(
        default=s.settings.model.name,
        models=[res.ServedModel(name=m, workers=ready.get(m, 0), starting=loading.get(m, 0),
                                status="ready" if ready.get(m) else "starting", **submission.model_facts(workers, m),
                                recommended=None if recommended is None else m in recommended,
                                **({"recommendation": recommended[m]} if recommended and m in recommended else {}))
                for m in names],
        workers=[res.WorkerInfo(hostname=w.get("hostname"), models=w.get("models"), starting=starting_in(w),
                                **{k: w.get(k) for k in ("pid", "started_at", "seen_at")}) for w in workers],
    ).dump())


@bp.get("/openapi.json")
@operation("openapi", {200: Reply("OpenAPI 3.1 document.", res.OpenAPIDocument)}, public=True)
def openapi():
    """This document (what the running workers serve is in GET /api/models)."""
    s = services()
    return jsonify(document(s.settings, token_required=bool(s.settings.web.api_token)))
