"""Server-rendered pages: submit form, job list, job detail, runs."""

from __future__ import annotations

import json

from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from shared.calibration import DIMENSIONS
from shared.errors import Conflict, InstaBoostError
from shared.fields import FIELD_NAMES, JOB_FIELDS
from shared.job_request import JobRequest, Variant, multiplier_text
from shared.store import lifecycle, queries, serialize, submission
from shared.store.tables import JobStatus
from shared.worker_registry import live_workers, starting_in
from web.context import db, paging_args, services, submit_kwargs
from web.export import sweep_csv_response

bp = Blueprint("pages", __name__)

FORM_FIELDS = FIELD_NAMES  # every job field has an input, drawn from its declaration
ADVANCED_FIELDS = tuple(f.name for f in JOB_FIELDS if f.advanced)
PLACEHOLDERS = {"instruction": "Answer only in French.", "query": "What is the capital of Australia?"}


def _model_choices() -> tuple[list[str], str | None]:
    s = services()
    default = s.settings.model.name
    try:
        beats = live_workers(s.redis, s.settings.redis.namespace)
    except Exception:  # Redis down: still render the form
        return [default], "The broker (Redis) is unreachable: jobs cannot be submitted right now."
    served = {m for b in beats for m in b["models"]}
    starting = {m for b in beats for m in starting_in(b)} - served
    warning = None
    if not served and starting:
        warning = (f"A worker is starting (loading {', '.join(sorted(starting))}): jobs submitted now wait in the "
                   "queue and run once it is ready.")
    elif not served:
        warning = "No worker is running: jobs cannot be submitted until one starts."
    return [default, *sorted((served | starting) - {default})], warning


def _form_defaults() -> dict[str, Any]:
    d = JobRequest.defaults(services().settings)
    for f in JOB_FIELDS:
        if f.required or (f.nullable and d[f.name] is None):
            d[f.name] = ""
        elif f.kind == "numbers":  # one text input, comma-separated
            d[f.name] = ", ".join(multiplier_text(m) for m in d[f.name])
        elif f.is_rules:  # JSON text
            d[f.name] = json.dumps(list(d[f.name])) if d[f.name] else ""
    # The API leaves the attention analysis off (it costs two extra passes); a person at the form usually
    # wants the chart, so the box starts ticked.
    d["attention"] = True
    return d


def _render_form(values: dict[str, Any], errors: dict[str, list[str]] | None = None, status: int = 200,
                 message: str | None = None):
    models, warning = _model_choices()
    if values.get("model") and values["model"] not in models:
        models.append(values["model"])
    errors = errors or {}
    return render_template("index.html", values=values, errors=errors, message=message, models=models,
                           warning=warning, fields=JOB_FIELDS, placeholders=PLACEHOLDERS,
                           advanced_open=bool(errors.keys() & set(ADVANCED_FIELDS)),
                           other_errors={k: v for k, v in errors.items() if k not in FORM_FIELDS}), status


@bp.get("/")
def index():
    """Show the submit form with the configured defaults."""
    return _render_form(_form_defaults())


@bp.post("/")
def submit():
    """Validate the form and enqueue the job; re-render with field errors (and the typed values) on failure."""
    # An unticked checkbox sends nothing: that is "off", not "the default" (score_perplexity defaults on).
    data: dict[str, Any] = {f.name: request.form.getlist(f.name) if f.kind == "choices" else
                            request.form.get(f.name, "off" if f.kind == "boolean" else "") for f in JOB_FIELDS}
    try:
        from shared.store.recommended import resolve_recommended

        # The form sends every field: "recommended" there takes the whole recommended setting.
        req = JobRequest.from_dict(resolve_recommended(db(), data, services().settings, whole=True),
                                   services().settings)
        job = submission.submit_job(db(), req, **submit_kwargs())
    except InstaBoostError as exc:
        errors: dict[str, list[str]] = {}
        for e in exc.errors:
            errors.setdefault(e["field"].split("[")[0], []).append(e["message"])
        return _render_form(data, errors, exc.status, exc.message)
    return redirect(url_for("pages.job", job_id=job.id), code=303)


