"""CSV export columns and rows: one row per run with its job's parameters."""

from __future__ import annotations

from datetime import datetime
from itertools import groupby
from typing import Any, Iterator, Mapping

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.evaluation.scorers import COLUMNS as SCORE_COLUMNS
from shared.store.queries import clean_filters, runs_query
from shared.store.tables import Job, Run

EXPORT_BATCH = 500
WIDE_BATCH = 50  # jobs per read of the wide export (with all their runs: up to limits.max_variants each)


PARAM_COLUMNS = ("model", "engine", "placement", "instruction", "query", "max_new_tokens", "temperature",
                 "top_p", "seed", "start_layer", "num_middle_layers", "head_boost_percentage")
EXPORT_COLUMNS = ("run_id", "job_id", "job_status", "variant", "multiplier", "layers", "heads",
                  *PARAM_COLUMNS, "output_text", "prompt_tokens", "output_tokens", "seconds",
                  "attention_unboosted", "attention_boosted", "created_at", "finish_reason", *SCORE_COLUMNS,
                  "score_error")


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
    scores = run.scores if isinstance(run.scores, Mapping) else {}
    values["finish_reason"] = run.finish_reason
    for name in (*SCORE_COLUMNS, "score_error"):
        values[name] = scores.get(name)
    return [values[c] for c in EXPORT_COLUMNS]


def iter_runs_for_export(session: Session, filters: Mapping[str, Any] | None = None) -> Iterator[list[Any]]:
    """Yield export rows for every run matching filters, oldest first, streaming in batches."""
    f = clean_filters("runs", filters)
    stmt = runs_query(f).order_by(Run.id.asc()).execution_options(yield_per=EXPORT_BATCH)
    for run, job in session.execute(stmt):
        yield export_row(run, job)


# -- the wide export: one row per job, the prototype's run-tests comparison columns ------------------------------

PROTOTYPE_COLUMNS = ("test_case", "run_index", "original_length", "all_layers_length", "middle_layers_length",
                "original_output", "all_layers_output", "middle_layers_output")
WIDE_VARIANTS = ("original", "all_layers", "middle_layers")
WIDE_SCORES = ("fluency", "follows", "perplexity", "repetitive", "copied")
WIDE_COLUMNS = (*PROTOTYPE_COLUMNS, "job_id", "job_status", "sweep_id", "model", "engine", "multiplier", "start_layer",
                "num_middle_layers", "head_boost_percentage", "placement", "seed", "max_new_tokens",
                "instruction", "query",
                *(f"{v}_{c}" for v in WIDE_VARIANTS for c in ("tokens", "pass", *WIDE_SCORES)))
EXTRA_SCORES = ("fluency", "follows")
WIDE_FILTERS = ("status", "model", "sweep_id")


