"""The OpenAI Batch API's requests: a batch's create body (POST /v1/batches) and one line of its input file.

``BatchLine`` is one JSONL line: ``{custom_id, method: POST, url: /v1/chat/completions, body}``, its body a
``ChatCompletionRequest`` (validated as POST /v1/chat/completions validates it, by shared.chat). ``BatchCreate``
is the create body. shared.store.batch_input reads a file's lines with them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, Mapping, Optional

import pydantic
from pydantic import BeforeValidator, ConfigDict, Field

from shared.errors import BadRequest, ValidationError
from shared.requests import base
from shared.requests import types as t
from shared.requests.errors import FIELD as F, fail, problems
from shared.validation import brief

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
MAX_CUSTOM_ID = 512
MAX_METADATA_KEYS = 16


def check_custom_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_CUSTOM_ID:
        raise fail(f"custom_id must be a non-empty string of at most {MAX_CUSTOM_ID} characters")
    return value


def check_method(value: Any) -> str:
    if value != "POST":
        raise fail(f"method must be POST, got {brief(value)}")
    return value


def check_url(value: Any) -> str:
    if value != CHAT_ENDPOINT:
        raise fail(f"url must be the batch's endpoint {CHAT_ENDPOINT}, got {brief(value)}")
    return value


class BatchLine(base.Request):
    """One line of a batch's input file: a chat-completions request, named by custom_id."""

    model_config = ConfigDict(extra="forbid")

    custom_id: Annotated[str, BeforeValidator(check_custom_id)] = Field(
        description=f"Names the line in the output and error files: unique in the file, at most {MAX_CUSTOM_ID} "
        "characters.")
    method: Annotated[Literal["POST"], BeforeValidator(check_method)] = Field(description="POST.")
    url: Annotated[Literal["/v1/chat/completions"], BeforeValidator(check_url)] = Field(
        description="The batch's endpoint.")
    body: Any = Field(None, description="A POST /v1/chat/completions body (ChatCompletionRequest); stream is "
                      "ignored: a line is answered in the output file.")


LINE_KEYS = tuple(BatchLine.model_fields)


def read_line(obj: Mapping[str, Any]) -> tuple[BatchLine | None, dict | None]:
    """Return (the line, None) or (None, its first problem {field, message}) in today's order: custom_id first."""
    try:
        return BatchLine.model_validate(obj, strict=True, context={"strict": True}), None
    except pydantic.ValidationError as exc:
        errors = problems(exc, lambda key, where: "unknown")
    by_field = {e["field"]: e for e in errors}
    if "custom_id" in by_field:
        return None, by_field["custom_id"]
    unknown = [str(k) for k in obj if k not in LINE_KEYS]
    if unknown:
        return None, {"field": None, "message": f"unknown keys {', '.join(map(brief, unknown[:5]))}; a line holds "
                                                "custom_id, method, url and body"}
    return None, errors[0]


def check_endpoint(value: Any) -> str:
    if value != CHAT_ENDPOINT:
        raise fail(f"endpoint must be {CHAT_ENDPOINT} (the one this server batches); got {brief(value)}")
    return value


def check_window(value: Any) -> str:
    if not isinstance(value, str) or value not in COMPLETION_WINDOWS:
        raise fail(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}; got {brief(value)}")
    return value


def check_batch_metadata(value: Any) -> dict | None:
    if value is not None and (not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items())):
        raise fail(f"metadata must be an object of at most {MAX_METADATA_KEYS} string keys (64 characters) and string "
                   "values (512 characters)")
    return value


def check_file_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise fail(f"{F} must be the id of a file uploaded with purpose batch")
    return value


class BatchCreate(base.Request):
    """POST /v1/batches: run every line of an uploaded file (purpose batch) as a chat completion."""

    model_config = ConfigDict(extra="forbid", title="BatchCreateRequest")

    input_file_id: Annotated[str, BeforeValidator(check_file_id)] = Field(
        description="The id of a file uploaded with purpose batch.")
    endpoint: Annotated[Literal["/v1/chat/completions"], BeforeValidator(check_endpoint)] = Field(
        description="The one endpoint this server batches.")
    completion_window: Annotated[Literal["24h"], BeforeValidator(check_window)] = Field(
        description="How long the batch may take.")
    metadata: Annotated[Optional[dict[str, str]], BeforeValidator(check_batch_metadata)] = Field(
        None, description=f"Up to {MAX_METADATA_KEYS} string pairs (keys <= 64, values <= 512 characters).")


# Today's order of the create body's checks: the first problem found is the one answered.
CREATE_ORDER = ("endpoint", "completion_window", "metadata", "input_file_id")


def create_request(body: Any) -> dict:
    """Return the validated create request: input_file_id, endpoint, completion_window, meta (its metadata)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with input_file_id, endpoint and completion_window",
                         field="body")
    try:
        req = BatchCreate.model_validate(body, strict=True, context={"strict": True})
    except pydantic.ValidationError as exc:
        errors = problems(exc, lambda key, where: f"unrecognized request argument {brief(key)}")
        unknown = [e for e in errors if e["field"] not in BatchCreate.model_fields]
        first = (unknown or sorted(errors, key=lambda e: CREATE_ORDER.index(e["field"])))[0]
        raise ValidationError(first["message"], field=first["field"]) from None
    return {"input_file_id": req.input_file_id, "endpoint": CHAT_ENDPOINT,
            "completion_window": req.completion_window, "meta": req.metadata}
