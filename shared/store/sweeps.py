"""Calibration sweeps in the service: create one, advance it stage by stage with the paper's stop rule, cancel it.

A sweep is a case set x a grid of M x settings (layer modes x head fractions x scopes x target masses) run as
ordinary jobs, one per (case, M, head fraction, scope, target mass) with its layer modes as variants, linked to the
sweep by ``jobs.sweep_id`` (``case_name``, ``sweep_multiplier``, ``sweep_head_fraction``, ``sweep_setting``: the
scope and target mass). Each job's original variant is the unboosted baseline (M = 1, shared by every setting; the
first stage's is used).

``advance`` moves a sweep on: once every job of the current stage is finished it reads all the sweep's
scored runs, recomputes the summary (``shared.evaluation.protocol.calibrate``) and, while some setting's
validation fluency stays at or above the floor, creates the next stage's jobs; otherwise it finishes the
sweep with its recommendation. It is called by the worker when a sweep job ends, and by the recovery loop on
every pass (so a worker killed between finishing a job and advancing loses nothing). It is idempotent and
safe to run concurrently: the sweep row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL, the write lock
on SQLite), a stage's jobs are unique per (sweep, case, M, head fraction), and the new jobs are committed
before their messages are sent (unsent ones stay in the recovery loop's outbox, ``enqueued_at`` NULL).

Admission: a stage's jobs pass the same queued-job cap as submissions (``limits.max_queued_jobs``, under the
same lock, ``shared.store.submission.lock_queue``). A new sweep whose first stage does not fit, or one beyond
``limits.max_running_sweeps`` running sweeps, is refused (429) and nothing is stored. A later stage that does not
fit *waits*: the sweep stays ``running`` at its current stage and the next ``advance`` (the recovery loop's pass, every
``sweeper.interval`` seconds) tries again. A next stage that fails validation (e.g. a limit lowered since the
sweep started) fails the sweep with that message.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.calibration import SweepSetting, assign_splits, boosted_grid, record, result_summary, still_going
from shared.errors import Conflict, NotFound, TooManyJobs, TooManySweeps, ValidationError
from shared.evaluation import protocol
from shared.evaluation.cases import Case
from shared.job_request import JobRequest
from shared.settings import Settings
from shared.store import submission
from shared.store.tables import FINAL, Job, JobStatus, Run, Sweep, utcnow

log = logging.getLogger("instaboost.sweeps")

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"
# Job fields a sweep passes to every job it creates (the rest are set per cell).
BASE_FIELDS = ("model", "start_layer", "num_middle_layers", "seed", "placement", "engine", "max_new_tokens",
               "temperature", "top_p", "score_perplexity", "scope", "target_mass", "boilerplate_multiplier")
Sender = Callable[[int, str], None]  # (job id, model) -> publish the job's message


def case_to_dict(case: Case, split_: str) -> dict[str, Any]:
    """Return a case as stored in a sweep's config (checks as the job fields take them)."""
    return {"name": case.name, "instruction": case.instruction, "query": case.query,
            "description": case.description, "split": split_,
            "checks": [{"type": c.type} if c.value is None else {"type": c.type, "value": c.value}
                       for c in case.checks],
            "ifeval": [{"id": c.id, "kwargs": dict(c.kwargs)} for c in case.ifeval]}


def settings_of(sweep: Sweep) -> list[SweepSetting]:
    # Settings stored before scope and target mass were sweep dimensions take the sweep's one value of each.
    params = sweep.config.get("params") or {}
    return [SweepSetting(s["layers"], float(s["head_fraction"]), s.get("scope") or params.get("scope") or "all",
                         s.get("target_mass", params.get("target_mass")),
                         float(s.get("boilerplate_multiplier") or params.get("boilerplate_multiplier") or 1.0))
            for s in sweep.config["settings"]]


def cell_request(sweep_config: Mapping[str, Any], case: Mapping[str, Any], m: float, setting: SweepSetting,
                 layer_modes: Sequence[str], settings: Settings) -> JobRequest:
    """Return the job request of one (case, M, head fraction, scope, target mass, boilerplate M) cell."""
    return JobRequest.from_dict({**sweep_config["params"], "instruction": case["instruction"], "query": case["query"],
                                 "multipliers": [m], "layer_modes": list(layer_modes),
                                 "head_boost_percentage": setting.head_fraction * 100.0, "scope": setting.scope,
                                 "target_mass": setting.target_mass,
                                 "boilerplate_multiplier": setting.boilerplate_multiplier, "checks": case["checks"],
                                 "ifeval": case["ifeval"], "attention": False}, settings, strict=True)


