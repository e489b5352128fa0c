"""Read calibration sweeps: look one up, render it as JSON-able data, and lay out its per-case drill-down."""

from __future__ import annotations

from typing import Any, Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.evaluation import protocol
from shared.resources import jobs as resources
from shared.store.queries import get_row
from shared.calibration import varying
from shared.store.sweeps import RUNNING, records_of, settings_of, sweep_jobs
from shared.store.tables import Job, Sweep


def get_sweep(session: Session, sweep_id: Any) -> Sweep:
    """Return a sweep or raise NotFound."""
    return get_row(session, Sweep, sweep_id, "sweep")


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def job_counts(session: Session, sweep_id: int) -> dict[str, int]:
    """Return how many of the sweep's jobs are in each status, and their total."""
    rows = session.execute(select(Job.status, func.count()).where(Job.sweep_id == sweep_id)
                           .group_by(Job.status)).all()
    counts = {status.value: n for status, n in rows}
    return {"total": sum(counts.values()), **counts}


def sweep_to_dict(session: Session, sweep: Sweep, *, cases: bool = False,
                  links: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return a sweep as JSON-able data: status, configuration, per-M table and recommendation (and its URLs)."""
    cfg = sweep.config
    result = sweep.result or {}
    settings_ = [{**s.to_dict(), "label": s.label} for s in settings_of(sweep)]
    d = {"id": sweep.id, "status": sweep.status, "finished": sweep.status != RUNNING, "model": sweep.model,
         "pack": sweep.pack, "grid": cfg["grid"], "settings": settings_,
         "dimensions": [k for k, _ in varying(settings_)], "fluency_floor": cfg["floor"],
         "copy_ceiling": cfg.get("copy_ceiling"),
         "params": cfg["params"], "cases": len(cfg["cases"]), "step": sweep.stage_index,
         "current_multiplier": sweep.current_multiplier, "jobs": job_counts(session, sweep.id),
         "table": result.get("table", []),
         "choices": [{k: s.get(k) for k in ("setting", "layers", "head_fraction", "scope", "target_mass",
                                             "boilerplate_multiplier", "multiplier", "success",
                                             "effective_success", "fluency", "copy_rate", "considered",
                                             "over_copy_ceiling", "stopped_at", "reason")}
                     for s in result.get("settings", [])],
         "recommendation": result.get("recommended"), "error": sweep.error,
         "created_at": _iso(sweep.created_at), "updated_at": _iso(sweep.updated_at),
         "finished_at": _iso(sweep.finished_at)}
    if cases:
        d["case_list"] = [{k: c[k] for k in ("name", "split", "instruction", "query")} for c in cfg["cases"]]
    if links is not None:
        d["links"] = links
    return resources.Sweep(**d).dump()


def drilldown(session: Session, sweep: Sweep) -> dict[str, Any]:
    """Return per-case rows for the sweep page: each case's jobs and scores by (setting, M)."""
    jobs = sweep_jobs(session, sweep.id)
    records = records_of(session, sweep)
    by_case: dict[str, dict[str, Any]] = {c["name"]: {"case": c, "cells": {}, "jobs": []} for c in sweep.config["cases"]}
    for job in jobs:
        if job.case_name in by_case:
            by_case[job.case_name]["jobs"].append(job)
    for r in records:
        label = protocol.setting_label(r["layers"], r["head_fraction"], r["scope"], r["target_mass"],
                                       r.get("boilerplate_multiplier"))
        by_case[r["case"]]["cells"][(label, r["multiplier"])] = r
    columns = sorted({key for row in by_case.values() for key in row["cells"]}, key=lambda k: (k[1], k[0]))
    return {"rows": list(by_case.values()), "columns": columns}
