"""The /api resources: jobs, runs, sweeps, the served models and the health answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shared.resources.base import Described, IsoTime, Number, Object, Resource
from shared.store.tables import SWEEP_STATUSES, JobStatus


class Run(Resource):
    """One variant's output of a job."""

    id: int
    job_id: int
    variant: str
    multiplier: Number
    layers: str
    heads: str | None
    scope: str = Field(description="Which query positions the boost reached: all, generated or prompt")
    target_mass: Number | None = Field(description="The attention share on the instruction raised to (null: a fixed M)")
    boilerplate_multiplier: Number = Field(description="The M on the instruction turn's template tokens (1: off)")
    output_text: str = Field(description="The output exactly as generated (NUL characters included, as \\u0000)")
    prompt_tokens: int
    output_tokens: int
    seconds: Number
    attention_mass: Object | None
    finish_reason: str | None
    scores: Object | None
    created_at: IsoTime | None
    # Only in GET /api/runs, where a run is listed without its job.
    model: str | None = None
    job_status: JobStatus | None = None


class Progress(Resource):
    done: int
    total: int


class Job(Resource):
    """A job: its status, parameters, progress and (when asked) its runs so far."""

    id: int
    status: JobStatus
    finished: bool
    model: str
    params: Object = Field(description="The validated JobRequest with defaults filled in.")
    progress: Progress
    error: str | None
    attempts: int
    worker: str | None
    created_at: IsoTime | None
    enqueued_at: IsoTime | None
    started_at: IsoTime | None
    finished_at: IsoTime | None
    sweep_id: int | None
    case_name: str | None
    runs: list[Run] | None = None


class JobPage(Resource):
    items: list[Job]
    next_cursor: str | None
    next: str | None


class RunPage(Resource):
    items: list[Run]
    next_cursor: str | None
    next: str | None


class SweepLinks(Resource):
    self: str
    csv: str
    page: str
    jobs_csv: str


class Sweep(Resource):
    """A calibration sweep: status, configuration, per-M table and recommendation."""

    id: int
    status: Literal[SWEEP_STATUSES]
    finished: bool
    model: str
    pack: str | None
    grid: list[Number]
    settings: list[Any] = Field(description="The settings swept: layers, head_fraction, scope, target_mass "
                                "(null: a fixed M only), boilerplate_multiplier (1: off) and label.")
    dimensions: list[str] = Field(description="The setting dimensions whose value varies between the settings "
                                  "(layers, head_fraction, scope, target_mass, boilerplate_multiplier): the sweep "
                                  "page's columns.")
    fluency_floor: Number
    copy_ceiling: Number | None = Field(description="The largest share of answers copying the instruction that a "
                                        "recommended setting may have (null: sweeps stored before the ceiling).")
    params: Object
    cases: int
    step: int
    current_multiplier: Number | None
    jobs: dict[str, int] = Field(description="Its jobs: total, and how many in each status.")
    table: list[Any]
    choices: list[Object]
    recommendation: Object | None
    error: str | None
    created_at: IsoTime | None
    updated_at: IsoTime | None
    finished_at: IsoTime | None
    case_list: list[Object] | None = None
    links: SweepLinks | None = None


class SweepList(Resource):
    items: list[Sweep]


class ServedModel(Resource):
    """A model live workers hold or load, with what they advertise about it."""

    name: str
    workers: int = Field(ge=0, description="Workers that hold it loaded.")
    starting: int = Field(ge=0, description="Workers loading it; jobs for it are accepted and wait.")
    status: Literal["ready", "starting"]
    n_layers: int | None = Field(None, description="Its layers (start_layer must be below).")
    n_heads: int | None = Field(None, description="Its attention heads per layer.")
    max_context: int | None = Field(None, description="Its context in tokens (max_new_tokens must be below).")
    recommended: bool | None = Field(None, description="Whether a finished calibration sweep recommends a boost, "
                                                       "so multipliers 'recommended' is accepted (null: the "
                                                       "database did not answer).")
    recommendation: Object | None = Field(None, description="The setting multipliers 'recommended' takes: its "
                                          "sweep_id, multiplier, layers, head_fraction, scope, target_mass and "
                                          "boilerplate_multiplier "
                                          "(left out: none, or the database did not answer).")


class WorkerInfo(Resource):
    hostname: str | None
    models: list[str] | None
    starting: list[str]
    pid: Any
    started_at: Any
    seen_at: Any


class Models(Resource):
    """The default model, the models live workers serve, and the workers."""

    default: str
    models: list[ServedModel]
    workers: list[WorkerInfo]


class Health(Resource):
    status: Literal["ok", "unavailable"]
    database: str
    broker: str


class Ready(Resource):
    status: Literal["ok", "starting", "unavailable"]
    database: str
    broker: str
    model: str = Field(description="The default model: served, starting or missing.")


class Queue(Resource):
    """The queue page's data."""

    generated_at: IsoTime
    workers: list[Object]
    models: list[Object]


class OpenAPIDocument(Described):
    """An OpenAPI 3.1 document."""
