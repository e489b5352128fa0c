"""The OpenAPI 3.1 description of the JSON API; the job request schema is generated from shared.fields (tests keep it
valid and truthful)."""

from __future__ import annotations

from typing import Any, Mapping

from shared.fields import JOB_FIELDS, LAYER_MODES, MAX_CHECKS, JobField
from shared.store.export import EXPORT_COLUMNS, WIDE_COLUMNS
from shared.store.queries import MAX_ID, MAX_LIMIT, cursor_pattern
from shared.store.tables import JobStatus
from shared.validation import WHITESPACE
from web.openapi_completions import COMPLETION_SCHEMAS, completion_paths, completion_request_schema

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
SWEEP_ID = {"name": "sweep_id", "in": "path", "required": True,
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
            "output_text": {"type": "string", "description": "The output exactly as generated (NUL characters "
                            "included, as \\u0000)"}, "prompt_tokens": {"type": "integer"},
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
        out["exclusiveMaximum" if f.hi_open else "maximum"] = hi
    return out


# Python's str.strip() whitespace (a superset of ECMAScript's \s): a kwarg of only these is blank.
_PY_SPACE = "".join(sorted(set(WHITESPACE) | {chr(c) for c in range(0x110000) if chr(c).isspace()}))
NOT_BLANK = f"[^{_pattern_class(_PY_SPACE)}]"


def _kwarg_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of an IFEval kwarg of this kind (shared.evaluation.checks.IFEVAL_KWARGS)."""
    from shared.evaluation.checks import LANGUAGES, RELATIONS

    regex = {"type": "string", "pattern": NOT_BLANK, "description": "used as a Python regular expression"}
    return {"count": {"type": "integer", "minimum": 1},
            "relation": {"type": "string", "enum": list(RELATIONS)},
            "letter": {"type": "string", "pattern": "^[A-Za-z]$"},
            "language": {"type": "string", "enum": list(LANGUAGES)},
            "text": {"type": "string", "pattern": NOT_BLANK},
            "regex": regex,
            "regex_list": {"type": "array", "minItems": 1, "items": regex}}[kind]


def check_item_schema() -> dict[str, Any]:
    """One simple check {type, value}, exactly as shared.evaluation.checks.parse_check accepts it."""
    from shared.evaluation.checks import CHECK_TYPES

    values = {"count": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+$"}]},
              "text": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "number"}]},
              "regex": {"oneOf": [{"type": "string", "minLength": 1, "description": "a Python regular expression"},
                                  {"type": "number"}]}}
    options = []
    for c in CHECK_TYPES:
        props: dict[str, Any] = {"type": {"const": c.name}}
        props["value"] = {"type": "null"} if c.value is None else values[c.value]
        options.append({"type": "object", "additionalProperties": False, "properties": props,
                        "required": ["type"] if c.value is None else ["type", "value"],
                        "description": c.description})
    return {"oneOf": options}


def ifeval_item_schema() -> dict[str, Any]:
    """One IFEval instruction: an id (when it takes no kwargs) or {id, kwargs} with every kwarg it takes."""
    from shared.evaluation.checks import IFEVAL, IFEVAL_KWARGS

    options: list[dict[str, Any]] = [{"type": "string", "enum": [s.id for s in IFEVAL if not s.kwargs]}]
    for spec in IFEVAL:
        kwargs = {"type": "object", "additionalProperties": False, "required": list(spec.kwargs),
                  "properties": {k: _kwarg_schema(IFEVAL_KWARGS[k]) for k in spec.kwargs}}
        if not spec.kwargs:
            kwargs = {"oneOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]}
        options.append({"type": "object", "additionalProperties": False,
                        "required": ["id", "kwargs"] if spec.kwargs else ["id"],
                        "properties": {"id": {"const": spec.id}, "kwargs": kwargs},
                        "description": spec.description})
    return {"oneOf": options}


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
        if f.name == "judge" and not str(settings.get("judge.url", "") or "").strip():
            schema["enum"] = [False]  # this deployment has no judge (setting judge.url): true is refused
    elif f.kind == "numbers":
        schema = {"type": "array", "items": {"type": "number", **_number_bounds(f, settings)}, "minItems": 1,
                  "uniqueItems": True}
    elif f.kind == "checks":
        schema = {"type": "array", "maxItems": MAX_CHECKS, "items": check_item_schema()}
    elif f.kind == "ifeval":
        schema = {"type": "array", "maxItems": MAX_CHECKS, "items": ifeval_item_schema()}
    else:  # choices
        schema = {"type": "array", "items": {"type": "string", "enum": list(f.choices)}, "minItems": 1,
                  "uniqueItems": True}
    return {**schema, "description": f.help}


def job_request_schema(settings: Mapping[str, Any], models: list[str],
                       facts: Mapping[str, int] | None = None, recommended: bool = False) -> dict[str, Any]:
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
    if recommended:  # every served model has a finished calibration sweep (shared.store.recommended.resolve_recommended)
        numbers = props["multipliers"]
        props["multipliers"] = {"description": numbers["description"] + " Or 'recommended': the M (and, when "
                                "layer_modes and head_boost_percentage are left out, the layers and heads) the "
                                "latest finished calibration sweep of the model recommends.",
                                "anyOf": [{k: v for k, v in numbers.items() if k != "description"},
                                          {"const": "recommended"}]}
    return schema


def sweep_request_schema(settings: Mapping[str, Any], models: list[str],
                         facts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Return the SweepRequest schema: exactly what shared.calibration.parse_sweep_request accepts (JSON API)."""
    from shared.calibration import SWEEP_JOB_FIELDS
    from shared.requests.sweep import API_CASE_NAME, MAX_API_CASES, MAX_DESCRIPTION, MAX_SETTINGS_VALUES
    from shared.evaluation.cases import PACKS
    from shared.fields import BY_NAME

    job = job_request_schema(settings, models, facts)["properties"]
    text = {k: v for k, v in job["instruction"].items() if k != "description"}
    case = {"type": "object", "additionalProperties": False, "required": ["instruction", "query"], "properties": {
        "instruction": {**text, "description": "The instruction boosted (the system turn for packs)."},
        "query": {**text, "description": "The user's message."},
        "description": {"type": ["string", "null"], "maxLength": MAX_DESCRIPTION, "pattern": "^[^\\u0000]*$"},
        "checks": {"type": ["array", "null"], "maxItems": MAX_CHECKS, "items": check_item_schema(),
                   "description": BY_NAME["checks"].help},
        "ifeval": {"type": ["array", "null"], "maxItems": MAX_CHECKS, "items": ifeval_item_schema(),
                   "description": BY_NAME["ifeval"].help},
        "split": {"enum": ["validation", "test", None],
                  "description": "Pin the case to a half; otherwise the fixed seeded split decides."}}}
    props: dict[str, Any] = {
        "pack": {"type": "string", "enum": [p.name for p in PACKS], "description": "A built-in case pack."},
        "cases": {"type": "object", "minProperties": 2, "maxProperties": MAX_API_CASES,
                  "propertyNames": {"pattern": f"^{API_CASE_NAME}$"}, "additionalProperties": case,
                  "description": "Your own cases, keyed by name."},
        "grid": {"oneOf": [{"type": "string", "enum": ["paper", "log"]},
                           {"type": "array", "minItems": 1, "maxItems": 40, "contains": {"not": {"const": 1}},
                            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6}}],
                 "description": "paper: 1, 3, ..., 19 (default); log: 10 log-spaced values 1-20; or your Ms "
                                "(M = 1, the unboosted baseline, always runs)."},
        "layer_modes": {"type": "array", "minItems": 1, "maxItems": MAX_SETTINGS_VALUES,
                        "items": {"type": "string", "enum": list(LAYER_MODES)}, "description": "Default [all]."},
        "head_fractions": {"type": "array", "minItems": 1, "maxItems": MAX_SETTINGS_VALUES,
                           "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                           "description": "Shares of heads boosted per layer; default [1]."},
        "fluency_floor": {"type": "number", "minimum": 0, "maximum": 2,
                          "description": "Stop going up once mean validation fluency (0-2) is below; default 1."},
        "limit": {"type": "integer", "minimum": 2, "description": "Use only the first N cases."},
    }
    for name in SWEEP_JOB_FIELDS:
        props[name] = dict(job[name])
    for name, prop in props.items():
        if name in ("grid",):
            prop["oneOf"] = [*prop["oneOf"], {"type": "null"}]
            continue
        if "type" in prop and not isinstance(prop["type"], list):
            prop["type"] = [prop["type"], "null"]
        if "enum" in prop and None not in prop["enum"]:
            prop["enum"] = [*prop["enum"], None]
    sources = ("pack", "cases")
    return {"type": "object", "additionalProperties": False, "properties": props,
            "description": "Give exactly one of pack and cases.",
            "oneOf": [{"required": [src], "properties": {src: {"not": {"type": "null"}},
                                                         **{o: {"type": "null"} for o in sources if o != src}}}
                      for src in sources]}


SWEEP_SCHEMA = {"type": "object", "required": ["id", "status", "model", "grid", "table", "recommendation"],
                "properties": {"id": {"type": "integer"}, "status": {"type": "string",
                                                                      "enum": ["running", "succeeded", "failed",
                                                                               "cancelled"]},
                               "model": {"type": "string"}, "table": {"type": "array"},
                               "recommendation": {"type": ["object", "null"]}}}


def openapi_document(settings: Mapping[str, Any] | None = None, models: list[str] | None = None,
                     token_required: bool = False, facts: Mapping[str, int] | None = None,
                     recommended: bool = False) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document for /api, /healthz and /readyz (bearer auth only when a token is set)."""
    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    schemas = {**SCHEMAS, "JobRequest": job_request_schema(settings, models or [settings["model.name"]], facts,
                                                           recommended),
               "SweepRequest": sweep_request_schema(settings, models or [settings["model.name"]], facts),
               "Sweep": SWEEP_SCHEMA,
               **V1_SCHEMAS, **COMPLETION_SCHEMAS,
               "ChatCompletionRequest": chat_request_schema(settings, models or [settings["model.name"]]),
               "CompletionRequest": completion_request_schema(
                   settings, models or [settings["model.name"]],
                   chat_request_schema(settings, models or [settings["model.name"]]))}
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
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "description": "A retry with the same key (and body) answers with the same job "
                                                   "(for v1.idempotency_hours) instead of submitting another.",
                                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobRequest")}}},
                    "responses": {
                        "202": _json("Queued.", _ref("Job"), {"Location": {"schema": {"type": "string"}}}),
                        "400": _problem("The body is not valid JSON."),
                        "409": _problem("Its Idempotency-Key was used before with another body."),
                        "413": _problem("The body is too large."),
                        "415": _problem("The body is not JSON."),
                        "422": _problem("A field is invalid, or no live worker serves the model."),
                        "429": {**_problem("Too many queued jobs."), "headers": retry_after},
                        "503": {**_problem("The broker is unreachable, or no worker heartbeat names the model while "
                                         "that may be transient (none at all, or its worker restarting); retry after "
                                         "Retry-After."), "headers": retry_after},
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
            "/api/jobs.csv": {
                "get": {
                    "operationId": "exportJobs", "summary": "One row per job, the run-tests comparison sheet (CSV)",
                    "description": "Columns: " + ", ".join(WIDE_COLUMNS) + ", then <variant>_output, "
                                   "<variant>_fluency and <variant>_follows for every further variant. Cells "
                                   "starting with = + - @ tab or CR are prefixed with '.",
                    "parameters": [STATUS_FILTER, MODEL_FILTER, _query("sweep_id", {"type": "integer", "minimum": 1,
                                                                                   "maximum": MAX_ID})],
                    "responses": {"200": {"description": "CSV, one row per job.",
                                          "content": {"text/csv": {"schema": {"type": "string"}}}},
                                  "422": _problem("Invalid filter."), **COMMON},
                },
            },
            "/api/sweeps": {
                "post": {
                    "operationId": "createSweep", "summary": "Start a calibration sweep",
                    "description": "A case set x a grid of M x layer modes (x head fractions), run as ordinary jobs "
                                   "one M at a time with the paper's stop rule; the recommendation is the M with "
                                   "the best validation success among fluent settings.",
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": _ref("SweepRequest")}}},
                    "responses": {
                        "202": _json("Started.", _ref("Sweep"), {"Location": {"schema": {"type": "string"}}}),
                        "400": _problem("The body is not valid JSON."),
                        "413": _problem("The body is too large."),
                        "415": _problem("The body is not JSON."),
                        "422": _problem("A field is invalid, or no live worker serves the model."),
                        "429": {**_problem("The first step would pass limits.max_queued_jobs, or "
                                           "limits.max_running_sweeps sweeps are running; nothing was stored."),
                                "headers": retry_after},
                        "503": {**_problem("The broker is unreachable, or no worker heartbeat names the model while "
                                         "that may be transient (none at all, or its worker restarting); retry after "
                                         "Retry-After."), "headers": retry_after},
                        **COMMON, "403": CROSS_SITE["403"],
                    },
                },
                "get": {"operationId": "listSweeps", "summary": "The latest sweeps, newest first",
                        "responses": {"200": _json("Sweeps.", {"type": "object", "required": ["items"],
                                                               "properties": {"items": {"type": "array",
                                                                                        "items": _ref("Sweep")}}}),
                                      **COMMON}},
            },
            "/api/sweeps/{sweep_id}": {
                "get": {
                    "operationId": "getSweep", "summary": "A sweep: status, per-M table, recommendation",
                    "parameters": [SWEEP_ID],
                    "responses": {"200": _json("The sweep.", _ref("Sweep")), "404": _problem("No such sweep."),
                                  **COMMON},
                },
            },
            "/api/sweeps/{sweep_id}.csv": {
                "get": {
                    "operationId": "exportSweep", "summary": "A sweep's per-(setting, M, split) table as CSV",
                    "parameters": [SWEEP_ID],
                    "responses": {"200": {"description": "CSV.", "content": {"text/csv": {"schema": {"type": "string"}}}},
                                  "404": _problem("No such sweep."), **COMMON},
                },
            },
            "/api/sweeps/{sweep_id}/cancel": {
                "post": {
                    "operationId": "cancelSweep", "summary": "Cancel a running sweep and its unfinished jobs",
                    "parameters": [SWEEP_ID],
                    "description": "Send 'Content-Type: application/json' (the body is ignored) or an "
                                   "'Authorization' header, as for cancelling a job.",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"description": "Ignored: send {} or nothing."}}}},
                    "responses": {"200": _json("Cancelled.", _ref("Sweep")), "404": _problem("No such sweep."),
                                  "409": _problem("The sweep already finished."), **COMMON, **CROSS_SITE},
                },
            },
            "/api/models": {
                "get": {
                    "operationId": "listModels", "summary": "Models live workers hold",
                    "responses": {"200": _json("Models and workers.", _ref("Models")),
                                  "503": {**_problem("Redis is unreachable."), "headers": retry_after}, **COMMON},
                },
            },
            "/api/queue": {
                "get": {
                    "operationId": "queue", "summary": "Live workers, what each runs, queue depth and a rough wait",
                    "description": "The queue page's data (/queue): each live worker (from its heartbeat) with the "
                                   "jobs it runs now, and per model the queued and running jobs, the broker's "
                                   "waiting messages, recent throughput and a rough wait before a new job starts.",
                    "responses": {"200": _json("Workers and models.", {
                        "type": "object", "required": ["generated_at", "workers", "models"],
                        "properties": {"generated_at": {"type": "string", "format": "date-time"},
                                       "workers": {"type": "array", "items": {"type": "object"}},
                                       "models": {"type": "array", "items": {"type": "object"}}}}),
                                  "503": {**_problem("Redis or the database is unreachable."),
                                          "headers": retry_after}, **COMMON},
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
            **v1_paths(),
            **completion_paths(_oai_error, V1_COMMON, V1_CROSS_SITE, {"Retry-After": {"schema": {"type": "string"}}}),
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


# -- the OpenAI-compatible API (/v1, web/v1.py) ----------------------------------------------------------------------


def _oai_error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("OpenAIError")}}}


def _nullable(schema: dict) -> dict:
    t = schema.get("type")
    if isinstance(t, str):
        out = {**schema, "type": [t, "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


V1_COMMON = {"401": _oai_error("Missing or wrong bearer token (only when web.api_token is set)."),
             "500": _oai_error("Unexpected error.")}
V1_CROSS_SITE = {"403": _oai_error("Sent by another site's page."),
                 "415": _oai_error("Neither a JSON (or multipart, for files) body nor an 'Authorization' header.")}
TIMESTAMP = {"type": "integer", "description": "Unix seconds."}
NULL_TIMESTAMP = {"type": ["integer", "null"], "description": "Unix seconds."}
BATCH_STATUSES = ["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                  "cancelled"]


def chat_request_schema(settings: Mapping[str, Any], models: list[str]) -> dict[str, Any]:
    """Return the POST /v1/chat/completions body's schema, its bounds taken from the job fields (shared.fields)."""
    from shared.chat import BOOST_KEYS, NEUTRAL
    from shared.chat_extras import MAX_METADATA, MAX_USER_CHARS, SAMPLING_FIELDS
    from shared.fields import BY_NAME, MAX_LOGIT_BIAS, PLACEMENTS
    from shared.requests.chat import ChatCompletionRequest
    from shared.spec import MAX_STOP

    chat_help = {name: f.description for name, f in ChatCompletionRequest.model_fields.items()}

    def bounded(name: str) -> dict:
        f = BY_NAME[name]
        return {"type": f.kind, **_number_bounds(f, settings), "description": f.help}

    text = {"type": "string", "pattern": "^[^\\u0000]*$"}
    layer_index = {"type": "integer", "minimum": 0, "maximum": 10_000}
    boost = {
        "type": "object", "additionalProperties": False, "description": chat_help["instaboost"],
        "properties": {
            "multiplier": _nullable({"type": "number", **_number_bounds(BY_NAME["multipliers"], settings),
                                     "description": "M on the boosted tokens (1 = no boost, below 1 de-boosts)."}),
            "layers": _nullable({"anyOf": [{"type": "string", "enum": list(LAYER_MODES)},
                                           {"type": "array", "items": layer_index, "minItems": 1,
                                            "maxItems": 10_000}]}),
            "start_layer": _nullable(bounded("start_layer")),
            "num_middle_layers": _nullable(bounded("num_middle_layers")),
            "heads": _nullable({"anyOf": [
                {"type": "number", **_number_bounds(BY_NAME["head_boost_percentage"], settings),
                 "description": "Percentage of heads boosted in each boosted layer."},
                {"type": "object", "minProperties": 1, "propertyNames": {"pattern": "^(0|[1-9][0-9]{0,3}|10000)$"},
                 "additionalProperties": {"type": "array", "items": layer_index, "minItems": 1},
                 "description": "Explicit heads per layer: {\"layer\": [head indices]}."}]}),
            "placement": _nullable({"type": "string", "enum": list(PLACEMENTS)}),
            "scope": _nullable({"type": "string", "enum": list(BY_NAME["scope"].choices),
                                "description": BY_NAME["scope"].help}),
            "target_mass": _nullable(bounded("target_mass")),
        },
    }
    assert tuple(boost["properties"]) == BOOST_KEYS
    message = {
        "type": "object", "required": ["role", "content"], "additionalProperties": False,
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"anyOf": [text, {"type": "array", "items": {
                "type": "object", "required": ["type", "text"],
                "properties": {"type": {"const": "text"}, "text": text}}}]},
            "name": {},
            "boost": _nullable({"type": "number", **_number_bounds(BY_NAME["multipliers"], settings),
                                "description": "Boost this whole message with its own M."}),
        },
    }
    stop_item = {"type": "string", "minLength": 1, "maxLength": 200}
    tokens = {"type": "integer", **_number_bounds(BY_NAME["max_new_tokens"], settings)}
    neutral = {}
    for key, allowed in NEUTRAL.items():
        neutral[key] = {} if allowed is None else {"enum": list(allowed)}
    return {
        "type": "object", "required": ["model", "messages"], "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "enum": models, "description": "A model a live worker serves."},
            "messages": {"type": "array", "minItems": 1, "items": message,
                         "description": chat_help["messages"]},
            "max_tokens": _nullable(tokens), "max_completion_tokens": _nullable(tokens),
            "temperature": _nullable(bounded("temperature")), "top_p": _nullable(bounded("top_p")),
            "seed": _nullable(bounded("seed")),
            "n": _nullable({"type": "integer", "minimum": 1, "maximum": settings["v1.max_n"],
                            "description": chat_help["n"]}),
            **{name: _nullable(bounded(name)) for name in SAMPLING_FIELDS},
            "logit_bias": _nullable({"type": "object", "maxProperties": MAX_LOGIT_BIAS,
                                     "propertyNames": {"pattern": "^[0-9]{1,9}$"},
                                     "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                                     "description": chat_help["logit_bias"]}),
            "user": _nullable({"type": "string", "maxLength": MAX_USER_CHARS, "pattern": "^[^\\u0000]*$",
                               "description": chat_help["user"]}),
            "metadata": _nullable({"type": "object", "maxProperties": MAX_METADATA,
                                   "propertyNames": {"maxLength": 64, "pattern": "^[^\\u0000]*$"},
                                   "additionalProperties": {"type": "string", "maxLength": 512,
                                                            "pattern": "^[^\\u0000]*$"},
                                   "description": chat_help["metadata"]}),
            "stop": _nullable({"anyOf": [stop_item, {"type": "array", "items": stop_item, "maxItems": MAX_STOP}],
                               "description": chat_help["stop"]}),
            "stream": _nullable({"type": "boolean", "description": chat_help["stream"]}),
            "stream_options": _nullable({"type": "object", "additionalProperties": False,
                                         "properties": {"include_usage": {}}}),
            "instaboost": _nullable(boost),
            "logprobs": _nullable({"type": "boolean", "description": "Return each output token's logprob (raw: "
                                                                  "before temperature and top_p)."}),
            "top_logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 20,
                                       "description": "With logprobs: the most likely tokens per position."}),
            **neutral,
        },
    }


