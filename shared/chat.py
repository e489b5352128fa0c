"""Chat jobs: an OpenAI chat-completions body validated into a stored job's params, and back into engine requests.

Torch-free (the web validates with it; the worker builds engine requests from the stored params).

Which tokens are boosted, in this order of precedence:

- spans marked ``<boost>…</boost>`` inside any message's text (the tags are removed before tokenization;
  an unclosed, stray or nested tag, or an empty span, is refused), boosted by ``instaboost.multiplier``;
- a message's own ``"boost": M`` boosts that whole message with its own M;
- otherwise, when the request carries ``instaboost``, the system message(s), with ``instaboost.multiplier``.

A request without ``instaboost``, tags or per-message boosts is plain generation (M = 1, nothing boosted).
Numbers are checked with the job API's own field rows (shared.fields), so the bounds and messages agree.
``response_format`` (json_object, json_schema) is validated by shared.response_format and stored with the job;
the worker enforces it while decoding (worker.engine.grammar).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Mapping

from shared.errors import ValidationError
from shared.chat_extras import (CHAT_VARIANT, REFUSED_WHY, SAMPLING_FIELDS, SAMPLING_KEYS, choice_index, choice_seed,
                                choice_variant, choice_variants, logit_bias_param, metadata_param, user_param)
from shared.fields import BY_NAME, CHAT_BY_NAME, LAYER_MODES
from shared.response_format import grammar, parse as parse_response_format
from shared.logprobs import MAX_TOP_LOGPROBS, chat_logprobs
from shared.spec import MAX_STOP, CHAT_ROLES
from shared.validation import Validator, brief

BOOST_OPEN, BOOST_CLOSE = "<boost>", "</boost>"
CHAT_ENDPOINT = "/v1/chat/completions"
# What the boost in extra_body may hold: instaboost: {...}.
BOOST_KEYS = ("multiplier", "layers", "start_layer", "num_middle_layers", "heads", "placement")
# OpenAI body fields we take and use.
USED_KEYS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "stop",
             "stream", "stream_options", "instaboost", "user", "metadata",
             "response_format", "logprobs", "top_logprobs") + SAMPLING_KEYS
# OpenAI body fields accepted only at a value that changes nothing here (their default); None: any value, as
# those mean nothing on this server (README, "/v1 fields").
NEUTRAL = {"store": None, "parallel_tool_calls": None, "service_tier": None, "tools": (None,),
           "tool_choice": (None, "none"), "reasoning_effort": None, "prediction": (None,), "modalities": (None, ["text"]),
           "prompt_cache_key": None, "safety_identifier": None, "verbosity": None}

ROLE_ALIASES = {"developer": "system"}
PRIORITIES = ("interactive", "batch")


def _error(v: Validator, field: str, message: str) -> None:
    v.error(field, message)


def split_boost_tags(text: str, field: str) -> list[tuple[str, bool]]:
    """Return [(piece, boosted)] of text with its <boost>…</boost> tags removed; raise on malformed tags."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    while True:
        o = text.find(BOOST_OPEN, pos)
        c = text.find(BOOST_CLOSE, pos)
        if o < 0 and c < 0:
            if pos < len(text):
                pieces.append((text[pos:], False))
            return pieces
        if c >= 0 and (o < 0 or c < o):
            raise ValidationError(f"{field} has a {BOOST_CLOSE} at character {c} without a {BOOST_OPEN} before it",
                                  field=field)
        end = text.find(BOOST_CLOSE, o + len(BOOST_OPEN))
        if end < 0:
            raise ValidationError(f"{field} has an unclosed {BOOST_OPEN} at character {o}: close it with "
                                  f"{BOOST_CLOSE}", field=field)
        inner = text[o + len(BOOST_OPEN):end]
        if BOOST_OPEN in inner:
            raise ValidationError(f"{field} nests {BOOST_OPEN} tags (at character {o}); boosted spans cannot nest",
                                  field=field)
        if not inner:
            raise ValidationError(f"{field} has an empty {BOOST_OPEN}{BOOST_CLOSE} span at character {o}",
                                  field=field)
        if o > pos:
            pieces.append((text[pos:o], False))
        pieces.append((inner, True))
        pos = end + len(BOOST_CLOSE)


