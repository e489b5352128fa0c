"""The job store: SQLAlchemy 2.0 models for jobs and their runs.

Our database is the source of truth for a job's status (Celery's result backend is not used).
Every status change goes through ``shared.store.lifecycle.transition``.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (JSON, DateTime, Enum, Float, ForeignKey, Integer, LargeBinary, String, Text, TypeDecorator,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


NUL_MARK = "\u2400"  # ␀ SYMBOL FOR NULL: stands for a NUL character in stored text


def store_text(text: str) -> tuple[str, list[int] | None]:
    """Return (text storable on every database, offsets of the NUL characters it had, or None).

    PostgreSQL refuses NUL (U+0000) in text; SQLite keeps it. So that both store the same thing, each NUL
    becomes U+2400 (␀) and its offset is kept (``Run.output_nul_offsets``); ``produced_text`` undoes it.
    """
    if "\x00" not in text:
        return text, None
    offsets = [i for i, ch in enumerate(text) if ch == "\x00"]
    return text.replace("\x00", NUL_MARK), offsets


def produced_text(stored: str, offsets: list[int] | None) -> str:
    """Return the text as produced, from store_text's result (NUL characters put back)."""
    if not offsets:
        return stored
    chars = list(stored)
    for i in offsets:
        if 0 <= i < len(chars) and chars[i] == NUL_MARK:
            chars[i] = "\x00"
    return "".join(chars)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the offset; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use shared.store.tables.utcnow()")
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class JobStatus(str, enum.Enum):
    """A job's lifecycle.

    Allowed transitions (``ALLOWED``; enforced by ``shared.store.lifecycle.transition`` with a conditional UPDATE):

    - queued     -> running (a worker picked it up) | cancelled (cancelled before it ran) | failed
      (broker refused it, too many deliveries, or no worker served its model for
      limits.queued_without_worker_seconds)
    - running    -> succeeded | failed | cancelling (cancel requested; the worker stops at the next
      round, or at the next token) | queued (redelivery after a worker died mid-job)
    - cancelling -> cancelled (the worker stopped) | failed | succeeded (the last variant finished first)
    - succeeded, failed, cancelled: final.
    """

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINAL


ALLOWED: dict[JobStatus, set[JobStatus]] = {
    JobStatus.queued: {JobStatus.running, JobStatus.cancelled, JobStatus.failed},
    JobStatus.running: {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelling, JobStatus.queued},
    JobStatus.cancelling: {JobStatus.cancelled, JobStatus.failed, JobStatus.succeeded},
    JobStatus.succeeded: set(),
    JobStatus.failed: set(),
    JobStatus.cancelled: set(),
}
FINAL = frozenset(s for s, nxt in ALLOWED.items() if not nxt)


class Base(DeclarativeBase):
    pass


STATUS_TYPE = Enum(JobStatus, name="job_status", native_enum=False, length=16,
                   values_callable=lambda e: [m.value for m in e], validate_strings=True)


class Job(Base):
    """One submission: an instruction, a query, a model and the variants to generate."""

    __tablename__ = "jobs"
    # A sweep creates each (case, M, head fraction, scope and target mass) job once, however often its advance runs.
    __table_args__ = (UniqueConstraint("sweep_id", "case_name", "sweep_multiplier", "sweep_head_fraction",
                                       "sweep_setting", name="uq_jobs_sweep_cell"),
                      UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[JobStatus] = mapped_column(STATUS_TYPE, default=JobStatus.queued, index=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    # The validated JobRequest (JobRequest.to_params()); never holds secrets.
    params: Mapped[dict] = mapped_column(JSON)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Why it failed, machine-readable (shared.errors.JobErrorCode), where the worker knows; NULL otherwise.
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Set once the broker accepted the message: rows left NULL are re-enqueued by the recovery loop.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A job a sweep created: the sweep, the case it runs and the sweep stage (grid M) it belongs to.
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=True,
                                                 index=True)
    case_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sweep_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)  # the grid M of this job
    sweep_head_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A sweep job's scope and target mass (shared.calibration.cell_key: "" for all and none, and for jobs stored
    # before they were sweep dimensions). Never NULL on a sweep's job, so its unique cell holds (NULLs never collide).
    sweep_setting: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # "chat" for OpenAI chat completions (and batch lines), "completion" for /v1/completions; NULL or "instaboost" for the job API's jobs.
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The batch a chat job is a line of, and that line's custom_id.
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    custom_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A chat completion's Idempotency-Key (unique while it holds it; released after v1.idempotency_hours or when
    # its job failed), and the digest of its request, which an openai SDK retry without a key is matched by.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)

    runs: Mapped[list["Run"]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                             passive_deletes=True, order_by="Run.id")

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status.value} {self.model}>"


