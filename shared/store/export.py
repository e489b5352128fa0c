"""CSV export columns and rows: one row per run with its job's parameters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterator, Mapping

from sqlalchemy.orm import Session

from shared.store.queries import clean_filters, runs_query
from shared.store.tables import Job, Run

EXPORT_BATCH = 500


PARAM_COLUMNS = ("model", "engine", "placement", "instruction", "query", "max_new_tokens", "temperature",
                 "top_p", "seed", "start_layer", "num_middle_layers", "head_boost_percentage")
EXPORT_COLUMNS = ("run_id", "job_id", "job_status", "variant", "multiplier", "layers", "heads",
                  *PARAM_COLUMNS, "output_text", "prompt_tokens", "output_tokens", "seconds",
                  "attention_unboosted", "attention_boosted", "created_at")


def _mean_mass(mass: Any, key: str) -> float | None:
    """Return the mean over layers of a run's attention on the instruction, or None when not recorded."""
    values = mass.get(key) if isinstance(mass, Mapping) else None
    if not isinstance(values, list) or not values:
        return None
    try:
        return round(sum(float(v) for v in values) / len(values), 6)
    except (TypeError, ValueError):
        return None


def export_row(run: Run, job: Job) -> list[Any]:
    """Return one CSV row (EXPORT_COLUMNS) for a run and its job's parameters."""
    params = job.params or {}
    values = {"run_id": run.id, "job_id": job.id, "job_status": job.status.value, "variant": run.variant,
              "multiplier": run.multiplier, "layers": run.layers, "heads": run.heads,
              "output_text": run.produced_text, "prompt_tokens": run.prompt_tokens,
              "output_tokens": run.output_tokens, "seconds": run.seconds,
              "attention_unboosted": _mean_mass(run.attention_mass, "unboosted"),
              "attention_boosted": _mean_mass(run.attention_mass, "boosted"),
              "created_at": run.created_at.isoformat() if isinstance(run.created_at, datetime) else run.created_at}
    for name in PARAM_COLUMNS:
        values[name] = job.model if name == "model" else params.get(name)
    return [values[c] for c in EXPORT_COLUMNS]


def iter_runs_for_export(session: Session, filters: Mapping[str, Any] | None = None) -> Iterator[list[Any]]:
    """Yield export rows for every run matching filters, oldest first, streaming in batches."""
    f = clean_filters("runs", filters)
    stmt = runs_query(f).order_by(Run.id.asc()).execution_options(yield_per=EXPORT_BATCH)
    for run, job in session.execute(stmt):
        yield export_row(run, job)