def create_sweep(session: Session, *, cases: Sequence[Case], pack: str | None, grid: Sequence[float],
                 settings_: Sequence[SweepSetting], floor: float, params: Mapping[str, Any],
                 settings: Settings, sender: Sender | None = None,
                 facts: Mapping[str, Any] | None = None) -> Sweep:
    """Store a running sweep (validating every cell's job request first) and start its first step.

    facts: what the live workers advertise about the model (layers, context), checked for every case.
    """
    if not boosted_grid(grid):
        raise ValidationError("the grid needs at least one M other than 1 (M = 1 is the unboosted baseline, "
                              "run with every step)", field="grid")
    splits = assign_splits(cases)
    config = {"cases": [case_to_dict(c, splits[c.name]) for c in cases], "grid": [float(m) for m in grid],
              "settings": [s.to_dict() for s in settings_], "floor": float(floor),
              "copy_ceiling": settings.scoring.copy_ceiling,
              "params": dict(params)}
    errors = []
    modes = list(dict.fromkeys(s.layers for s in settings_))
    for i, case in enumerate(config["cases"]):  # the dimensions' values are valid already (sweep_settings)
        try:
            req = cell_request(config, case, boosted_grid(grid)[0], settings_[0], modes, settings)
            if facts:
                req.check_model(facts)
        except ValidationError as exc:
            errors += [{"field": f"cases[{i}].{e['field']}", "message": f"case {case['name']!r}: {e['message']}"}
                       for e in exc.errors]
    if errors:
        raise ValidationError(f"{len(errors)} problems in the sweep's cases: " +
                              "; ".join(e["message"] for e in errors[:5]), errors=errors)
    sweep = Sweep(status=RUNNING, model=params["model"], pack=pack, config=config, stage_index=0,
                  current_multiplier=None, created_at=utcnow(), updated_at=utcnow())
    _begin(session)
    submission.lock_queue(session)
    running = session.execute(select(func.count()).select_from(Sweep).where(Sweep.status == RUNNING)).scalar_one()
    limit = settings.limits.max_running_sweeps
    if running >= limit:
        session.rollback()
        raise TooManySweeps(f"{running} calibration sweeps are running, the most limits.max_running_sweeps allows "
                          f"({limit}); retry when one has finished, or cancel one", retry_after=60)
    first = boosted_grid(grid)[0]
    try:  # refused as a whole (429, nothing stored) when its first stage does not fit under the queued-job cap
        session.add(sweep)
        session.flush()
        created = _start_stage(session, sweep, first, settings_, settings)
        sweep.stage_index, sweep.current_multiplier = 1, first
        sweep_id = sweep.id
        session.commit()
    except Exception:
        session.rollback()
        raise
    log.info("sweep %s: started, step M=%g, %d jobs", sweep_id, first, len(created))
    _send_all(session, created, sender)
    return session.get(Sweep, sweep_id, populate_existing=True)


def _begin(session: Session) -> None:
    """On SQLite, open the transaction with the write lock (BEGIN IMMEDIATE); PostgreSQL locks rows or keys."""
    if session.get_bind().dialect.name == "sqlite":
        if session.connection().connection.dbapi_connection.in_transaction:
            session.commit()
        session.execute(text("BEGIN IMMEDIATE"))


def _lock(session: Session, sweep_id: int) -> Sweep | None:
    if session.get_bind().dialect.name == "sqlite":
        _begin(session)
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
            params = job.params or {}
            setting = SweepSetting(run.layers, float(job.sweep_head_fraction or 1.0), params.get("scope") or "all",
                                   params.get("target_mass"), float(params.get("boilerplate_multiplier") or 1.0))
            m = float(run.multiplier)
        out.append(record(scores, case=job.case_name, split_=splits[job.case_name], multiplier=m, setting=setting,
                          job_id=job.id))
    return out


def summarize_sweep(session: Session, sweep: Sweep, n_boot: int = protocol.N_BOOT) -> dict[str, Any]:
    """Return the sweep's current summary (table, per-setting choice, recommendation)."""
    records = records_of(session, sweep)
    if not records:
        return {"floor": sweep.config["floor"], "table": [], "settings": [], "best": None, "recommended": None}
    # A sweep stored before the copy ceiling existed has none (None), so its recommendation stays as it was.
    return result_summary(protocol.calibrate(records, floor=sweep.config["floor"],
                                             copy_ceiling=sweep.config.get("copy_ceiling"), n_boot=n_boot))


