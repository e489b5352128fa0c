"""The query and header parameters the routes document (web.apidoc.operation(query=..., headers=...)).

Documentation only: the routes read and check their parameters as before (shared.store.queries, the handlers).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from shared.store.queries import MAX_ID, MAX_LIMIT, cursor_pattern
from shared.store.tables import JobStatus

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
ID_PATH = {"type": "integer", "minimum": 1, "maximum": MAX_ID}  # path ids: larger ones cannot exist
# PostgreSQL text cannot hold NUL: such filters get 422.
NoNul = Annotated[str, Field(pattern="^[^\\x00]*$")]
IDEMPOTENCY_KEY = Field(None, alias="Idempotency-Key", min_length=1, max_length=255,
                        description="A retry with the same key (and body) answers with the same job (for "
                                    "v1.idempotency_hours) instead of submitting another.")


class JobFilters(BaseModel):
    status: JobStatus | None = None
    model: NoNul | None = None


class JobPaging(JobFilters):
    limit: int = Field(50, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(None, pattern=cursor_pattern("j"), description="next_cursor of the previous page "
                                                                               "(opaque)")


class RunFilters(BaseModel):
    job_id: Id | None = None
    model: NoNul | None = None
    variant: NoNul | None = None
    status: JobStatus | None = Field(None, description="status of the run's job")


class RunPaging(RunFilters):
    limit: int = Field(50, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(None, pattern=cursor_pattern("r"), description="next_cursor of the previous page "
                                                                               "(opaque)")


class JobExportFilters(JobFilters):
    sweep_id: Id | None = None


class FileQuery(BaseModel):
    purpose: str | None = None
    limit: int | None = Field(None, ge=1, le=10_000)
    after: str | None = Field(None, description="The last id of the previous page.")


class BatchQuery(BaseModel):
    after: str | None = Field(None, description="The last id of the previous page.")
    limit: int = Field(20, ge=1, le=100)


class IdempotencyHeaders(BaseModel):
    idempotency_key: str | None = IDEMPOTENCY_KEY


class ChatHeaders(IdempotencyHeaders):
    stainless_retry_count: str | None = Field(
        None, alias="x-stainless-retry-count",
        description="The openai SDK's try count: an integer 1 or more joins the job of the same request's first "
                    "try (anything else counts as a first try).")


class CompletionHeaders(IdempotencyHeaders):
    x_instaboost: str | None = Field(None, alias="X-InstaBoost",
                                     description="The boost as a JSON object like the body's instaboost (the body "
                                                 "wins).")
