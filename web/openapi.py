"""The OpenAPI 3.1 description of the JSON API; the job request schema is generated from shared.fields (tests keep it
valid and truthful)."""

from __future__ import annotations

from typing import Any, Mapping

from shared.fields import JOB_FIELDS, LAYER_MODES, JobField
from shared.store.export import EXPORT_COLUMNS
from shared.store.queries import MAX_ID, MAX_LIMIT, cursor_pattern
from shared.store.tables import JobStatus
from shared.validation import WHITESPACE

STATUSES = [s.value for s in JobStatus]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _json(description: str, schema: dict, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _query(name: str, schema: dict, description: str = "") -> dict:
    """Return an optional query parameter; sent empty (?name=) it counts as not sent, as HTML forms do."""
    out = {"name": name, "in": "query", "required": False, "allowEmptyValue": True, "schema": schema}
    if description:
        out["description"] = description
    return out


LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50})


def _page_params(kind: str) -> list[dict]:
    return [LIMIT, _query("cursor", {"type": "string", "pattern": cursor_pattern(kind)},
                          "next_cursor of the previous page (opaque)")]


JOB_ID = {"name": "job_id", "in": "path", "required": True,
          "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}
STATUS_FILTER = _query("status", {"type": "string", "enum": STATUSES})
NO_NUL = {"type": "string", "pattern": "^[^\\x00]*$"}  # PostgreSQL text cannot hold NUL: such filters get 422
MODEL_FILTER = _query("model", NO_NUL)
RUN_FILTERS = [
    _query("job_id", {"type": "integer", "minimum": 1, "maximum": MAX_ID}),
    MODEL_FILTER,
    _query("variant", NO_NUL),
    {**STATUS_FILTER, "description": "status of the run's job"},
]
COMMON = {"401": _problem("Missing or wrong bearer token (only when web.api_token is set)."),
          "500": _problem("Unexpected error.")}
# State-changing operations refuse what another site's page could make a browser send (web/auth.py).
CROSS_SITE = {
    "403": _problem("Sent by another site's page (Sec-Fetch-Site or Origin names another site); send it from "
                    "this service's pages or a non-browser client, or list the origin in web.trusted_origins."),
    "415": _problem("Neither 'Content-Type: application/json' nor an 'Authorization' header was sent."),
}
LIST_ERRORS = {"400": _problem("Malformed cursor."), "422": _problem("Invalid filter or limit.")}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object", "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["field", "message"],
                "properties": {"field": {"type": ["string", "null"]}, "message": {"type": "string"}}}},
        },
    },
    "Run": {
        "type": "object",
        "required": ["id", "job_id", "variant", "multiplier", "layers", "output_text", "prompt_tokens",
                     "output_tokens", "seconds", "created_at"],
        "properties": {
            "id": {"type": "integer"}, "job_id": {"type": "integer"}, "variant": {"type": "string"},
            "multiplier": {"type": "number"}, "layers": {"type": "string"}, "heads": {"type": ["string", "null"]},
            "output_text": {"type": "string"}, "prompt_tokens": {"type": "integer"},
            "output_tokens": {"type": "integer"}, "seconds": {"type": "number"},
            "attention_mass": {"type": ["object", "null"]}, "created_at": {"type": "string", "format": "date-time"},
            "model": {"type": "string"}, "job_status": {"type": "string", "enum": STATUSES},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "status", "finished", "model", "params", "progress", "attempts", "created_at"],
        "properties": {
            "id": {"type": "integer"}, "status": {"type": "string", "enum": STATUSES},
            "finished": {"type": "boolean"}, "model": {"type": "string"},
            "params": {"type": "object", "description": "The validated JobRequest with defaults filled in."},
            "progress": {"type": "object", "required": ["done", "total"],
                         "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}}},
            "error": {"type": ["string", "null"]}, "attempts": {"type": "integer"},
            "worker": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"}, "enqueued_at": NULLABLE_TIME,
            "started_at": NULLABLE_TIME, "finished_at": NULLABLE_TIME,
            "runs": {"type": "array", "items": _ref("Run")},
        },
    },
    "JobPage": {
        "type": "object", "required": ["items", "next_cursor", "next"],
        "properties": {"items": {"type": "array", "items": _ref("Job")},
                       "next_cursor": {"type": ["string", "null"]}, "next": {"type": ["string", "null"]}},
    },
    "RunPage": {
        "type": "object", "required": ["items", "next_cursor", "next"],
        "properties": {"items": {"type": "array", "items": _ref("Run")},
                       "next_cursor": {"type": ["string", "null"]}, "next": {"type": ["string", "null"]}},
    },
    "Models": {
        "type": "object", "required": ["default", "models", "workers"],
        "properties": {
            "default": {"type": "string"},
            "models": {"type": "array", "items": {
                "type": "object", "required": ["name", "workers", "starting", "status"], "properties": {
                    "name": {"type": "string"},
                    "workers": {"type": "integer", "minimum": 0, "description": "Workers that hold it loaded."},
                    "starting": {"type": "integer", "minimum": 0,
                                 "description": "Workers loading it; jobs for it are accepted and wait."},
                    "status": {"type": "string", "enum": ["ready", "starting"]}}}},
            "workers": {"type": "array", "items": {"type": "object", "properties": {
                "hostname": {"type": ["string", "null"]},
                "models": {"type": "array", "items": {"type": "string"}},
                "starting": {"type": "array", "items": {"type": "string"}},
                "pid": {"type": ["integer", "null"]}, "started_at": {}, "seen_at": {}}}},
        },
    },
    "Health": {
        "type": "object", "required": ["status", "database", "broker"],
        "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]},
                       "database": {"type": "string"}, "broker": {"type": "string"}},
    },
    "Ready": {
        "type": "object", "required": ["status", "database", "broker", "model"],
        "properties": {"status": {"type": "string", "enum": ["ok", "starting", "unavailable"]},
                       "database": {"type": "string"}, "broker": {"type": "string"},
                       "model": {"type": "string", "description": "The default model: served, starting or missing."}},
    },
}


