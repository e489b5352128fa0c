"""Structured output: an OpenAI ``response_format`` validated into what a chat job stores, and its grammar.

Torch-free (the web validates with it). The grammar library is llguidance: its JSON-schema compiler and its
grammar validation need no tokenizer, so the web refuses a schema it cannot enforce (400 naming the
construct) before a job exists; the worker builds the token-level matcher (worker.engine.grammar).

- ``{"type": "text"}`` (or no response_format): free text, nothing stored;
- ``{"type": "json_object"}``: any JSON object;
- ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``: a JSON value that
  validates against ``schema``. The schema is enforced whatever ``strict`` says (OpenAI enforces it only with
  strict true; a server that can enforce it has no reason not to).

The grammar is enforced during decoding, token by token; the schema is not added to the prompt (put it, or a
description of it, in a message; a boost on that message boosts it like any other text).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from llguidance import LLMatcher

from shared.errors import ValidationError
from shared.validation import brief

FIELD = "response_format"
TYPES = ("text", "json_object", "json_schema")
SCHEMA_KEYS = ("name", "schema", "strict", "description")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Whitespace between JSON tokens: up to 10 spaces, tabs or newlines (room for indented output). Unbounded
# whitespace (llguidance's default) lets a small model pad an object with blank lines until max_tokens runs out.
COMPILE_OPTIONS = {"whitespace_flexible": False, "whitespace_pattern": r"[ \t\n]{0,10}"}


def _refuse(message: str) -> ValidationError:
    # param is response_format whatever part is wrong, as OpenAI answers; the message names the part.
    return ValidationError(f"invalid request: fix {FIELD}", errors=[{"field": FIELD, "message": message}])


def parse(value: Any, max_chars: int) -> dict | None:
    """Return the stored response_format ({type[, name, strict, schema]}), None for text; raise ValidationError.

    A json_schema's schema is compiled here without a tokenizer, so one the grammar library cannot enforce is
    refused now, with the library's words for the construct (an unsupported keyword, a regex look-around, a
    $ref that points nowhere).
    """
    if value is None:
        return None
    if not isinstance(value, Mapping) or value.get("type") not in TYPES:
        raise _refuse(f"response_format must be an object whose type is one of {', '.join(TYPES)}; got "
                      f"{brief(value)}")
    kind = value["type"]
    allowed = ("type", "json_schema") if kind == "json_schema" else ("type",)
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise _refuse(f"response_format of type {kind} takes only {', '.join(allowed)}; got {brief(unknown[0])}")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise _refuse("response_format.json_schema must be an object {name, schema, strict, description}")
    unknown = [k for k in spec if k not in SCHEMA_KEYS]
    if unknown:
        raise _refuse(f"unknown key {brief(unknown[0])} in response_format.json_schema; allowed: "
                      f"{', '.join(SCHEMA_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _refuse(f"response_format.json_schema.name is required: 1 to 64 letters, digits, _ or -; got "
                      f"{brief(name)}")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _refuse(f"response_format.json_schema.strict must be a boolean; got {brief(strict)}")
    schema = spec.get("schema")
    if not isinstance(schema, Mapping):
        raise _refuse(f"response_format.json_schema.schema is required: a JSON Schema object; got {brief(schema)}")
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError):
        raise _refuse("response_format.json_schema.schema must be plain JSON") from None
    if size > max_chars:
        raise _refuse(f"response_format.json_schema.schema holds {size} characters as JSON; at most {max_chars} "
                      "are allowed (limits.max_text_chars)")
    stored = {"type": "json_schema", "name": name, "strict": bool(strict), "schema": dict(schema)}
    problem = grammar_error(grammar(stored))
    if problem:
        raise _refuse(f"response_format.json_schema.schema cannot be enforced: {problem}; remove or rewrite that "
                      "part of the schema")
    return stored


def grammar(fmt: Mapping[str, Any] | None) -> str | None:
    """Return the llguidance grammar of a stored response_format (None: free text)."""
    if not fmt:
        return None
    schema = fmt["schema"] if fmt["type"] == "json_schema" else {"type": "object"}
    try:
        return LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=COMPILE_OPTIONS)
    except ValueError as exc:
        raise _refuse(f"response_format.json_schema.schema cannot be enforced: {exc}") from None


def grammar_error(text: str) -> str:
    """Return why llguidance cannot compile a grammar (its own words, one line), or '' when it can."""
    failed, messages = LLMatcher.validate_grammar_with_warnings(text)
    return " ".join(" ".join(messages).split()) if failed else ""
