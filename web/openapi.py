"""The request bodies' schemas under a deployment's settings, generated from the declarations in shared/.

The routes name these bodies (web.apidoc.operation(json=...)); web.apidoc.document() fills them in with the
app's settings. Their bounds are the validators' exactly: tests fuzz both sides (tests/web/test_fuzz.py).
"""

from __future__ import annotations

from typing import Any, Mapping

from shared.calibration import SWEEP_JOB_FIELDS
from shared.chat import BOOST_KEYS
from shared.chat_extras import SAMPLING_FIELDS
from shared.evaluation.cases import PACKS
from shared.evaluation.checks import CHECK_TYPES, IFEVAL, IFEVAL_KWARGS, LANGUAGES, RELATIONS
from shared.fields import BY_NAME, JOB_FIELDS, LAYER_MODES, MAX_CHECKS, MAX_LOGIT_BIAS, PLACEMENTS, JobField
from shared.requests.batch import BatchCreate
from shared.requests.chat import ChatCompletionRequest
from shared.requests.job import JobFields
from shared.requests.types import SCOPES
from shared.requests.openai import MAX_METADATA, MAX_USER_CHARS
from shared.requests.openai import NEUTRAL as CHAT_NEUTRAL
from shared.requests.sweep import API_CASE_NAME, MAX_API_CASES, MAX_DESCRIPTION, MAX_SETTINGS_VALUES, SweepRequestBody
from shared.requests.types import MAX_MODEL_NAME
from shared.settings import Settings
from shared.spec import MAX_STOP
from shared.validation import WHITESPACE
from web.apidoc import body


def _pattern_class(chars: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in chars)


def _number_bounds(f: JobField, settings: Settings) -> dict[str, Any]:
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


def field_schema(f: JobField, settings: Settings) -> dict[str, Any]:
    """Return the JSON Schema of one job field, with the same bounds the validator applies."""
    if f.kind == "text":
        # Not blank: at least one character that is neither NUL nor whitespace (shared.validation.WHITESPACE).
        ws = _pattern_class(WHITESPACE + "\x00")
        schema = {"type": "string", "minLength": 1, "maxLength": settings.limits.max_text_chars,
                  "pattern": f"^[^\\u0000]*[^{ws}][^\\u0000]*$"}
    elif f.kind == "model":  # which models are served now is live: GET /api/models
        schema = {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME}
    elif f.kind in ("integer", "number"):
        schema = {"type": f.kind, **_number_bounds(f, settings)}
    elif f.kind == "choice":
        schema = {"type": "string", "enum": list(f.choices)}
    elif f.kind == "boolean":
        schema = {"type": "boolean"}
        if f.name == "judge" and not str(settings.judge.url or "").strip():
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



def _target_needs_boost(name: str) -> dict[str, Any]:
    """Return the rule that a target mass takes no M below 1 (one raises the share, the other lowers it)."""
    return {"if": {"required": ["target_mass"], "properties": {"target_mass": {"type": "number"}}},
            "then": {"properties": {name: {"anyOf": [{"not": {"type": "array"}},
                                                     {"type": "array", "items": {"minimum": 1}}]}}}}


def _targets_need_boost() -> dict[str, Any]:
    """Return the rule that swept target masses take no grid M below 1."""
    return {"if": {"required": ["target_masses"],
                   "properties": {"target_masses": {"type": "array", "contains": {"type": "number"}}}},
            "then": {"properties": {"grid": {"anyOf": [{"not": {"type": "array"}},
                                                       {"type": "array", "items": {"minimum": 1}}]}}}}