def _content_text(v: Validator, content: Any, field: str) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        out = []
        for k, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                _error(v, f"{field}[{k}]", f"{field}[{k}] must be a text part {{\"type\": \"text\", \"text\": ...}}; "
                                           "only text is supported")
                return None
            out.append(part["text"])
        return "".join(out)
    _error(v, field, f"{field} must be a string or a list of text parts, got {brief(content)}")
    return None


def _messages(v: Validator, value: Any, tag_m: float, default_m: float | None) -> list[dict]:
    """Return [{"role", "segments": [[text, M or None], ...]}] for the messages, collecting errors in v."""
    if not isinstance(value, list) or not value:
        _error(v, "messages", "messages must be a non-empty array of {role, content} objects")
        return []
    limit = v.settings["limits.max_text_chars"]
    total = 0
    parsed: list[tuple[str, list[tuple[str, bool]], float | None]] = []
    for i, m in enumerate(value):
        f = f"messages[{i}]"
        if not isinstance(m, Mapping):
            _error(v, f, f"{f} must be an object with role and content")
            continue
        unknown = [k for k in m if k not in ("role", "content", "name", "boost")]
        if unknown:
            _error(v, f, f"{f} has unknown keys {', '.join(map(brief, unknown[:5]))}; allowed: role, content, "
                         "name, boost")
            continue
        role = m.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in CHAT_ROLES:
            _error(v, f"{f}.role", f"{f}.role must be one of system, developer, user, assistant; got "
                                   f"{brief(m.get('role'))}")
            continue
        text = _content_text(v, m.get("content"), f"{f}.content")
        if text is None:
            continue
        if "\x00" in text:
            _error(v, f"{f}.content", f"{f}.content must not contain NUL characters")
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _error(v, f"{f}.content", f"{f}.content must be valid Unicode text (it holds a lone surrogate)")
            continue
        total += len(text)
        try:
            pieces = split_boost_tags(text, f"{f}.content")
        except ValidationError as exc:
            _error(v, exc.field, exc.message)
            continue
        own = None
        if m.get("boost") is not None:
            own = v.number(BY_NAME["multipliers"], m["boost"], f"{f}.boost")
            if own is None:
                continue
            if not text:
                _error(v, f"{f}.boost", f"{f} has a boost but no text to boost")
                continue
        parsed.append((role, pieces, own))
    if total > limit:
        _error(v, "messages", f"the messages hold {total} characters; at most {limit} are allowed")
    if v.errors:
        return []
    tagged = any(b for _, pieces, _ in parsed for _, b in pieces)
    explicit = tagged or any(own is not None for _, _, own in parsed)
    out = []
    for role, pieces, own in parsed:
        segments: list[list] = []
        for text, boosted in pieces:
            if boosted:
                segments.append([text, tag_m])
            elif own is not None:
                segments.append([text, own])
            elif not explicit and default_m is not None and role == "system":
                segments.append([text, default_m])
            else:
                segments.append([text, None])
        # Adjacent unboosted pieces (a message cut by nothing) stay as they are; empty text has no segment.
        out.append({"role": role, "segments": segments})
    if not any(seg for m in out for seg in m["segments"]):
        _error(v, "messages", "the messages hold no text")
    if out and out[-1]["role"] == "assistant":
        pass  # continuing an assistant turn is allowed: the template adds the generation prompt after it
    return out