class Run(Base):
    """One generated variant of a job (the original, or one boosted configuration)."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("job_id", "variant", name="uq_runs_job_variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    variant: Mapped[str] = mapped_column(String(64))  # "original", "all_x10", "middle_x2.5"
    multiplier: Mapped[float] = mapped_column(Float)
    layers: Mapped[str] = mapped_column(String(255))  # "none" | "all" | "middle" | "0,3,5"
    heads: Mapped[str | None] = mapped_column(Text, nullable=True)  # "all", "50%" or JSON {layer: [heads]}
    # The output as stored: each NUL the model produced shows as U+2400 (␀), at the offsets listed in
    # output_nul_offsets (NULL when there was none); produced_text is the output exactly as generated.
    output_text: Mapped[str] = mapped_column(Text)
    output_nul_offsets: Mapped[list | None] = mapped_column(JSON, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    attention_mass: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # "stop" (end of sequence or a stop string) or "length" (cut at max_new_tokens); None for older runs.
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # shared.evaluation.scorers.score_output's dict (every column of scorers.COLUMNS), None for older runs.
    scores: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Token logprobs (shared.logprobs): {"prompt": section or None, "output": section or None}; None unless asked.
    logprobs: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    job: Mapped[Job] = relationship(back_populates="runs")

    @property
    def produced_text(self) -> str:
        """The output exactly as the model produced it (NUL characters included)."""
        return produced_text(self.output_text, self.output_nul_offsets)

    def __repr__(self) -> str:
        return f"<Run {self.id} job={self.job_id} {self.variant}>"


SWEEP_STATUSES = ("running", "succeeded", "failed", "cancelled")


class Sweep(Base):
    """A calibration sweep: a case set x a grid of M x layer modes (x head fractions), run as ordinary jobs.

    The sweep advances one grid stage (one M) at a time: when every job of the current stage is finished,
    the paper's stop rule on the validation half decides the next M or the end (shared.store.sweeps).
    """

    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    pack: Mapped[str | None] = mapped_column(String(255), nullable=True)  # built-in pack name, None if uploaded
    # The sweep's request: cases (with their split), grid, layer modes, head fractions, floor, job params.
    config: Mapped[dict] = mapped_column(JSON)
    stage_index: Mapped[int] = mapped_column(Integer, default=0)  # grid stages enqueued so far
    current_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The last computed summary (protocol.calibrate's dict without the raw records) and recommendation.
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    recommended_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    recommended_layers: Mapped[str | None] = mapped_column(String(64), nullable=True)
    recommended_head_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The rest of the recommended setting (NULL scope: a sweep stored before they were recorded here).
    recommended_scope: Mapped[str | None] = mapped_column(String(16), nullable=True)
    recommended_target_mass: Mapped[float | None] = mapped_column(Float, nullable=True)
    recommended_boilerplate_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL: 1
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def __repr__(self) -> str:
        return f"<Sweep {self.id} {self.status} {self.model}>"


class File(Base):
    """A file of the OpenAI Files API: a batch's input (purpose "batch") or its output and errors."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "file-<hex>"
    purpose: Mapped[str] = mapped_column(String(32))  # batch | batch_output
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(Integer)
    # Deferred: loaded only when read (GET .../content, a batch's creation), never by listings.
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Past this the file answers 404 and the recovery loop deletes it (v1.file_expiry_hours, or expires_after).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)


BATCH_STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                  "cancelled")
BATCH_FINAL = frozenset({"failed", "completed", "expired", "cancelled"})


class Batch(Base):
    """An OpenAI batch: each line of its input file is one stored chat job (Job.batch_id)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "batch_<hex>"
    status: Mapped[str] = mapped_column(String(16), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_total: Mapped[int] = mapped_column(Integer, default=0)
    # Lines refused before they became jobs: [{"line", "custom_id", "code", "message", "param"}].
    line_errors: Mapped[list | None] = mapped_column(JSON, nullable=True)
    errors: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the batch's own errors (status failed)
    meta: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The Idempotency-Key its create was sent with: a create repeating the key returns this batch.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True, index=True)


class Deployment(Base):
    """This database's deployment identity: one row, written once by migration 0007 (shared.deployment).

    Task messages and worker heartbeats carry the id, and Redis records which deployment owns a key prefix
    (redis.namespace), so two deployments on one Redis never take each other's jobs.
    """

    __tablename__ = "deployment"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # a uuid4
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
