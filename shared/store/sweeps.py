"""Calibration sweeps in the service: create one, advance it step by step with the paper's stop rule, read it.

A sweep is a case set x a grid of M x settings (layer modes x head fractions) run as ordinary jobs, one per
(case, M, head fraction) with its layer modes as variants, linked to the sweep by ``jobs.sweep_id``
(``case_name``, ``sweep_step``, ``sweep_head_fraction``). Each job's original variant is the unboosted
baseline (M = 1, shared by every setting; the first step's is used).

``advance`` moves a sweep on: once every job of the current step is finished it reads all the sweep's
scored runs, recomputes the summary (``shared.evaluation.protocol.calibrate``) and, while some setting's
validation fluency stays at or above the floor, creates the next step's jobs; otherwise it finishes the
sweep with its recommendation. It is called by the worker when a sweep job ends, and by the sweeper on
every pass (so a worker killed between finishing a job and advancing loses nothing). It is idempotent and
safe to run concurrently: the sweep row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL, the write lock
on SQLite), a step's jobs are unique per (sweep, case, M, head fraction), and the new jobs are committed
before their messages are sent (unsent ones stay in the sweeper's outbox, ``enqueued_at`` NULL).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.calibration import SweepSetting, assign_splits, boosted_grid, record, result_summary, still_going
from shared.errors import Conflict, NotFound, ValidationError
from shared.evaluation import protocol
from shared.evaluation.cases import Case
from shared.schemas import JobRequest
from shared.store.tables import FINAL, Job, JobStatus, Run, Sweep, utcnow

log = logging.getLogger("instaboost.sweeps")

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"
# Job fields a sweep passes to every job it creates (the rest are set per cell).
BASE_FIELDS = ("model", "start_layer", "num_middle_layers", "seed", "placement", "engine", "max_new_tokens",
               "temperature", "top_p", "score_perplexity")
Sender = Callable[[int, str], None]  # (job id, model) -> publish the job's message


def case_to_dict(case: Case, split_: str) -> dict[str, Any]:
    """Return a case as stored in a sweep's config (checks as the job fields take them)."""
    return {"name": case.name, "instruction": case.instruction, "query": case.query,
            "description": case.description, "split": split_,
            "checks": [{"type": c.type} if c.value is None else {"type": c.type, "value": c.value}
                       for c in case.checks],
            "ifeval": [{"id": c.id, "kwargs": dict(c.kwargs)} for c in case.ifeval]}


def settings_of(sweep: Sweep) -> list[SweepSetting]:
    return [SweepSetting(s["layers"], float(s["head_fraction"])) for s in sweep.config["settings"]]


def cell_request(sweep_config: Mapping[str, Any], case: Mapping[str, Any], m: float, head_fraction: float,
                 layer_modes: Sequence[str], settings: Mapping[str, Any]) -> JobRequest:
    """Return the job request of one (case, M, head fraction) cell."""
    return JobRequest.from_dict({**sweep_config["params"], "instruction": case["instruction"], "query": case["query"],
                                 "multipliers": [m], "layer_modes": list(layer_modes),
                                 "head_boost_percentage": head_fraction * 100.0, "checks": case["checks"],
                                 "ifeval": case["ifeval"], "attention": False}, settings, strict=True)


def create_sweep(session: Session, *, cases: Sequence[Case], pack: str | None, grid: Sequence[float],
                 settings_: Sequence[SweepSetting], floor: float, params: Mapping[str, Any],
                 settings: Mapping[str, Any], sender: Sender | None = None,
                 facts: Mapping[str, Any] | None = None) -> Sweep:
    """Store a running sweep (validating every cell's job request first) and start its first step.

    facts: what the live workers advertise about the model (layers, context), checked for every case.
    """
    if not boosted_grid(grid):
        raise ValidationError("the grid needs at least one M other than 1 (M = 1 is the unboosted baseline, "
                              "run with every step)", field="grid")
    splits = assign_splits(cases)
    config = {"cases": [case_to_dict(c, splits[c.name]) for c in cases], "grid": [float(m) for m in grid],
              "settings": [s.to_dict() for s in settings_], "floor": float(floor), "params": dict(params)}
    errors = []
    modes = list(dict.fromkeys(s.layers for s in settings_))
    for i, case in enumerate(config["cases"]):  # head fractions and modes are valid already (sweep_settings)
        try:
            req = cell_request(config, case, boosted_grid(grid)[0], settings_[0].head_fraction, modes, settings)
            if facts:
                req.check_model(facts)
        except ValidationError as exc:
            errors += [{"field": f"cases[{i}].{e['field']}", "message": f"case {case['name']!r}: {e['message']}"}
                       for e in exc.errors]
    if errors:
        raise ValidationError(f"{len(errors)} problems in the sweep's cases: " +
                              "; ".join(e["message"] for e in errors[:5]), errors=errors)
    sweep = Sweep(status=RUNNING, model=params["model"], pack=pack, config=config, step_index=0,
                  current_multiplier=None, created_at=utcnow(), updated_at=utcnow())
    session.add(sweep)
    session.commit()
    advance(session, sweep.id, settings, sender)
    return session.get(Sweep, sweep.id, populate_existing=True)