def _pattern_class(chars: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in chars)


def _number_bounds(f: JobField, settings: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"exclusiveMinimum" if f.lo_open else "minimum": f.lo}
    hi = f.upper(settings)
    if hi is not None:
        out["maximum"] = hi
    return out


def field_schema(f: JobField, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Return the JSON Schema of one job field, with the same bounds the validator applies."""
    if f.kind == "text":
        # Not blank: at least one character that is neither NUL nor whitespace (shared.validation.WHITESPACE).
        ws = _pattern_class(WHITESPACE + "\x00")
        schema = {"type": "string", "minLength": 1, "maxLength": settings["limits.max_text_chars"],
                  "pattern": f"^[^\\u0000]*[^{ws}][^\\u0000]*$"}
    elif f.kind == "model":
        schema = {"type": "string"}
    elif f.kind in ("integer", "number"):
        schema = {"type": f.kind, **_number_bounds(f, settings)}
    elif f.kind == "choice":
        schema = {"type": "string", "enum": list(f.choices)}
    elif f.kind == "boolean":
        schema = {"type": "boolean"}
    elif f.kind == "numbers":
        schema = {"type": "array", "items": {"type": "number", **_number_bounds(f, settings)}, "minItems": 1,
                  "uniqueItems": True}
    else:  # choices
        schema = {"type": "array", "items": {"type": "string", "enum": list(f.choices)}, "minItems": 1,
                  "uniqueItems": True}
    return {**schema, "description": f.help}


def job_request_schema(settings: Mapping[str, Any], models: list[str],
                       facts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Return the JobRequest schema (generated from shared.fields) with this deployment's limits and models.

    The bounds match the server's exactly (tests fuzz both sides). facts: what the workers advertise
    about the one served model (n_layers, max_context), which bounds start_layer and max_new_tokens.
    """
    assert len(LAYER_MODES) == 2, "the variants rule below is written for two layer modes"
    props = {f.name: field_schema(f, settings) for f in JOB_FIELDS}
    schema: dict[str, Any] = {"type": "object", "required": [f.name for f in JOB_FIELDS if f.required],
                              "additionalProperties": False, "properties": props}
    props["model"]["enum"] = models
    facts = facts or {}
    if facts.get("max_context"):
        props["max_new_tokens"]["maximum"] = min(props["max_new_tokens"]["maximum"], facts["max_context"] - 1)
    if facts.get("n_layers"):
        props["start_layer"]["maximum"] = facts["n_layers"] - 1
    # 1 original + multipliers x layer modes <= max_variants; layer_modes defaults to both.
    limit = settings["limits.max_variants"] - 1
    schema["if"] = {"required": ["layer_modes"], "properties": {"layer_modes": {"type": "array", "maxItems": 1}}}
    schema["then"] = {"properties": {"multipliers": {"maxItems": limit}}}
    schema["else"] = {"properties": {"multipliers": {"maxItems": limit // 2}}}
    # Every optional field may be null: "use the default".
    for name, prop in props.items():
        if name in schema["required"]:
            continue
        prop["type"] = [prop["type"], "null"]
        if "enum" in prop:
            prop["enum"] = [*prop["enum"], None]
    return schema


def openapi_document(settings: Mapping[str, Any] | None = None, models: list[str] | None = None,
                     token_required: bool = False, facts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document for /api, /healthz and /readyz (bearer auth only when a token is set)."""
    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    schemas = {**SCHEMAS, "JobRequest": job_request_schema(settings, models or [settings["model.name"]], facts)}
    retry_after = {"Retry-After": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "InstaBoost Service", "version": "0.1.0",
                 "description": "Submit instruction attention boosting jobs and read their outputs. Errors are "
                                "RFC 9457 problem documents naming the offending field."},
        # Without web.api_token the API is open: an empty requirement makes the bearer token optional.
        "security": [{"bearer": []}] if token_required else [{}],
        "paths": {
            "/api/jobs": {
                "post": {
                    "operationId": "submitJob", "summary": "Submit a job",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobRequest")}}},
                    "responses": {
                        "202": _json("Queued.", _ref("Job"), {"Location": {"schema": {"type": "string"}}}),
                        "400": _problem("The body is not valid JSON."),
                        "413": _problem("The body is too large."),
                        "415": _problem("The body is not JSON."),
                        "422": _problem("A field is invalid, or no live worker serves the model."),
                        "429": {**_problem("Too many queued jobs."), "headers": retry_after},
                        "503": {**_problem("The broker is unreachable."), "headers": retry_after},
                        **COMMON, "403": CROSS_SITE["403"],
                    },
                },
                "get": {
                    "operationId": "listJobs", "summary": "List jobs, newest first",
                    "parameters": [STATUS_FILTER, MODEL_FILTER, *_page_params("j")],
                    "responses": {"200": _json("A page of jobs.", _ref("JobPage")), **LIST_ERRORS, **COMMON},
                },
            },
            "/api/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob", "summary": "A job with its runs so far", "parameters": [JOB_ID],
                    "responses": {"200": _json("The job.", _ref("Job")), "404": _problem("No such job."), **COMMON},
                },
            },
            "/api/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob", "summary": "Cancel a queued or running job", "parameters": [JOB_ID],
                    "description": "Send 'Content-Type: application/json' (the body is ignored and may be empty) "
                                   "or an 'Authorization' header: a request with neither could come from another "
                                   "site's page, and is refused (415).",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"description": "Ignored: send {} or nothing."}}}},
                    "responses": {"200": _json("Cancelled (queued) or cancelling (running).", _ref("Job")),
                                  "404": _problem("No such job."), "409": _problem("The job already finished."),
                                  **COMMON, **CROSS_SITE},
                },
            },
            "/api/runs": {
                "get": {
                    "operationId": "listRuns", "summary": "List runs, newest first",
                    "parameters": [*RUN_FILTERS, *_page_params("r")],
                    "responses": {"200": _json("A page of runs.", _ref("RunPage")), **LIST_ERRORS, **COMMON},
                },
            },
            "/api/runs.csv": {
                "get": {
                    "operationId": "exportRuns", "summary": "Every matching run as CSV (streamed)",
                    "description": "Columns: " + ", ".join(EXPORT_COLUMNS) + ". Cells starting with = + - @ tab "
                                   "or CR are prefixed with ' against spreadsheet formula injection.",
                    "parameters": RUN_FILTERS,
                    "responses": {"200": {"description": "CSV, one row per run.",
                                          "content": {"text/csv": {"schema": {"type": "string"}}}},
                                  "422": _problem("Invalid filter."), **COMMON},
                },
            },
            "/api/models": {
                "get": {
                    "operationId": "listModels", "summary": "Models live workers hold",
                    "responses": {"200": _json("Models and workers.", _ref("Models")),
                                  "503": {**_problem("Redis is unreachable."), "headers": retry_after}, **COMMON},
                },
            },
            "/api/openapi.json": {
                "get": {"operationId": "openapi", "summary": "This document", "security": [],
                        "responses": {"200": _json("OpenAPI 3.1 document.", {"type": "object"})}},
            },
            "/healthz": {
                "get": {
                    "operationId": "health", "summary": "Database and broker reachability", "security": [],
                    "responses": {"200": _json("Both reachable.", _ref("Health")),
                                  "503": _json("One is unreachable.", _ref("Health"), retry_after)},
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "ready", "summary": "Can a job on the default model run now?", "security": [],
                    "description": "200 when the database and broker answer and a live worker serves the default "
                                   "model; otherwise 503 with status 'starting' (a worker is loading it: jobs are "
                                   "accepted and wait) or 'unavailable', and what is missing.",
                    "responses": {"200": _json("Ready.", _ref("Ready")),
                                  "503": _json("Not ready; says what is missing.", _ref("Ready"), retry_after)},
                },
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Required only when web.api_token is set (a browser "
                                                          "logged in at /login may use its session instead)."}},
        },
    }
