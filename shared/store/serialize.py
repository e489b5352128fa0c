"""Jobs and runs as JSON-able data, for the API and the pages' polling."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.resources import jobs as resources
from shared.store.tables import FINAL, Job, Run


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def run_boost(variant: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Return a run's scope, target mass and boilerplate M, from its job's params (the original variant boosts
    nothing; jobs stored before the boilerplate M lack it: 1)."""
    params = params or {}
    original = variant == "original"
    return {"scope": params.get("scope") or "all", "target_mass": None if original else params.get("target_mass"),
            "boilerplate_multiplier": 1.0 if original else params.get("boilerplate_multiplier") or 1.0}


def run_to_dict(run: Run, job: Job | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a run as JSON-able data; params: its job's (for the boost's scope and target mass); job: when the
    run is listed without its job (adds the job's model, status and params)."""
    listed = {"model": job.model, "job_status": job.status} if job is not None else {}
    params = job.params if job is not None else params
    return resources.Run(**{"id": run.id, "job_id": run.job_id, "variant": run.variant, "multiplier": run.multiplier,
            "layers": run.layers, "heads": run.heads, **run_boost(run.variant, params),
            # As produced, NUL characters included (JSON writes them as \u0000); see Run.output_nul_offsets.
            "output_text": run.produced_text,
            "prompt_tokens": run.prompt_tokens, "output_tokens": run.output_tokens, "seconds": run.seconds,
            "attention_mass": run.attention_mass, "finish_reason": run.finish_reason, "scores": run.scores,
            "created_at": _iso(run.created_at)}, **listed).dump()


def job_to_dict(job: Job, runs: bool = True) -> dict[str, Any]:
    """Return a job (and its runs so far) as JSON-able data."""
    d = {"id": job.id, "status": job.status.value, "finished": job.status in FINAL, "model": job.model,
         "params": job.params,
         "progress": {"done": job.progress_done, "total": job.progress_total},
         "error": job.error, "attempts": job.attempts, "worker": job.worker,
         "created_at": _iso(job.created_at), "enqueued_at": _iso(job.enqueued_at),
         "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
         "sweep_id": job.sweep_id, "case_name": job.case_name}
    if runs:
        d["runs"] = [resources.Run(**run_to_dict(r, params=job.params)) for r in job.runs]
    return resources.Job(**d).dump()