def _lock(session: Session, sweep_id: int) -> Sweep | None:
    if session.get_bind().dialect.name == "sqlite":
        if session.connection().connection.dbapi_connection.in_transaction:
            session.commit()
        session.execute(text("BEGIN IMMEDIATE"))
        return session.get(Sweep, sweep_id, populate_existing=True)
    return session.execute(select(Sweep).where(Sweep.id == sweep_id).with_for_update()
                           .execution_options(populate_existing=True)).scalar_one_or_none()


def sweep_jobs(session: Session, sweep_id: int) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))


def records_of(session: Session, sweep: Sweep) -> list[dict[str, Any]]:
    """Return the protocol records of every scored run of the sweep's jobs (the baseline once per case)."""
    settings_ = settings_of(sweep)
    splits = {c["name"]: c["split"] for c in sweep.config["cases"]}
    rows = session.execute(select(Run, Job).join(Job, Run.job_id == Job.id).where(Job.sweep_id == sweep.id)
                           .order_by(Job.id, Run.id)).all()
    out, baseline_seen = [], set()
    for run, job in rows:
        scores = run.scores if isinstance(run.scores, Mapping) else None
        if not scores or job.case_name not in splits or "fluency" not in scores:
            continue
        if run.variant == "original":
            if job.case_name in baseline_seen:
                continue
            baseline_seen.add(job.case_name)
            setting, m = settings_[0], 1.0
        else:
            setting = SweepSetting(run.layers, float(job.sweep_head_fraction or 1.0))
            m = float(run.multiplier)
        out.append(record(scores, case=job.case_name, split_=splits[job.case_name], multiplier=m, setting=setting,
                          job_id=job.id))
    return out


def summarize_sweep(session: Session, sweep: Sweep, n_boot: int = protocol.N_BOOT) -> dict[str, Any]:
    """Return the sweep's current summary (table, per-setting choice, recommendation)."""
    records = records_of(session, sweep)
    if not records:
        return {"floor": sweep.config["floor"], "table": [], "settings": [], "best": None, "recommended": None}
    return result_summary(protocol.calibrate(records, floor=sweep.config["floor"], n_boot=n_boot))


def _create_step(session: Session, sweep: Sweep, m: float, going: Sequence[SweepSetting],
                 settings: Mapping[str, Any]) -> list[tuple[int, str]]:
    """Insert the step's jobs (queued, not yet sent); return [(job id, model)] of the rows this call created."""
    created = []
    by_fraction: dict[float, list[str]] = {}
    for s in going:
        by_fraction.setdefault(s.head_fraction, []).append(s.layers)
    for case in sweep.config["cases"]:
        first = None
        for hf, modes in by_fraction.items():
            # Validated once per case; the other cells differ only in head fraction and layer modes.
            first = first or cell_request(sweep.config, case, m, hf, modes, settings)
            req = dataclasses.replace(first, head_boost_percentage=hf * 100.0, layer_modes=tuple(modes))
            job = Job(status=JobStatus.queued, model=req.model, params=req.to_params(), progress_done=0,
                      progress_total=len(req.variants()), sweep_id=sweep.id, case_name=case["name"],
                      sweep_step=m, sweep_head_fraction=hf, created_at=utcnow())
            try:
                with session.begin_nested():
                    session.add(job)
                created.append((job.id, job.model))
            except IntegrityError:  # another advance created this cell first
                pass
    return created