def _boost(v: Validator, value: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Return the validated boost settings from extra_body's instaboost object (defaults from settings)."""
    out = {"multiplier": settings["instaboost.multiplier"], "layers": "middle" if settings[
        "instaboost.boost_middle_layers_only"] else "all", "start_layer": settings["instaboost.start_layer"],
        "num_middle_layers": settings["instaboost.num_middle_layers"],
        "head_boost_percentage": settings["instaboost.head_boost_percentage"], "heads": None,
        "placement": settings["instaboost.placement"]}
    if value is None:
        return out
    if not isinstance(value, Mapping):
        _error(v, "instaboost", "instaboost must be an object: {multiplier, layers, start_layer, num_middle_layers, "
                                "heads, placement}")
        return out
    unknown = [k for k in value if k not in BOOST_KEYS]
    for k in unknown[:5]:
        _error(v, f"instaboost.{str(k)[:40]}", f"unknown field instaboost.{brief(k)}; allowed: {', '.join(BOOST_KEYS)}")
    if value.get("multiplier") is not None:
        m = v.number(BY_NAME["multipliers"], value["multiplier"], "instaboost.multiplier")
        if m is not None:
            out["multiplier"] = m
    for name in ("start_layer", "num_middle_layers", "placement"):
        if value.get(name) is not None:
            before = len(v.errors)
            got = v.check(BY_NAME[name], value[name])
            for e in v.errors[before:]:
                e["field"] = f"instaboost.{e['field']}"
            out[name] = got
    layers = value.get("layers")
    if layers is not None:
        if isinstance(layers, str) and layers in LAYER_MODES:
            out["layers"] = layers
        elif isinstance(layers, list) and layers and len(layers) <= 10_000 and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 10_000 for i in layers):
            out["layers"] = sorted(set(layers))
        else:
            _error(v, "instaboost.layers", f"instaboost.layers must be 'all', 'middle' or a non-empty list of layer "
                                           f"indices >= 0; got {brief(layers)}")
    heads = value.get("heads")
    if heads is not None:
        if isinstance(heads, (int, float)) and not isinstance(heads, bool):
            before = len(v.errors)
            got = v.number(BY_NAME["head_boost_percentage"], heads, "instaboost.heads")
            if got is not None and len(v.errors) == before:
                out["head_boost_percentage"] = got
        elif isinstance(heads, Mapping) and heads and all(
                _layer_key(k) is not None and isinstance(hs, list) and hs and all(
                    isinstance(h, int) and not isinstance(h, bool) and 0 <= h <= 10_000 for h in hs)
                for k, hs in heads.items()):
            out["heads"] = {str(_layer_key(k)): sorted(set(hs)) for k, hs in heads.items()}
        else:
            _error(v, "instaboost.heads", "instaboost.heads must be a percentage of heads in (0, 100] or "
                                          "{\"layer\": [head indices]}; got " + brief(heads))
    return out


def _layer_key(k: Any) -> int | None:
    try:
        n = int(k)
    except (TypeError, ValueError):
        return None
    return n if 0 <= n <= 10_000 and str(n) == str(k).strip() else None