def job_request_schema(settings: Settings) -> dict[str, Any]:
    """Return the JobRequest schema (generated from shared.fields) with this deployment's limits.

    The bounds match the server's exactly (tests fuzz both sides). What the running workers add (the served
    models, their layers and context, whether a sweep recommends a boost) is live: GET /api/models says it.
    """
    assert len(LAYER_MODES) == 2, "the variants rule below is written for two layer modes"
    props = {f.name: field_schema(f, settings) for f in JOB_FIELDS}
    schema: dict[str, Any] = {"type": "object", "required": [f.name for f in JOB_FIELDS if f.required],
                              "additionalProperties": False, "properties": props}
    # 1 original + multipliers x layer modes <= max_variants; layer_modes defaults to both.
    limit = settings.limits.max_variants - 1
    schema["if"] = {"required": ["layer_modes"], "properties": {"layer_modes": {"type": "array", "maxItems": 1}}}
    schema["then"] = {"properties": {"multipliers": {"maxItems": limit}}}
    schema["else"] = {"properties": {"multipliers": {"maxItems": limit // 2}}}
    schema["allOf"] = [_target_needs_boost("multipliers")]
    # Every optional field may be null: "use the default".
    for name, prop in props.items():
        if name in schema["required"]:
            continue
        prop["type"] = [prop["type"], "null"]
        if "enum" in prop:
            prop["enum"] = [*prop["enum"], None]
    # "recommended" works once the model has a finished calibration sweep (GET /api/models says which have).
    numbers = props["multipliers"]
    props["multipliers"] = {"description": numbers["description"],
                            "anyOf": [{k: v for k, v in numbers.items() if k != "description"},
                                      {"const": "recommended"}]}
    return schema


def sweep_request_schema(settings: Settings) -> dict[str, Any]:
    """Return the SweepRequest schema: exactly what shared.calibration.parse_sweep_request accepts (JSON API)."""
    job = job_request_schema(settings)["properties"]
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
        "scopes": {"type": "array", "minItems": 1, "maxItems": MAX_SETTINGS_VALUES,
                   "items": {"type": "string", "enum": list(SCOPES)},
                   "description": "Boost scopes swept (default: [scope]); give scope or scopes, not both."},
        "target_masses": {"type": "array", "minItems": 1, "maxItems": MAX_SETTINGS_VALUES,
                          "items": {"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                          "description": "Target masses swept, null: a fixed M only (default: [target_mass]); give "
                                         "target_mass or target_masses, not both. A target mass takes no M below 1."},
        "boilerplate_multipliers": {"type": "array", "minItems": 1, "maxItems": MAX_SETTINGS_VALUES,
                                    "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                    "description": "Boilerplate multipliers swept, 1: off, below 1 de-boosts the "
                                                   "instruction turn's template tokens (default: "
                                                   "[boilerplate_multiplier]); give boilerplate_multiplier or "
                                                   "boilerplate_multipliers, not both."},
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
            "allOf": [_target_needs_boost("grid"), _targets_need_boost(),
                      *({"not": {"required": [one, many], "properties": {one: {"not": {"type": "null"}},
                                                                          many: {"not": {"type": "null"}}}}}
                        for one, many in (("scope", "scopes"), ("target_mass", "target_masses"),
                                          ("boilerplate_multiplier", "boilerplate_multipliers")))],
            "oneOf": [{"required": [src], "properties": {src: {"not": {"type": "null"}},
                                                         **{o: {"type": "null"} for o in sources if o != src}}}
                      for src in sources]}


def _nullable(schema: dict) -> dict:
    t = schema.get("type")
    if isinstance(t, str):
        out = {**schema, "type": [t, "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def chat_request_schema(settings: Settings) -> dict[str, Any]:
    """Return the POST /v1/chat/completions body's schema, its bounds taken from the job fields (shared.fields)."""
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
    for key, allowed in CHAT_NEUTRAL.items():
        neutral[key] = {} if allowed is None else {"enum": list(allowed)}
    return {
        "type": "object", "required": ["model", "messages"], "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "description": "A model a live worker serves (GET /v1/models)."},
            "messages": {"type": "array", "minItems": 1, "items": message,
                         "description": chat_help["messages"]},
            "max_tokens": _nullable(tokens), "max_completion_tokens": _nullable(tokens),
            "temperature": _nullable(bounded("temperature")), "top_p": _nullable(bounded("top_p")),
            "seed": _nullable(bounded("seed")),
            "n": _nullable({"type": "integer", "minimum": 1, "maximum": settings.v1.max_n,
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

def batch_request_schema(_settings: Mapping[str, Any]) -> dict[str, Any]:
    """Return the POST /v1/batches body's schema (shared.store.batches.create_batch)."""
    return {"type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
            "additionalProperties": False,
            "properties": {"input_file_id": {"type": "string", "minLength": 1},
                           "endpoint": {"type": "string", "enum": ["/v1/chat/completions"]},
                           "completion_window": {"type": "string", "enum": ["24h"]},
                           "metadata": {"type": ["object", "null"], "maxProperties": 16,
                                        "propertyNames": {"maxLength": 64},
                                        "additionalProperties": {"type": "string", "maxLength": 512}}}}


def file_upload_schema(_settings: Mapping[str, Any]) -> dict[str, Any]:
    """Return the POST /v1/files form's schema (shared.store.files)."""
    return {"type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "JSONL: one request object per line."},
        "purpose": {"type": "string", "enum": ["batch"]},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000,
                                   "description": "Seconds the file lives (default v1.file_expiry_hours)."}}}


# The routes' bodies are the request models (shared.requests); their schemas here spell the same declarations
# (read through shared.fields) in JSON Schema with this deployment's limits.
JOB_REQUEST = body(JobFields, job_request_schema)
SWEEP_REQUEST = body(SweepRequestBody, sweep_request_schema)
CHAT_REQUEST = body(ChatCompletionRequest, chat_request_schema)
BATCH_REQUEST = body(BatchCreate, batch_request_schema)
FILE_UPLOAD = body("FileUpload", file_upload_schema)
IGNORED = body("Ignored", lambda _settings: {"description": "Ignored: send {} or nothing."})