def clean_wide_filters(filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the wide export's filters: the job filters plus sweep_id."""
    from shared.store.queries import MAX_ID
    from shared.validation import parse_int

    filters = dict(filters or {})
    sweep = filters.pop("sweep_id", None)
    clean = clean_filters("jobs", {k: v for k, v in filters.items() if k in ("status", "model")})
    if sweep not in (None, ""):
        clean["sweep_id"] = parse_int("sweep_id", sweep, lo=1, hi=MAX_ID)
    return clean


def _wide_jobs(filters: Mapping[str, Any]):
    from shared.store.queries import jobs_query

    stmt = jobs_query({k: v for k, v in filters.items() if k != "sweep_id"})
    if "sweep_id" in filters:
        stmt = stmt.where(Job.sweep_id == filters["sweep_id"])
    return stmt


def _main_variants(runs: list) -> dict[str, Any]:
    """Map the prototype's three columns to a job's runs (or run rows with variant and layers, in id order): the
    original, its first all-layers and middle-layers variant."""
    out: dict[str, Any] = {}
    for r in runs:
        key = "original" if r.variant == "original" else f"{r.layers}_layers" if r.layers in ("all", "middle") else None
        if key and key not in out:
            out[key] = r
    return out


def snapshot(session: Session) -> None:
    """Start the session's transaction as one snapshot, so a header and the rows streamed after it agree.

    PostgreSQL: REPEATABLE READ (every statement sees the database as of the first). SQLite: an explicit
    BEGIN (WAL readers keep the snapshot their transaction started with).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True})
    else:
        session.execute(text("BEGIN"))


def wide_columns(session: Session, filters: Mapping[str, Any]) -> list[str]:
    """Return the wide export's header: the prototype's columns, then an output and score columns per extra variant.

    Reads only (job id, run id, variant, layers) of the filtered jobs' runs, streamed: no output text is loaded.
    """
    jobs = _wide_jobs(filters).with_only_columns(Job.id).subquery()
    stmt = (select(Run.job_id, Run.id, Run.variant, Run.layers).join(jobs, Run.job_id == jobs.c.id)
            .order_by(Run.job_id, Run.id).execution_options(yield_per=EXPORT_BATCH))
    extra: dict[str, None] = {}  # ordered set
    for _, group in groupby(session.execute(stmt), key=lambda r: r.job_id):
        runs = list(group)
        main = {r.id for r in _main_variants(runs).values()}
        for r in runs:
            if r.id not in main:
                extra.setdefault(r.variant)
    return [*WIDE_COLUMNS, *(f"{v}_{c}" for v in extra for c in ("output", *EXTRA_SCORES))]


def _job_batches(session: Session, filters: Mapping[str, Any]) -> Iterator[list[tuple[Job, list[Run]]]]:
    """Yield the filtered jobs, oldest first, WIDE_BATCH at a time with their runs (one query each)."""
    last = 0
    while True:
        jobs = list(session.scalars(_wide_jobs(filters).where(Job.id > last).order_by(Job.id.asc())
                                    .limit(WIDE_BATCH)))
        if not jobs:
            return
        runs: dict[int, list[Run]] = {j.id: [] for j in jobs}
        for run in session.scalars(select(Run).where(Run.job_id.in_(list(runs))).order_by(Run.job_id, Run.id)):
            runs[run.job_id].append(run)
        yield [(j, runs[j.id]) for j in jobs]
        last = jobs[-1].id
        session.expunge_all()  # nothing of a written batch stays in memory


def iter_jobs_wide(session: Session, filters: Mapping[str, Any], columns: list[str]) -> Iterator[list[Any]]:
    """Yield one row per job (oldest first) in columns' order, reading WIDE_BATCH jobs at a time."""
    counts: dict[str, int] = {}
    for batch in _job_batches(session, filters):
        for job, runs in batch:
            case = job.case_name or f"job-{job.id}"
            yield _wide_row(job, runs, counts.get(case, 0), columns)
            counts[case] = counts.get(case, 0) + 1


def _wide_row(job: Job, runs: list[Run], run_index: int, columns: list[str]) -> list[Any]:
    params = job.params or {}
    values: dict[str, Any] = {"test_case": job.case_name or f"job-{job.id}", "run_index": run_index,
                              "job_id": job.id, "job_status": job.status.value, "sweep_id": job.sweep_id,
                              "model": job.model, "multiplier": (params.get("multipliers") or [None])[0]}
    for name in ("engine", "start_layer", "num_middle_layers", "head_boost_percentage", "placement", "seed",
                 "max_new_tokens", "instruction", "query"):
        values[name] = params.get(name)
    main = _main_variants(runs)
    for v in WIDE_VARIANTS:
        r = main.get(v)
        scores = r.scores if r is not None and isinstance(r.scores, Mapping) else {}
        values[f"{v}_output"] = r.produced_text if r else None
        values[f"{v}_length"] = len(r.produced_text) if r else None
        values[f"{v}_tokens"] = r.output_tokens if r else None
        follows = scores.get("follows")
        values[f"{v}_pass"] = None if follows is None else ("pass" if follows else "fail")
        for c in WIDE_SCORES:
            values[f"{v}_{c}"] = scores.get(c)
    main_ids = {r.id for r in main.values()}
    for r in runs:
        if r.id in main_ids:
            continue
        scores = r.scores if isinstance(r.scores, Mapping) else {}
        values[f"{r.variant}_output"] = r.produced_text
        for c in EXTRA_SCORES:
            values[f"{r.variant}_{c}"] = scores.get(c)
    return [values.get(c) for c in columns]