def _stop(v: Validator, value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_STOP or not all(isinstance(s, str) and s for s in items):
        _error(v, "stop", f"stop must be a non-empty string or a list of up to {MAX_STOP} non-empty strings; got "
                          f"{brief(value)}")
        return []
    if any(len(s) > 200 for s in items):
        _error(v, "stop", "each stop string must be at most 200 characters")
        return []
    return list(dict.fromkeys(items))


def chat_params(body: Any, settings: Mapping[str, Any], *, priority: str = "interactive") -> dict[str, Any]:
    """Validate an OpenAI chat-completions body; return the params a chat job stores (ValidationError lists all)."""
    if not isinstance(body, Mapping):
        raise ValidationError("the request body must be a JSON object with model and messages",
                              errors=[{"field": "body", "message": "expected a JSON object"}])
    v = Validator(settings, strict=True)
    for key in [k for k in body if k not in USED_KEYS and k not in NEUTRAL][:10]:
        _error(v, str(key)[:64], f"{key}: {REFUSED_WHY[key]}" if key in REFUSED_WHY else
               f"unrecognized request argument {brief(key)}")
    check_neutral(v, body, NEUTRAL)
    model = v.check(BY_NAME["model"], body.get("model")) if "model" in body else \
        _error(v, "model", "model is required: a model a live worker serves (see GET /v1/models)")
    n = v.check(CHAT_BY_NAME["n"], body["n"]) if body.get("n") is not None else 1
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        _error(v, "stream", f"stream must be a boolean, got {brief(stream)}")
    so = body.get("stream_options")
    if so is not None and (not isinstance(so, Mapping) or any(k not in ("include_usage",) for k in so)):
        _error(v, "stream_options", "stream_options may only hold include_usage")
    tokens = {}
    for name in ("max_completion_tokens", "max_tokens"):  # the newer name wins when both are given
        if body.get(name) is not None:
            spec = BY_NAME["max_new_tokens"]
            before = len(v.errors)
            got = v.check(spec, body[name])
            for e in v.errors[before:]:
                e["field"] = name
                e["message"] = e["message"].replace("max_new_tokens", name, 1)
            tokens[name] = got
    max_new = tokens.get("max_completion_tokens", tokens.get("max_tokens", settings["generation.max_new_tokens"]))
    decoding = {}
    for name in ("temperature", "top_p", "seed"):
        decoding[name] = v.check(BY_NAME[name], body[name]) if body.get(name) is not None else \
            BY_NAME[name].default_value(settings)
    for name in SAMPLING_FIELDS:
        decoding[name] = v.check(BY_NAME[name], body[name]) if body.get(name) is not None else \
            BY_NAME[name].default_value(settings)
    bias = logit_bias_param(v, body.get("logit_bias"))
    user, metadata = user_param(v, body.get("user")), metadata_param(v, body.get("metadata"))
    logprobs = chat_logprobs_k(v, body.get("logprobs"), body.get("top_logprobs"))
    boost_given = body.get("instaboost") is not None
    boost = _boost(v, body.get("instaboost"), settings)
    stop = _stop(v, body.get("stop"))
    try:
        response_format = parse_response_format(body.get("response_format"), settings["limits.max_text_chars"])
    except ValidationError as exc:
        v.errors.extend(exc.errors)
    if v.errors:  # the messages' defaults depend on a valid boost; report what is known so far first
        fields = ", ".join(dict.fromkeys(e["field"] for e in v.errors))
        raise ValidationError(f"invalid request: fix {fields}", errors=v.errors)
    messages = _messages(v, body.get("messages"), boost["multiplier"], boost["multiplier"] if boost_given else None)
    if v.errors:
        fields = ", ".join(dict.fromkeys(e["field"] for e in v.errors))
        raise ValidationError(f"invalid request: fix {fields}", errors=v.errors)
    boosted = [t for m in messages for t, mult in m["segments"] if mult is not None]
    mults = [mult for m in messages for _, mult in m["segments"] if mult is not None]
    last_user = next((m for m in reversed(messages) if m["role"] == "user"), messages[-1])
    layer_mode = boost["layers"] if isinstance(boost["layers"], str) else "all"
    return {
        "kind": "chat", "model": model,
        # The job API's fields, so pages, lists and the CSV show a chat job like any other.
        "instruction": "\n".join(boosted), "query": "".join(t for t, _ in last_user["segments"]),
        "multipliers": [max(mults, key=lambda x: abs(x - 1)) if mults else 1.0], "layer_modes": [layer_mode],
        "start_layer": boost["start_layer"], "num_middle_layers": boost["num_middle_layers"],
        "head_boost_percentage": boost["head_boost_percentage"], "seed": decoding["seed"],
        "placement": boost["placement"], "engine": settings["instaboost.engine"], "max_new_tokens": max_new,
        "temperature": decoding["temperature"], "top_p": decoding["top_p"], "attention": False,
        # Chat only.
        "messages": messages, "layers": boost["layers"], "heads": boost["heads"], "stop": stop,
        "stream": bool(stream), "include_usage": bool(isinstance(so, Mapping) and so.get("include_usage")),
        "logprobs": logprobs,
        "priority": priority if priority in PRIORITIES else "interactive",
        "n": n, **{name: decoding[name] for name in SAMPLING_FIELDS}, "logit_bias": bias, "user": user,
        "metadata": metadata,
        # Stored only when the output is constrained, so a plain chat job's params stay as they were.
        **({"response_format": response_format} if response_format else {}),
    }


def check_neutral(v: Validator, body: Mapping[str, Any], neutral: Mapping[str, Any]) -> None:
    """Refuse a field accepted only at its neutral values (a boolean is not a number here: false is not 0)."""
    for key, allowed in neutral.items():
        if key in body and allowed is not None and not any(
                body[key] == a and isinstance(body[key], bool) == isinstance(a, bool) for a in allowed):
            _error(v, key, f"{key}: {REFUSED_WHY[key]}" if key in REFUSED_WHY else
                   f"{key} is not supported by this server (give {brief(allowed[0])} or leave it out)")


def chat_logprobs_k(v: Validator, logprobs: Any, top: Any) -> int | None:
    """Return how many top logprobs a chat answer carries per token (None: no logprobs), collecting errors."""
    if logprobs is not None and not isinstance(logprobs, bool):
        _error(v, "logprobs", f"logprobs must be a boolean, got {brief(logprobs)}")
        return None
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        _error(v, "top_logprobs", f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {brief(top)}")
        return None
    if top and not logprobs:
        _error(v, "top_logprobs", "top_logprobs needs logprobs: true")
        return None
    return (top or 0) if logprobs else None


def is_chat(params: Mapping[str, Any]) -> bool:
    """Return whether stored job params are a chat job's."""
    return isinstance(params, Mapping) and params.get("kind") == "chat"


def generation_request(params: Mapping[str, Any], choice: int = 0):
    """Return the engine's GenerationRequest for a stored chat job's choice (its own seed, choice_seed)."""
    from shared.spec import BoostSpec, ChatMessage, GenerationParams, GenerationRequest, Segment

    messages = [ChatMessage(m["role"], tuple(Segment(t, mult) for t, mult in m["segments"]))
                for m in params["messages"]]
    heads = {int(k): tuple(v) for k, v in params["heads"].items()} if params.get("heads") else None
    layers = params["layers"] if isinstance(params["layers"], str) else tuple(params["layers"])
    spec = BoostSpec(multiplier=1.0, layers=layers, start_layer=params["start_layer"],
                     num_middle_layers=params["num_middle_layers"],
                     head_fraction=params["head_boost_percentage"] / 100.0, heads=heads, seed=params["seed"],
                     placement=params["placement"])
    # Jobs stored before the sampling extras lack them: their defaults change nothing.
    extras = {name: params[name] for name in SAMPLING_FIELDS if params.get(name) is not None}
    gen = GenerationParams(max_new_tokens=params["max_new_tokens"], temperature=params["temperature"],
                           top_p=params["top_p"], seed=choice_seed(params["seed"], choice),
                           stop=tuple(params.get("stop") or ()), **extras,
                           logit_bias={int(k): b for k, b in (params.get("logit_bias") or {}).items()})
    return replace(GenerationRequest.chat(messages, spec, gen, grammar=grammar(params.get("response_format"))),
                   logprobs=params.get("logprobs"))




def fingerprint(params: dict) -> str:
    """Return the system_fingerprint: what, besides the request, decides the output (model, engine, version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("instaboost")
    except PackageNotFoundError:
        v = "dev"
    return "fp_" + hashlib.sha256(f"{params.get('model')}|{params.get('engine')}|{v}".encode()).hexdigest()[:12]


def completion_id(job_id: int) -> str:
    """Return a chat completion's id: its job's id."""
    return str(job_id)


def _usage(runs) -> dict:
    # The prompt is read once for all choices; completion_tokens sums them (as OpenAI counts n > 1).
    p = runs[0].prompt_tokens if runs else 0
    c = sum(r.output_tokens for r in runs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion_body(job, runs) -> dict:
    """Return the OpenAI chat.completion object of a finished chat job: one choice per run (a Run or a list)."""
    runs = sorted(runs if isinstance(runs, (list, tuple)) else [runs], key=lambda r: choice_index(r.variant) or 0)
    run = runs[0]
    return {
        "id": completion_id(job.id), "object": "chat.completion", "created": int(job.created_at.timestamp()),
        "model": job.model, "system_fingerprint": fingerprint(job.params),
        "choices": [{"index": choice_index(r.variant) or 0,
                     "message": {"role": "assistant", "content": r.produced_text, "refusal": None},
                     "logprobs": chat_logprobs(r.logprobs), "finish_reason": r.finish_reason or "stop"} for r in runs],
        "usage": _usage(runs),
        "instaboost": {"job_id": job.id, "multiplier": run.multiplier, "layers": run.layers,
                       "placement": job.params.get("placement"), "user": job.params.get("user"),
                       "metadata": job.params.get("metadata")},
    }


__all__ = ["chat_params", "is_chat", "generation_request", "choice_variant", "choice_index", "choice_variants", "split_boost_tags", "CHAT_VARIANT", "CHAT_ENDPOINT",
           "CHAT_BY_NAME", "completion_body", "fingerprint"]
