"""The Responses API's part of the OpenAPI document (POST /v1/responses, GET /v1/responses/{response_id}).

Added to web.openapi's document where it is served (web.api); its bounds are chat's (a response is a chat job).
Everything the body schema refuses, shared.responses refuses too (the Schemathesis test sends such bodies).
"""

from __future__ import annotations

from typing import Any, Mapping

from shared.responses import ID_PATTERN, INCLUDABLE, MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE, MAX_USER, NEUTRAL
from web.openapi import V1_COMMON, V1_CROSS_SITE, _json, _nullable, _oai_error, _ref, chat_request_schema

TEXT = {"type": "string", "pattern": "^[^\\u0000]*$"}


def responses_request_schema(settings: Mapping[str, Any], models: list[str]) -> dict[str, Any]:
    """Return the POST /v1/responses body's schema; numbers and the boost as chat's (web.openapi)."""
    chat = chat_request_schema(settings, models)["properties"]
    part = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"type": "string", "enum": ["input_text", "output_text"]}, "text": TEXT}}
    item = {
        "type": "object", "required": ["role", "content"], "additionalProperties": False,
        "properties": {
            "type": {"const": "message"},
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"anyOf": [TEXT, {"type": "array", "items": part}]},
            "id": {}, "status": {},
            "boost": chat["messages"]["items"]["properties"]["boost"],
        },
    }
    neutral: dict[str, Any] = {}
    for key, allowed in NEUTRAL.items():
        if allowed is None:
            neutral[key] = {}
        elif () in allowed:  # an empty list, or null
            neutral[key] = {"type": ["array", "null"], "maxItems": 0}
        else:
            neutral[key] = {"enum": list(allowed)}
    return {
        "type": "object", "required": ["model", "input"], "additionalProperties": False,
        "properties": {
            "model": chat["model"],
            "input": {"anyOf": [TEXT, {"type": "array", "minItems": 1, "items": item}],
                      "description": "A user message, or message items whose content is text (input_text parts)."},
            "instructions": _nullable({**TEXT, "description": "A system message first; with instaboost and no "
                                                              "<boost> tags, what is boosted."}),
            "max_output_tokens": chat["max_completion_tokens"], "temperature": chat["temperature"],
            "top_p": chat["top_p"], "stream": chat["stream"],
            "previous_response_id": _nullable({"type": "string", "pattern": f"^{ID_PATTERN}$",
                                               "description": "Continue from a stored response: its input and "
                                                              "output come first, unboosted."}),
            "store": _nullable({"type": "boolean", "description": "Accepted; every response is stored as a job."}),
            "metadata": _nullable({"type": "object", "maxProperties": MAX_METADATA,
                                   "propertyNames": {"maxLength": MAX_METADATA_KEY},
                                   "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE}}),
            "user": _nullable({"type": "string", "maxLength": MAX_USER}),
            "instaboost": chat["instaboost"],
            "include": _nullable({"type": "array", "items": {"type": "string", "enum": list(INCLUDABLE)},
                                  "description": "Nothing to include here: no reasoning items are produced."}),
            **neutral,
        },
    }


RESPONSE_SCHEMA = {
    "type": "object", "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string", "description": "resp_ and the id of the job that ran it."},
        "object": {"const": "response"}, "created_at": {"type": "integer"}, "model": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "in_progress", "completed", "incomplete", "failed",
                                              "cancelled"]},
        "error": {"type": ["object", "null"]}, "incomplete_details": {"type": ["object", "null"]},
        "instructions": {"type": ["string", "null"]}, "previous_response_id": {"type": ["string", "null"]},
        "output": {"type": "array", "items": {
            "type": "object", "required": ["type", "id", "role", "status", "content"],
            "properties": {"type": {"const": "message"}, "id": {"type": "string"}, "role": {"const": "assistant"},
                           "status": {"type": "string"},
                           "content": {"type": "array", "items": {
                               "type": "object", "required": ["type", "text"],
                               "properties": {"type": {"const": "output_text"}, "text": {"type": "string"}}}}}}},
        "usage": {"type": ["object", "null"], "properties": {
            k: {"type": "integer"} for k in ("input_tokens", "output_tokens", "total_tokens")}},
        "metadata": {"type": "object"}, "instaboost": {"type": "object"},
    },
}


def add_responses(document: dict[str, Any], settings: Mapping[str, Any], models: list[str]) -> dict[str, Any]:
    """Add the Responses API's schemas and operations to an OpenAPI document (web.openapi.openapi_document)."""
    retry_after = {"Retry-After": {"schema": {"type": "string"}}}
    document["components"]["schemas"].update(
        {"ResponseRequest": responses_request_schema(settings, models), "Response": RESPONSE_SCHEMA})
    document["paths"]["/v1/responses"] = {"post": {
        "operationId": "v1CreateResponse", "summary": "Create a response (text; a stored chat job)",
        "description": "The Responses API for text: input as a string or message items, instructions (the system "
                       "message, boosted by default under instaboost), previous_response_id. Tools, reasoning and "
                       "non-text items answer 400 naming the field. Waits, streams and retries as "
                       "POST /v1/chat/completions.",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ResponseRequest")}}},
        "responses": {
            "200": {"description": "The response; with stream, the Responses API's server-sent events "
                                   "(response.created … response.completed).",
                    "content": {"application/json": {"schema": _ref("Response")},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            "400": _oai_error("Invalid request, an unsupported field or item, or previous_response_id not found."),
            "404": _oai_error("No live worker serves the model (code model_not_found)."),
            "409": _oai_error("The job was cancelled, the previous response is not finished, or the "
                              "Idempotency-Key was used before with another body."),
            "413": _oai_error("The body is too large."),
            "429": {**_oai_error("Too many queued jobs or waiting completions."), "headers": retry_after},
            "503": {**_oai_error("The broker is unreachable."), "headers": retry_after},
            "504": _oai_error("The job did not finish within v1.wait_seconds; poll GET /v1/responses/{id}."),
            **V1_COMMON, **V1_CROSS_SITE}}}
    document["paths"]["/v1/responses/{response_id}"] = {"get": {
        "operationId": "v1GetResponse", "summary": "A stored response by id (resp_<job id>), in any state",
        "parameters": [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json("The response (status queued, in_progress, completed, incomplete, failed or "
                                   "cancelled).", _ref("Response")),
                      "404": _oai_error("No such response."), **V1_COMMON}}}
    return document
