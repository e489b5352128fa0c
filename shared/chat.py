"""Chat jobs: an OpenAI chat-completions body validated into a stored job's params, and back into engine requests.

Torch-free (the web validates with it; the worker builds engine requests from the stored params).

Which tokens are boosted, in this order of precedence:

- spans marked ``<boost>…</boost>`` inside any message's text (the tags are removed before tokenization;
  an unclosed, stray or nested tag, or an empty span, is refused), boosted by ``instaboost.multiplier``;
- a message's own ``"boost": M`` boosts that whole message with its own M;
- otherwise, when the request carries ``instaboost``, the system message(s), with ``instaboost.multiplier``.

A request without ``instaboost``, tags or per-message boosts is plain generation (M = 1, nothing boosted).
The request is declared and validated once, as a pydantic model (shared.requests.chat, whose numbers are the job
request's own types), so the bounds and messages agree with the job API.
``response_format`` (json_object, json_schema) is validated by shared.response_format and stored with the job;
the worker enforces it while decoding (worker.engine.grammar).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Mapping

from shared.chat_extras import (CHAT_VARIANT, SAMPLING_FIELDS, choice_index, choice_seed,  # noqa: F401
                                choice_variant, choice_variants)
from shared.errors import ValidationError
from shared.logprobs import chat_logprobs
from shared.requests.chat import (BOOST_CLOSE, BOOST_OPEN, ROLE_ALIASES, ChatCompletionRequest,  # noqa: F401
                                  InstaBoost, split_boost_tags, validate_chat)
from shared.requests.openai import NEUTRAL  # noqa: F401 (the OpenAPI document's)
from shared.response_format import grammar
from shared.settings import Settings
from shared.spec import BoostSpec, ChatMessage, GenerationParams, GenerationRequest, Segment

CHAT_ENDPOINT = "/v1/chat/completions"
BOOST_KEYS = InstaBoost.BOOST_KEYS  # what the boost in extra_body may hold: instaboost: {...}
PRIORITIES = ("interactive", "batch")


def _segments(request: ChatCompletionRequest, boost: dict[str, Any]) -> list[dict]:
    """Return [{"role", "segments": [[text, M or None], ...]}]: tags, then a message's own M, then the default."""
    tag_m = boost["multiplier"]
    default_m = tag_m if request.instaboost is not None else None
    parsed = [(m.role, m.pieces(), m.boost) for m in request.messages]
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
        # A last assistant turn is continued: the template adds the generation prompt after it.
        out.append({"role": role, "segments": segments})
    return out


def chat_params(body: Any, settings: Settings, *, priority: str = "interactive") -> dict[str, Any]:
    """Validate an OpenAI chat-completions body; return the params a chat job stores (ValidationError lists all)."""
    r = validate_chat(body, settings)
    boost = (r.instaboost or InstaBoost.model_validate({}, context={"settings": settings})).resolved(settings)
    messages = _segments(r, boost)
    boosted = [t for m in messages for t, mult in m["segments"] if mult is not None]
    mults = [mult for m in messages for _, mult in m["segments"] if mult is not None]
    check_target(boost, mults)
    last_user = next((m for m in reversed(messages) if m["role"] == "user"), messages[-1])
    layer_mode = boost["layers"] if isinstance(boost["layers"], str) else "all"
    so = r.stream_options
    return {
        "kind": "chat", "model": r.model,
        # The job API's fields, so pages, lists and the CSV show a chat job like any other.
        "instruction": "\n".join(boosted), "query": "".join(t for t, _ in last_user["segments"]),
        "multipliers": [max(mults, key=lambda x: abs(x - 1)) if mults else 1.0], "layer_modes": [layer_mode],
        "start_layer": boost["start_layer"], "num_middle_layers": boost["num_middle_layers"],
        "head_boost_percentage": boost["head_boost_percentage"], "seed": r.seed,
        "placement": boost["placement"], "engine": settings.instaboost.engine,
        "max_new_tokens": r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens,
        "temperature": r.temperature, "top_p": r.top_p, "attention": False,
        # Chat only.
        "messages": messages, "layers": boost["layers"], "heads": boost["heads"], "stop": r.stop or [],
        "scope": boost["scope"], "target_mass": boost["target_mass"],
        "stream": bool(r.stream), "include_usage": bool(so and so.get("include_usage")),
        "logprobs": (r.top_logprobs or 0) if r.logprobs else None,
        "priority": priority if priority in PRIORITIES else "interactive",
        "n": r.n, **{name: getattr(r, name) for name in SAMPLING_FIELDS}, "logit_bias": r.logit_bias or {},
        "user": r.user, "metadata": r.metadata,
        # Stored only when the output is constrained, so a plain chat job's params stay as they were.
        **({"response_format": r.response_format} if r.response_format else {}),
    }


def check_target(boost: Mapping[str, Any], multipliers) -> None:
    """Refuse instaboost.target_mass with a span de-boosted (M < 1): the target raises the share M lowers."""
    low = [m for m in multipliers if m < 1.0]
    if boost.get("target_mass") is not None and low:
        message = (f"instaboost.target_mass raises the boosted spans' attention share while M = "
                   f"{', '.join(format(m, 'g') for m in low)} (below 1) lowers it: boost with M >= 1 or leave "
                   "target_mass null")
        raise ValidationError("invalid request: fix instaboost.target_mass", field="instaboost.target_mass",
                              errors=[{"field": "instaboost.target_mass", "message": message}])


def is_chat(params: Mapping[str, Any]) -> bool:
    """Return whether stored job params are a chat job's."""
    return isinstance(params, Mapping) and params.get("kind") == "chat"


def generation_request(params: Mapping[str, Any], choice: int = 0):
    """Return the engine's GenerationRequest for a stored chat job's choice (its own seed, choice_seed)."""
    messages = [ChatMessage(m["role"], tuple(Segment(t, mult) for t, mult in m["segments"]))
                for m in params["messages"]]
    heads = {int(k): tuple(v) for k, v in params["heads"].items()} if params.get("heads") else None
    layers = params["layers"] if isinstance(params["layers"], str) else tuple(params["layers"])
    spec = BoostSpec(multiplier=1.0, layers=layers, start_layer=params["start_layer"],
                     num_middle_layers=params["num_middle_layers"],
                     head_fraction=params["head_boost_percentage"] / 100.0, heads=heads, seed=params["seed"],
                     placement=params["placement"], scope=params.get("scope") or "all",
                     target_mass=params.get("target_mass"))  # jobs stored before these lack them
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
                       "placement": job.params.get("placement"), "scope": job.params.get("scope") or "all",
                       "target_mass": job.params.get("target_mass"), "user": job.params.get("user"),
                       "metadata": job.params.get("metadata")},
    }


__all__ = ["chat_params", "is_chat", "generation_request", "choice_variant", "choice_index", "choice_variants", "split_boost_tags", "CHAT_VARIANT", "CHAT_ENDPOINT",
           "completion_body", "fingerprint"]