def advance(session: Session, sweep_id: int, settings: Mapping[str, Any], sender: Sender | None = None) -> str:
    """Move the sweep on if its current step is done; return its status (see the module docstring)."""
    sweep = _lock(session, sweep_id)
    if sweep is None:
        session.rollback()
        raise NotFound(f"sweep {sweep_id} does not exist", field="id")
    if sweep.status != RUNNING:
        session.rollback()
        return sweep.status
    current = sweep.current_multiplier
    if current is not None:
        pending = session.execute(select(Job.id).where(Job.sweep_id == sweep.id, Job.sweep_step == current,
                                                       Job.status.not_in(list(FINAL)))).first()
        if pending is not None:
            session.rollback()
            return RUNNING
    records = records_of(session, sweep)
    settings_ = settings_of(sweep)
    floor = sweep.config["floor"]
    steps = boosted_grid(sweep.config["grid"])
    if current is None:
        going, nxt = settings_, steps[0]
    else:
        # Every setting shares the baseline: one below the floor ends them all at M = 1 (protocol.recommend).
        going = still_going(records, settings_, floor)
        later = [m for m in steps if m > current]
        nxt = later[0] if later and going else None
    created: list[tuple[int, str]] = []
    if nxt is not None:
        created = _create_step(session, sweep, nxt, going, settings)
        sweep.step_index += 1
        sweep.current_multiplier = nxt
        sweep.result = summarize_sweep(session, sweep, n_boot=200) if records else None
        sweep.updated_at = utcnow()
        session.commit()
        log.info("sweep %s: step M=%g, %d jobs", sweep_id, nxt, len(created))
    else:
        _finish(session, sweep)
        session.commit()
        log.info("sweep %s: finished, recommended M=%s", sweep_id, sweep.recommended_multiplier)
    if sender is not None:
        for job_id, model in created:
            send_job(session, job_id, model, sender)
    return sweep.status


def _finish(session: Session, sweep: Sweep) -> None:
    summary = summarize_sweep(session, sweep)
    rec = summary.get("recommended")
    sweep.result = summary
    sweep.status = SUCCEEDED
    sweep.recommended_multiplier = rec["multiplier"] if rec else None
    sweep.recommended_layers = rec["layers"] if rec else None
    sweep.recommended_head_fraction = rec["head_fraction"] if rec else None
    sweep.finished_at = sweep.updated_at = utcnow()


def send_job(session: Session, job_id: int, model: str, sender: Sender) -> bool:
    """Claim the job's first send (enqueued_at NULL -> now) and publish it; unsent jobs stay in the outbox."""
    stamp = utcnow()
    claimed = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued,
                                                Job.enqueued_at.is_(None))
                              .values(enqueued_at=stamp).execution_options(synchronize_session=False)).rowcount
    session.commit()
    if claimed != 1:
        return False
    try:
        sender(job_id, model)
    except Exception as exc:
        log.warning("sweep job %s not sent (%s); the sweeper's outbox sends it", job_id, type(exc).__name__)
        session.execute(update(Job).where(Job.id == job_id, Job.enqueued_at == stamp).values(enqueued_at=None)
                        .execution_options(synchronize_session=False))
        session.commit()
        return False
    return True


def celery_sender(celery_app) -> Sender:
    """Return a Sender that publishes instaboost.run_job on the model's queue."""
    from shared import celery_config

    def send(job_id: int, model: str) -> None:
        celery_app.send_task(celery_config.TASK_NAME, args=[job_id], queue=celery_config.model_queue(model))

    return send


def cancel_sweep(session: Session, sweep_id: int) -> Sweep:
    """Cancel a running sweep and its unfinished jobs (queued ones never run; running ones stop at a variant)."""
    from shared.store.lifecycle import cancel_job

    sweep = _lock(session, sweep_id)
    if sweep is None:
        session.rollback()
        raise NotFound(f"sweep {sweep_id} does not exist", field="id")
    if sweep.status != RUNNING:
        session.rollback()
        if sweep.status == CANCELLED:
            return sweep
        raise Conflict(f"sweep {sweep_id} already {sweep.status}; only running sweeps can be cancelled",
                       field="status")
    sweep.status, sweep.finished_at, sweep.updated_at = CANCELLED, utcnow(), utcnow()
    session.commit()
    for job_id in session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.status.not_in(list(FINAL)))):
        try:
            cancel_job(session, job_id)
        except Conflict:
            session.rollback()
    return session.get(Sweep, sweep_id, populate_existing=True)


def get_sweep(session: Session, sweep_id: Any) -> Sweep:
    """Return a sweep or raise NotFound."""
    from shared.store.queries import get_row

    return get_row(session, Sweep, sweep_id, "sweep")