V1_SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]}}}},
    },
    "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"],
              "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": TIMESTAMP,
                             "owned_by": {"type": "string"}}},
    "ModelList": {"type": "object", "required": ["object", "data"],
                  "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage", "system_fingerprint"],
        "properties": {
            "id": {"type": "string", "description": "The id of the job that ran it."},
            "object": {"const": "chat.completion"}, "created": TIMESTAMP, "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "required": ["index", "message", "finish_reason"],
                                                   "properties": {
                "index": {"type": "integer"}, "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                "logprobs": {"type": ["object", "null"]},
                "message": {"type": "object", "required": ["role", "content"], "properties": {
                    "role": {"const": "assistant"}, "content": {"type": "string"}, "refusal": {"type": "null"}}}}}},
            "usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                      "properties": {k: {"type": "integer"} for k in
                                     ("prompt_tokens", "completion_tokens", "total_tokens")}},
            "instaboost": {"type": "object"},
        },
    },
    "File": {"type": "object", "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
             "properties": {"id": {"type": "string"}, "object": {"const": "file"}, "bytes": {"type": "integer"},
                            "created_at": TIMESTAMP, "filename": {"type": "string"},
                            "purpose": {"type": "string", "enum": ["batch", "batch_output"]},
                            "status": {"type": "string"},
                            "expires_at": {"type": ["integer", "null"], "description": "Unix seconds; past it the "
                                           "file answers 404 and is deleted (null: kept until deleted)."},
                            "status_details": {"type": "null"}}},
    "FileList": {"type": "object", "required": ["object", "data", "has_more"],
                 "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("File")},
                                "first_id": {"type": ["string", "null"]}, "last_id": {"type": ["string", "null"]},
                                "has_more": {"type": "boolean"}}},
    "FileDeleted": {"type": "object", "required": ["id", "object", "deleted"],
                    "properties": {"id": {"type": "string"}, "object": {"const": "file"},
                                   "deleted": {"type": "boolean"}}},
    "FileUpload": {"type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "JSONL: one request object per line."},
        "purpose": {"type": "string", "enum": ["batch"]},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000,
                                   "description": "Seconds the file lives (default v1.file_expiry_hours)."}}},
    "BatchRequest": {
        "type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
        "additionalProperties": False,
        "properties": {"input_file_id": {"type": "string", "minLength": 1},
                       "endpoint": {"type": "string", "enum": ["/v1/chat/completions"]},
                       "completion_window": {"type": "string", "enum": ["24h"]},
                       "metadata": {"type": ["object", "null"], "maxProperties": 16,
                                    "propertyNames": {"maxLength": 64},
                                    "additionalProperties": {"type": "string", "maxLength": 512}}},
    },
    "Batch": {
        "type": "object",
        "required": ["id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at",
                     "request_counts"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "batch"}, "endpoint": {"type": "string"},
            "errors": {"type": ["object", "null"]}, "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"}, "status": {"type": "string", "enum": BATCH_STATUSES},
            "output_file_id": {"type": ["string", "null"]}, "error_file_id": {"type": ["string", "null"]},
            "created_at": TIMESTAMP, "in_progress_at": NULL_TIMESTAMP, "expires_at": NULL_TIMESTAMP,
            "finalizing_at": NULL_TIMESTAMP, "completed_at": NULL_TIMESTAMP, "failed_at": NULL_TIMESTAMP,
            "expired_at": NULL_TIMESTAMP, "cancelling_at": NULL_TIMESTAMP, "cancelled_at": NULL_TIMESTAMP,
            "request_counts": {"type": "object", "required": ["total", "completed", "failed"],
                               "properties": {k: {"type": "integer"} for k in ("total", "completed", "failed")}},
            "metadata": {"type": ["object", "null"]},
        },
    },
    "BatchList": {"type": "object", "required": ["object", "data", "has_more"],
                  "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Batch")},
                                 "first_id": {"type": ["string", "null"]}, "last_id": {"type": ["string", "null"]},
                                 "has_more": {"type": "boolean"}}},
}


