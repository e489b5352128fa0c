"""The /v1 resources, in OpenAI's shapes: models, files, batches, and the completion objects."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.resources.base import Described, Object, Resource, UnixTime
from shared.store.tables import BATCH_STATUSES

NullableUnixTime = UnixTime | None


class Model(Resource):
    id: str
    object: Literal["model"]
    created: UnixTime
    owned_by: str


class ModelList(Resource):
    object: Literal["list"]
    data: list[Model]


class File(Resource):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: UnixTime
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: str
    expires_at: int | None = Field(description="Unix seconds; past it the file answers 404 and is deleted "
                                               "(null: kept until deleted).")
    status_details: None


class FileList(Resource):
    object: Literal["list"]
    data: list[File]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(Resource):
    id: str
    object: Literal["file"]
    deleted: bool


class RequestCounts(Resource):
    total: int
    completed: int
    failed: int


class Batch(Resource):
    """OpenAI's batch object; each input line is one stored chat job."""

    id: str
    object: Literal["batch"]
    endpoint: str
    errors: Object | None
    input_file_id: str
    completion_window: str
    status: Literal[BATCH_STATUSES]
    output_file_id: str | None
    error_file_id: str | None
    created_at: UnixTime
    in_progress_at: NullableUnixTime
    expires_at: NullableUnixTime
    finalizing_at: NullableUnixTime
    completed_at: NullableUnixTime
    failed_at: NullableUnixTime
    expired_at: NullableUnixTime
    cancelling_at: NullableUnixTime
    cancelled_at: NullableUnixTime
    request_counts: RequestCounts
    metadata: dict[str, str] | None


class BatchList(Resource):
    object: Literal["list"]
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Usage(Described):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(Described):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class ChatChoice(Described):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: Object | None = None


class ChatCompletion(Described):
    """A chat completion (shared.chat); its id is the id of the job that ran it."""

    id: str = Field(description="The id of the job that ran it.")
    object: Literal["chat.completion"]
    created: UnixTime
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
    instaboost: Object | None = None


class CompletionLogprobs(Described):
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[Object | None] | None = None
    text_offset: list[int] | None = None


class CompletionChoice(Described):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: CompletionLogprobs | None


class Completion(Described):
    """A legacy completion (shared.completions)."""

    id: str = Field(description="cmpl-<the id of the job that ran it>.")
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Object
    instaboost: Object | None = None


class OutputText(Described):
    type: Literal["output_text"]
    text: str


class OutputMessage(Described):
    type: Literal["message"]
    id: str
    role: Literal["assistant"]
    status: str
    content: list[OutputText]


class ResponseUsage(Described):
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class Response(Described):
    """A Responses API object (shared.responses); its id is resp_ and the id of the job that ran it."""

    id: str = Field(description="resp_ and the id of the job that ran it.")
    object: Literal["response"]
    created_at: int
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
    model: str
    output: list[OutputMessage]
    error: Object | None = None
    incomplete_details: Object | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    usage: ResponseUsage | None = None
    metadata: Object | None = None
    instaboost: Object | None = None