@bp.get("/jobs")
def job_list():
    """List jobs with filters and cursor pagination."""
    rows, nxt = queries.list_jobs(db(), request.args, request.args.get("limit"), request.args.get("cursor"))
    args = paging_args(queries.JOB_FILTERS)
    return render_template("jobs.html", jobs=rows, next_cursor=nxt, args=args, statuses=list(JobStatus))


def _variant_rows(job) -> tuple[Any, list[tuple[Variant, Any]]]:
    """Return the original run and [(variant, run or None)] for every boosted variant, in order."""
    by_name = {r.variant: r for r in job.runs}
    from shared.chat import choice_variants, is_chat

    if is_chat(job.params):  # one generation per choice (n): the chat messages, boosted spans inside
        rows = []
        for name in choice_variants(job.params):
            run = by_name.get(name)
            rows.append((Variant(name, run.multiplier if run else job.params["multipliers"][0],
                                 run.layers if run else str(job.params["layer_modes"][0])), run))
        return None, rows
    try:
        variants = JobRequest.from_params(job.params).variants()
    except (KeyError, TypeError, ValueError):
        variants = []
    rows = [(v, by_name.pop(v.name, None)) for v in variants if not v.is_original]
    original = by_name.pop("original", None)
    rows += [(Variant(r.variant, r.multiplier, r.layers), r) for r in by_name.values()]
    return original, rows


@bp.get("/jobs/<job_id>")
def job(job_id):
    """Show a job: status, progress, parameters, timings and each variant beside the original."""
    j = queries.get_job(db(), job_id)
    original, rows = _variant_rows(j)
    return render_template("job.html", job=j, original=original, rows=rows, finished=j.status.finished)


@bp.get("/jobs/<job_id>/status.json")
def job_status(job_id):
    """Return the job as JSON for the page's polling (pages stay usable when the API needs a token)."""
    return jsonify(serialize.job_to_dict(queries.get_job(db(), job_id)))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id):
    """Cancel from the job page, then show it again."""
    j = queries.get_job(db(), job_id, with_runs=False)
    try:
        j = lifecycle.cancel_job(db(), j.id)
        flash("Cancelled." if j.status is JobStatus.cancelled else
              "Cancel requested: the job stops after the variant it is generating.", "info")
    except Conflict as exc:
        flash(exc.message, "error")
    return redirect(url_for("pages.job", job_id=j.id), code=303)


@bp.get("/runs")
def runs():
    """List stored runs with filters; the export link carries the same filters."""
    rows, nxt = queries.list_runs(db(), request.args, request.args.get("limit"), request.args.get("cursor"))
    args = paging_args(queries.RUN_FILTERS)
    filters = {k: v for k, v in args.items() if k in queries.RUN_FILTERS}
    return render_template("runs.html", runs=rows, next_cursor=nxt, args=args, filters=filters,
                           statuses=list(JobStatus))


# -- calibration sweeps ---------------------------------------------------------------------------------

SWEEP_FORM_DEFAULTS = {"pack": "default", "grid": "paper", "layer_modes": ["all"], "head_fractions": "1",
                       "scopes": ["all"], "target_masses": "none", "boilerplate_multipliers": "1",
                       "fluency_floor": "1", "limit": "",
                       "max_new_tokens": "64", "cases_text": "", "cases_format": "yaml"}
SWEEP_FORM_LISTS = ("layer_modes", "scopes")  # checkboxes: the form sends each ticked one


def _render_sweeps(values: dict[str, Any], errors: dict[str, list[str]] | None = None, status: int = 200,
                   message: str | None = None):
    from sqlalchemy import select

    from shared.evaluation.cases import PACKS
    from shared.fields import LAYER_MODES
    from shared.requests.types import SCOPES
    from shared.store import sweep_views
    from shared.store.tables import Sweep

    rows = db().scalars(select(Sweep).order_by(Sweep.id.desc()).limit(50)).all()
    return render_template("sweeps.html", sweeps=[sweep_views.sweep_to_dict(db(), s) for s in rows], values=values,
                           errors=errors or {}, message=message, packs=PACKS, layer_modes=LAYER_MODES,
                           scopes=SCOPES), status


