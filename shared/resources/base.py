"""What every resource model shares: the base class, time fields, and the two error bodies."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# The serializers write times with datetime.isoformat(); the schema says so without re-parsing them.
IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
UnixTime = Annotated[int, Field(description="Unix seconds.")]
Object = dict[str, Any]
# int | float, in that order: a stored 3 stays 3 and 2.5 stays 2.5 (no coercion changes the bytes).
Number = int | float


class Resource(BaseModel):
    """A response body: every field declared (extra ones are refused), dumped as the serializer filled it."""

    # NaN and infinities stay floats, so the JSON written is what the serializers wrote before they had a model.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    def dump(self) -> dict[str, Any]:
        """Return the JSON-able dict; fields the serializer left unset (optional parts) stay out."""
        return self.model_dump(mode="json", exclude_unset=True)


class Described(BaseModel):
    """A body the service builds elsewhere and documents here; more fields may come (OpenAI adds them)."""

    model_config = ConfigDict(extra="allow")


class FieldError(Described):
    field: str | None
    message: str


class Problem(Described):
    """An RFC 9457 problem document naming the offending field (web/errors.py)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class OpenAIErrorBody(Described):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(Described):
    """OpenAI's error shape (web/v1_errors.py)."""

    error: OpenAIErrorBody