def _start_stage(session: Session, sweep: Sweep, m: float, going: Sequence[SweepSetting],
                settings: Settings) -> list[tuple[int, str]]:
    """Insert the stage's jobs (queued, not yet sent) if they fit under the queued-job cap; return [(job id, model)].

    Raises ValidationError (a cell's job request is invalid) or TooManyJobs (after a rollback: the stage does not fit).
    """
    cells = []
    groups: dict[SweepSetting, list[str]] = {}  # one job per head fraction, scope, target mass, boilerplate M; modes: variants
    for s in going:
        groups.setdefault(SweepSetting("all", s.head_fraction, s.scope, s.target_mass, s.boilerplate_multiplier),
                          []).append(s.layers)
    for case in sweep.config["cases"]:
        for group, modes in groups.items():
            cells.append((case["name"], group, cell_request(sweep.config, case, m, group, modes, settings)))
    submission.lock_queue(session)
    submission.check_room(session, len(cells), settings.limits.max_queued_jobs,
                          hint=f"this sweep's step M={m:g} waits for room (retry, or give fewer cases with limit)")
    created = []
    for case_name, group, req in cells:
        job = Job(status=JobStatus.queued, model=req.model, params=req.to_params(), progress_done=0,
                  progress_total=len(req.variants()), sweep_id=sweep.id, case_name=case_name,
                  sweep_multiplier=m, sweep_head_fraction=group.head_fraction, sweep_setting=group.cell_key,
                  created_at=utcnow())
        try:
            with session.begin_nested():
                session.add(job)
            created.append((job.id, job.model))
        except IntegrityError:  # another advance created this cell first
            pass
    return created


def _send_all(session: Session, created: Sequence[tuple[int, str]], sender: Sender | None) -> None:
    if sender is not None:
        for job_id, model in created:
            send_job(session, job_id, model, sender)


def advance(session: Session, sweep_id: int, settings: Settings, sender: Sender | None = None) -> str:
    """Move the sweep on if its current stage is done; return its status (see the module docstring)."""
    sweep = _lock(session, sweep_id)
    if sweep is None:
        session.rollback()
        raise NotFound(f"sweep {sweep_id} does not exist", field="id")
    if sweep.status != RUNNING:
        session.rollback()
        return sweep.status
    current = sweep.current_multiplier
    if current is not None:
        pending = session.execute(select(Job.id).where(Job.sweep_id == sweep.id, Job.sweep_multiplier == current,
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
        try:
            created = _start_stage(session, sweep, nxt, going, settings)
        except TooManyJobs:  # rolled back: the sweep stays at its stage, and the next advance tries again
            log.info("sweep %s: step M=%g waits for room under limits.max_queued_jobs", sweep_id, nxt)
            return RUNNING
        except ValidationError as exc:
            session.rollback()
            return _fail(session, sweep_id, f"step M={nxt:g} cannot run: {exc.message}")
        sweep.stage_index += 1
        sweep.current_multiplier = nxt
        sweep.result = summarize_sweep(session, sweep, n_boot=200) if records else None
        sweep.updated_at = utcnow()
        session.commit()
        log.info("sweep %s: step M=%g, %d jobs", sweep_id, nxt, len(created))
    else:
        _finish(session, sweep)
        session.commit()
        log.info("sweep %s: finished, recommended M=%s", sweep_id, sweep.recommended_multiplier)
    _send_all(session, created, sender)
    return sweep.status


def _fail(session: Session, sweep_id: int, message: str) -> str:
    """Fail a running sweep with message (its current stage is done, so no job of it is left to cancel)."""
    sweep = _lock(session, sweep_id)
    if sweep is None or sweep.status != RUNNING:
        session.rollback()
        return sweep.status if sweep is not None else FAILED
    sweep.status, sweep.error = FAILED, message
    sweep.finished_at = sweep.updated_at = utcnow()
    session.commit()
    log.warning("sweep %s: failed: %s", sweep_id, message)
    return FAILED


def _finish(session: Session, sweep: Sweep) -> None:
    summary = summarize_sweep(session, sweep)
    rec = summary.get("recommended")
    sweep.result = summary
    sweep.status = SUCCEEDED
    sweep.recommended_multiplier = rec["multiplier"] if rec else None
    sweep.recommended_layers = rec["layers"] if rec else None
    sweep.recommended_head_fraction = rec["head_fraction"] if rec else None
    sweep.recommended_scope = rec.get("scope", "all") if rec else None
    sweep.recommended_target_mass = rec.get("target_mass") if rec else None
    sweep.recommended_boilerplate_multiplier = rec.get("boilerplate_multiplier", 1.0) if rec else None
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
        log.warning("sweep job %s not sent (%s); the recovery loop's outbox sends it", job_id, type(exc).__name__)
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