def latest_recommendation(session: Session, model: str, pack: str | None = None) -> Sweep | None:
    """Return the latest finished sweep with a recommendation for this model (and pack, when given)."""
    stmt = select(Sweep).where(Sweep.model == model, Sweep.status == SUCCEEDED,
                               Sweep.recommended_multiplier.is_not(None))
    if pack is not None:
        stmt = stmt.where(Sweep.pack == pack)
    return session.scalars(stmt.order_by(Sweep.finished_at.desc(), Sweep.id.desc()).limit(1)).first()


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def job_counts(session: Session, sweep_id: int) -> dict[str, int]:
    from sqlalchemy import func

    rows = session.execute(select(Job.status, func.count()).where(Job.sweep_id == sweep_id)
                           .group_by(Job.status)).all()
    counts = {status.value: n for status, n in rows}
    return {"total": sum(counts.values()), **counts}


def sweep_to_dict(session: Session, sweep: Sweep, *, cases: bool = False) -> dict[str, Any]:
    """Return a sweep as JSON-able data: status, configuration, per-M table and recommendation."""
    cfg = sweep.config
    result = sweep.result or {}
    d = {"id": sweep.id, "status": sweep.status, "finished": sweep.status != RUNNING, "model": sweep.model,
         "pack": sweep.pack, "grid": cfg["grid"], "settings": cfg["settings"], "fluency_floor": cfg["floor"],
         "params": cfg["params"], "cases": len(cfg["cases"]), "step": sweep.step_index,
         "current_multiplier": sweep.current_multiplier, "jobs": job_counts(session, sweep.id),
         "table": result.get("table", []),
         "choices": [{k: s.get(k) for k in ("setting", "layers", "head_fraction", "multiplier", "success",
                                             "fluency", "considered", "stopped_at", "reason")}
                     for s in result.get("settings", [])],
         "recommendation": result.get("recommended"), "error": sweep.error,
         "created_at": _iso(sweep.created_at), "updated_at": _iso(sweep.updated_at),
         "finished_at": _iso(sweep.finished_at)}
    if cases:
        d["case_list"] = [{k: c[k] for k in ("name", "split", "instruction", "query")} for c in cfg["cases"]]
    return d


def drilldown(session: Session, sweep: Sweep) -> dict[str, Any]:
    """Return per-case rows for the sweep page: each case's jobs and scores by (setting, M)."""
    jobs = sweep_jobs(session, sweep.id)
    records = records_of(session, sweep)
    by_case: dict[str, dict[str, Any]] = {c["name"]: {"case": c, "cells": {}, "jobs": []} for c in sweep.config["cases"]}
    for job in jobs:
        if job.case_name in by_case:
            by_case[job.case_name]["jobs"].append(job)
    for r in records:
        label = protocol.setting_label(r["layers"], r["head_fraction"])
        by_case[r["case"]]["cells"][(label, r["multiplier"])] = r
    columns = sorted({key for row in by_case.values() for key in row["cells"]}, key=lambda k: (k[1], k[0]))
    return {"rows": list(by_case.values()), "columns": columns}


RECOMMENDED = "recommended"


def wants_recommended(value: Any) -> bool:
    """Tell whether a job's multipliers ask for the recommended M ("recommended", or a list holding only it)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return isinstance(value, str) and value.strip().lower() == RECOMMENDED


def resolve_recommended(session: Session, data: Any, settings: Mapping[str, Any]) -> Any:
    """Replace ``multipliers: "recommended"`` by the latest finished sweep's recommended M for the job's model.

    Its layer mode and head fraction fill layer_modes and head_boost_percentage when the job leaves them out.
    A ValidationError (422) says so when no finished sweep for that model has a recommendation.
    """
    if not isinstance(data, Mapping) or not wants_recommended(data.get("multipliers")):
        return data
    model = data.get("model") or settings["model.name"]
    if not isinstance(model, str):
        return data  # the validator reports the model
    sweep = latest_recommendation(session, model.strip())
    if sweep is None:
        raise ValidationError(f'multipliers "recommended" needs a finished calibration sweep of model {model!r} '
                              "with a recommendation, and there is none: start one (POST /api/sweeps or the "
                              "Sweeps page) or give multipliers as numbers", field="multipliers")
    out = dict(data)
    out["multipliers"] = [sweep.recommended_multiplier]
    if out.get("layer_modes") in (None, "", []):
        out["layer_modes"] = [sweep.recommended_layers]
    if out.get("head_boost_percentage") in (None, ""):
        out["head_boost_percentage"] = (sweep.recommended_head_fraction or 1.0) * 100.0
    return out


def models_with_recommendation(session: Session, models: Sequence[str]) -> set[str]:
    """Return the models among these that have a finished sweep with a recommendation."""
    if not models:
        return set()
    rows = session.scalars(select(Sweep.model).where(Sweep.model.in_(list(models)), Sweep.status == SUCCEEDED,
                                                     Sweep.recommended_multiplier.is_not(None)).distinct())
    return set(rows)