def v1_paths() -> dict[str, Any]:
    """Return the /v1 operations (the OpenAI-compatible API)."""
    json_body = {"required": True, "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}}}
    file_id = {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}
    batch_id = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20})
    after = _query("after", {"type": "string"}, "The last id of the previous page.")
    ignored_body = {"required": True, "content": {"application/json": {
        "schema": {"description": "Ignored: send {} or nothing."}}}}
    retry_after = {"Retry-After": {"schema": {"type": "string"}}}
    return {
        "/v1/models": {"get": {
            "operationId": "v1ListModels", "summary": "Models live workers serve (OpenAI's shape)",
            "responses": {"200": _json("The models.", _ref("ModelList")),
                          "503": {**_oai_error("Redis is unreachable."), "headers": retry_after}, **V1_COMMON}}},
        "/v1/models/{model}": {"get": {
            "operationId": "v1GetModel", "summary": "One served model",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json("The model.", _ref("Model")), "404": _oai_error("Not served."),
                          "503": {**_oai_error("Redis is unreachable."), "headers": retry_after}, **V1_COMMON}}},
        "/v1/chat/completions": {"post": {
            "operationId": "v1CreateChatCompletion", "summary": "Create a chat completion (a stored chat job)",
            "description": "The boost comes in the body's instaboost object (the openai SDK's extra_body). "
                           "Boosted tokens: <boost>…</boost> spans in any message, a message's own boost M, or by "
                           "default the system message(s). Waits up to v1.wait_seconds; then 504 naming the job. "
                           "A retry (the same Idempotency-Key, or an openai SDK retry) answers from the job its first "
                           "try created. A stream waits v1.wait_seconds for each next piece of text; closing it "
                           "cancels the job.",
            "parameters": [
                {"name": "Idempotency-Key", "in": "header", "required": False,
                 "description": "Retries with the same key (and body) get the same job, for v1.idempotency_hours.",
                 "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
                {"name": "x-stainless-retry-count", "in": "header", "required": False,
                 "description": "The openai SDK's try count: an integer 1 or more joins the job of the same "
                                "request's first try (anything else counts as a first try).",
                 "schema": {"type": "string"}}],
            "requestBody": json_body,
            "responses": {
                "200": {"description": "The completion; with stream, server-sent chat.completion.chunk events, a "
                                       "usage chunk and data: [DONE].",
                        "content": {"application/json": {"schema": _ref("ChatCompletion")},
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                "400": _oai_error("Invalid request (OpenAI's invalid_request_error), e.g. a bad boost."),
                "404": _oai_error("No live worker serves the model (code model_not_found)."),
                "409": _oai_error("The job was cancelled, or the Idempotency-Key was used before with another "
                                  "body (code idempotency_key_reused)."),
                "413": _oai_error("The body is too large."),
                "429": {**_oai_error("Too many queued jobs, or this web process holds as many waiting "
                                     "completions as it may (web.threads)."), "headers": retry_after},
                "503": {**_oai_error("The broker is unreachable, or no worker heartbeat names the model while that "
                                          "may be transient; the openai SDK retries after Retry-After."),
                        "headers": retry_after},
                "504": _oai_error("The job did not finish within v1.wait_seconds; poll "
                                  "GET /v1/chat/completions/{id}."),
                **V1_COMMON, **V1_CROSS_SITE}}},
        "/v1/chat/completions/{completion_id}": {"get": {
            "operationId": "v1GetChatCompletion", "summary": "A stored chat completion by id (its job's id)",
            "parameters": [{"name": "completion_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json("The completion.", _ref("ChatCompletion")),
                          "400": _oai_error("Its job failed on its input."),
                          "404": _oai_error("No such completion."), "409": _oai_error("Not finished yet."),
                          **V1_COMMON}}},
        "/v1/files": {
            "post": {
                "operationId": "v1UploadFile", "summary": "Upload a batch input (JSONL, up to limits.max_file_bytes)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _ref("FileUpload")}}},
                "responses": {"200": _json("The stored file.", _ref("File")),
                              "400": _oai_error("Not JSONL of objects, or a wrong purpose."),
                              "413": _oai_error("Larger than limits.max_file_bytes."),
                              "429": _oai_error("The file store is full (limits.max_files or "
                                                "limits.max_file_storage_bytes): delete files first."),
                              **V1_COMMON, **V1_CROSS_SITE}},
            "get": {
                "operationId": "v1ListFiles", "summary": "Files, newest first",
                "parameters": [_query("purpose", {"type": "string"}),
                               {**limit, "schema": {"type": "integer", "minimum": 1, "maximum": 10_000}}, after],
                "responses": {"200": _json("A page of files.", _ref("FileList")),
                              "400": _oai_error("Invalid limit."), **V1_COMMON}},
        },
        "/v1/files/{file_id}": {
            "get": {"operationId": "v1GetFile", "summary": "A file's description", "parameters": [file_id],
                    "responses": {"200": _json("The file.", _ref("File")), "404": _oai_error("No such file."),
                                  **V1_COMMON}},
            "delete": {"operationId": "v1DeleteFile", "summary": "Delete a file", "parameters": [file_id],
                       "description": "Send 'Content-Type: application/json' or an 'Authorization' header (the "
                                      "openai SDK sends both).", "requestBody": ignored_body,
                       "responses": {"200": _json("Deleted.", _ref("FileDeleted")), "404": _oai_error("No such file."),
                                     **V1_COMMON, **V1_CROSS_SITE}},
        },
        "/v1/files/{file_id}/content": {"get": {
            "operationId": "v1GetFileContent", "summary": "A file's bytes", "parameters": [file_id],
            "responses": {"200": {"description": "The JSONL.", "content": {"application/jsonl": {
                "schema": {"type": "string"}}}}, "404": _oai_error("No such file."), **V1_COMMON}}},
        "/v1/batches": {
            "post": {
                "operationId": "v1CreateBatch", "summary": "Create a batch: each input line one stored chat job",
                "description": "A create that repeats an Idempotency-Key (or a retry of the openai SDK, "
                               "x-stainless-retry-count > 0, of the same request within 10 minutes) returns the "
                               "batch the first one stored.",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BatchRequest")}}},
                "responses": {"200": _json("The batch.", _ref("Batch")),
                              "400": _oai_error("Invalid body: endpoint, completion_window, a file of another "
                                                "purpose."),
                              "404": _oai_error("No such input file."),
                              "429": {**_oai_error("The batch's lines would pass the queue's limit."),
                                      "headers": retry_after},
                              "503": {**_oai_error("The broker is unreachable."), "headers": retry_after},
                              **V1_COMMON, **V1_CROSS_SITE}},
            "get": {
                "operationId": "v1ListBatches", "summary": "Batches, newest first", "parameters": [after, limit],
                "responses": {"200": _json("A page of batches.", _ref("BatchList")),
                              "400": _oai_error("Invalid limit."), "404": _oai_error("No batch with id after."),
                              **V1_COMMON}},
        },
        "/v1/batches/{batch_id}": {"get": {
            "operationId": "v1GetBatch", "summary": "A batch, its status and request_counts", "parameters": [batch_id],
            "responses": {"200": _json("The batch.", _ref("Batch")), "404": _oai_error("No such batch."),
                          **V1_COMMON}}},
        "/v1/batches/{batch_id}/cancel": {"post": {
            "operationId": "v1CancelBatch", "summary": "Cancel a batch in progress", "parameters": [batch_id],
            "description": "Send 'Content-Type: application/json' (the body is ignored and may be empty) or an "
                           "'Authorization' header (the openai SDK sends both).",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"description": "Ignored: send {} or nothing."}}}},
            "responses": {"200": _json("Cancelling (or cancelled).", _ref("Batch")),
                          "404": _oai_error("No such batch."), "409": _oai_error("The batch already ended."),
                          **V1_COMMON, **V1_CROSS_SITE}}},
    }