@bp.get("/sweeps")
def sweeps():
    """List calibration sweeps and show the form that starts one."""
    return _render_sweeps(dict(SWEEP_FORM_DEFAULTS))


@bp.post("/sweeps")
def start_sweep():
    """Start a sweep from the form (a built-in pack or an uploaded case file); re-render with errors."""
    from shared.calibration import parse_sweep_request
    from shared.store import sweeps as store

    form = request.form
    values = {k: form.getlist(k) if k in SWEEP_FORM_LISTS else form.get(k, "") for k in SWEEP_FORM_DEFAULTS}
    data: dict[str, Any] = {k: values[k] for k in ("grid", "head_fractions", "target_masses",
                                                   "boilerplate_multipliers", "fluency_floor", "limit",
                                                   "max_new_tokens") if values[k] != ""}
    data["layer_modes"] = values["layer_modes"] or ""
    if values["scopes"]:  # none ticked: the default scope (all), today's boost
        data["scopes"] = values["scopes"]
    upload = request.files.get("cases_file")
    source = form.get("source", "pack")
    if source == "upload" and upload is not None and upload.filename:
        suffix = upload.filename.rsplit(".", 1)[-1].lower()
        data["cases_text"] = upload.read().decode("utf-8", "replace")
        data["cases_format"] = {"yml": "yaml", "yaml": "yaml", "json": "json", "jsonl": "jsonl"}.get(suffix, "yaml")
    elif source == "upload" and values["cases_text"].strip():
        data["cases_text"], data["cases_format"] = values["cases_text"], values["cases_format"] or "yaml"
    else:
        data["pack"] = values["pack"]
    s = services()
    try:
        req = parse_sweep_request(data, s.settings, strict=False)
        facts = submission.served_model_facts(req.params["model"], s.redis, s.settings.redis.namespace)
        sweep = store.create_sweep(db(), cases=req.cases, pack=req.pack, grid=req.grid, settings_=req.settings,
                                   floor=req.floor, params=req.params, settings=s.settings,
                                   sender=store.celery_sender(s.celery), facts=facts)
    except InstaBoostError as exc:
        errors: dict[str, list[str]] = {}
        for e in exc.errors or [{"field": exc.field or "form", "message": exc.message}]:
            errors.setdefault(str(e["field"]).split("[")[0].split(".")[0], []).append(e["message"])
        return _render_sweeps(values, errors, exc.status, exc.message)
    return redirect(url_for("pages.sweep", sweep_id=sweep.id), code=303)


@bp.get("/sweeps/<sweep_id>")
def sweep(sweep_id):
    """Show a sweep: status, success and fluency against M, the table, the recommendation, per-case drill-down."""
    from shared.store import sweep_views

    sw = sweep_views.get_sweep(db(), sweep_id)
    data = sweep_views.sweep_to_dict(db(), sw)
    return render_template("sweep.html", sweep=data, drill=sweep_views.drilldown(db(), sw),
                           DIMENSION_HEADINGS=dict(DIMENSIONS))


@bp.get("/sweeps/<sweep_id>.csv")
def sweep_csv(sweep_id):
    """The sweep's table as CSV, for browsers without the API token."""
    return sweep_csv_response(sweep_id)


@bp.post("/sweeps/<sweep_id>/cancel")
def cancel_sweep(sweep_id):
    """Cancel a sweep from its page."""
    from shared.store import sweep_views, sweeps as store

    sw = sweep_views.get_sweep(db(), sweep_id)
    try:
        store.cancel_sweep(db(), sw.id)
        flash("Sweep cancelled.", "info")
    except Conflict as exc:
        flash(exc.message, "error")
    return redirect(url_for("pages.sweep", sweep_id=sw.id), code=303)
