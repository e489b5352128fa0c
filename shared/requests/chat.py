"""The OpenAI chat-completions request (POST /v1/chat/completions, a batch line's body) with its instaboost extension.

Declared once as pydantic models: ``InstaBoost`` (the boost in ``extra_body``, also read by /v1/completions and
/v1/responses), ``ChatMessage`` and ``ChatCompletionRequest``. The decoding fields are the job request's own types
(shared.requests.job), so bounds and messages agree with /api/jobs. shared.chat turns a validated request into the
params a chat job stores.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from shared.errors import ValidationError
from shared.logprobs import MAX_TOP_LOGPROBS
from shared.requests import job
from shared.requests import base
from shared.requests import types as t
from shared.requests.errors import FIELD as F, context, fail, not_an_object, problems, raise_problems, relocate
from shared.requests.openai import (REFUSED_WHY, Flag, Stop, check_logit_bias, check_metadata,
                                    check_response_format, check_stream_options, check_top_logprobs, check_user,
                                    neutral)
from shared.settings import Settings
from shared.spec import CHAT_ROLES
from shared.validation import brief

BOOST_OPEN, BOOST_CLOSE = "<boost>", "</boost>"
ROLE_ALIASES = {"developer": "system"}
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


# -- the boost -----------------------------------------------------------------------------------------------------


def _layer_key(k: Any) -> int | None:
    try:
        n = int(k)
    except (TypeError, ValueError):
        return None
    return n if 0 <= n <= 10_000 and str(n) == str(k).strip() else None


_heads_number = t.number_check(t.rule_of(job.JobFields.model_fields["head_boost_percentage"]))


def check_heads(value: Any, info: ValidationInfo) -> float | dict[str, list[int]] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _heads_number(value, info)
    if isinstance(value, Mapping) and value and all(
            _layer_key(k) is not None and isinstance(hs, list) and hs and all(map(t._index, hs))
            for k, hs in value.items()):
        return {str(_layer_key(k)): sorted(set(hs)) for k, hs in value.items()}
    raise fail(f"{F} must be a percentage of heads in (0, 100] or {{\"layer\": [head indices]}}; got {brief(value)}")


class InstaBoost(base.Request):
    """The boost (extra_body instaboost): without it nothing is boosted unless a message marks spans."""

    validate_defaults: ClassVar[bool] = False
    BOOST_KEYS: ClassVar[tuple[str, ...]] = ("multiplier", "layers", "start_layer", "num_middle_layers", "heads",
                                             "placement", "scope", "target_mass")

    multiplier: job.Multiplier = base.meta("M", "The attention multiplier on the boosted spans (1 = no boost).",
                                        setting="instaboost.multiplier")
    layers: t.Layers = Field(
        None, description="all, middle (start_layer, num_middle_layers) or explicit layer indices; default: the "
        "setting instaboost.boost_middle_layers_only.")
    start_layer: job.StartLayer = base.meta("Start layer", "First layer of the middle block.",
                                         setting="instaboost.start_layer")
    num_middle_layers: job.NumMiddleLayers = base.meta("Middle layers", "How many layers the middle block spans.",
                                                    setting="instaboost.num_middle_layers")
    heads: Annotated[Optional[float | dict[str, list[int]]], BeforeValidator(check_heads)] = Field(
        None, description="A percentage of heads in (0, 100] boosted per layer, or {\"layer\": [head indices]}.")
    placement: job.Placement = base.meta("Placement", "Where the instruction goes (system, prefix, raw).",
                                      setting="instaboost.placement")
    scope: job.Scope = job.same("scope")
    target_mass: job.TargetMass = job.same("target_mass")

    @model_validator(mode="before")
    @classmethod
    def _target_alone(cls, data: Any) -> Any:
        """A target mass without a multiplier is the target-mass mode: the spans' default M is 1."""
        if isinstance(data, Mapping) and data.get("target_mass") is not None and data.get("multiplier") is None:
            return {**data, "multiplier": 1.0}
        return data

    def resolved(self, settings: Settings) -> dict[str, Any]:
        """Return the boost's settings as a chat job stores them (layers, head percentage, explicit heads)."""
        layers = self.layers if self.layers is not None else \
            "middle" if settings.instaboost.boost_middle_layers_only else "all"
        pct = self.heads if isinstance(self.heads, float) else settings.instaboost.head_boost_percentage
        return {"multiplier": self.multiplier, "layers": layers, "start_layer": self.start_layer,
                "num_middle_layers": self.num_middle_layers, "head_boost_percentage": pct,
                "heads": self.heads if isinstance(self.heads, dict) else None, "placement": self.placement,
                "scope": self.scope, "target_mass": self.target_mass}


def boost_object(value: Any) -> Any:
    if value is not None and not isinstance(value, Mapping):
        raise fail(f"{F} must be an object: {{multiplier, layers, start_layer, num_middle_layers, heads, placement, "
                   "scope, target_mass}")
    return value


# -- messages ------------------------------------------------------------------------------------------------------

_multiplier = t.number_check(t.rule_of(job.JobFields.model_fields["multipliers"]))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        for k, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise fail(f"{F}.content[{k}] must be a text part {{\"type\": \"text\", \"text\": ...}}; only text "
                           "is supported", at=f".content[{k}]")
        return "".join(part["text"] for part in content)
    raise fail(f"{F}.content must be a string or a list of text parts, got {brief(content)}", at=".content")


def check_message(m: Any, info: ValidationInfo) -> Any:
    """Check one message as the API always has (one error per message); return it with its text joined."""
    if not isinstance(m, Mapping):
        raise fail(f"{F} must be an object with role and content")
    unknown = [k for k in m if k not in ("role", "content", "name", "boost")]
    if unknown:
        raise fail(f"{F} has unknown keys {', '.join(map(brief, unknown[:5]))}; allowed: role, content, name, boost")
    role = m.get("role")
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in CHAT_ROLES:
        raise fail(f"{F}.role must be one of system, developer, user, assistant; got {brief(m.get('role'))}",
                   at=".role")
    text = _content_text(m.get("content"))
    if "\x00" in text:
        raise fail(f"{F}.content must not contain NUL characters", at=".content")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(f"{F}.content must be valid Unicode text (it holds a lone surrogate)", at=".content") from None
    try:
        split_boost_tags(text, F + ".content")
    except ValidationError as exc:
        raise fail(exc.message, at=".content") from None
    own = None
    if m.get("boost") is not None:
        try:
            own = _multiplier(m["boost"], info)
        except PydanticCustomError as exc:
            raise relocate(exc, ".boost") from None
        if not text:
            raise fail(f"{F} has a boost but no text to boost", at=".boost")
    name = m.get("name")
    return {"role": role, "content": text, "name": name if isinstance(name, str) else None, "boost": own}


class TextPart(BaseModel):
    """A text part of a message's content."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message; <boost>…</boost> in its text, or its own boost M, marks what is boosted."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: Optional[str] = None
    boost: job.Multiplier = Field(None, description="Boost this whole message with its own M.")

    def pieces(self) -> list[tuple[str, bool]]:
        """Return the text's [(piece, boosted)] (its tags checked when validated)."""
        return split_boost_tags(self.content if isinstance(self.content, str) else "", "content")


def check_messages(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise fail(f"{F} must be a non-empty array of {{role, content}} objects")
    return value


def messages_total(messages: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
    total = sum(len(m.content) for m in messages)
    limit = t.setting(info, "limits.max_text_chars")
    if total > limit:
        raise fail(f"the messages hold {total} characters; at most {limit} are allowed")
    if not any(m.content for m in messages):
        raise fail("the messages hold no text")
    return messages


class ChatCompletionRequest(base.Request):
    """An OpenAI chat-completions body (the fields this server uses, and the ones accepted at neutral values)."""

    own_missing: ClassVar[tuple[str, ...]] = ("model",)
    validate_defaults: ClassVar[bool] = False
    MISSING: ClassVar[dict[str, str]] = {"model": "model is required: a model a live worker serves (see GET /v1/models)"}

    # Accepted only at the value that changes nothing here (README, "/v1 fields").
    store: neutral("store")
    parallel_tool_calls: neutral("parallel_tool_calls")
    service_tier: neutral("service_tier")
    tools: neutral("tools")
    tool_choice: neutral("tool_choice")
    reasoning_effort: neutral("reasoning_effort")
    prediction: neutral("prediction")
    modalities: neutral("modalities")
    prompt_cache_key: neutral("prompt_cache_key")
    safety_identifier: neutral("safety_identifier")
    verbosity: neutral("verbosity")

    model: t.model_name() = base.meta("Model", "A model a live worker serves (see GET /v1/models).", required=True)
    n: t.integer(1, hi_setting="v1.max_n", optional=True) = base.meta(
        "Choices", "How many choices to generate (each a row of the job, sampled with seed + i).", default=1)
    stream: Flag = Field(False, description="Stream the text as server-sent events as it is generated.")
    stream_options: Annotated[Optional[dict[str, Any]], BeforeValidator(check_stream_options)] = Field(
        None, description="{include_usage}: end the stream with a usage chunk.")
    max_completion_tokens: job.MaxNewTokens = Field(None, description="New tokens at most (wins over max_tokens).")
    max_tokens: job.MaxNewTokens = base.meta("Max tokens", "New tokens at most.", setting="generation.max_new_tokens")
    temperature: job.Temperature = base.meta("Temperature", "0 is greedy.", setting="generation.temperature")
    top_p: job.TopP = base.meta("Top p", "Nucleus sampling threshold.", setting="generation.top_p")
    seed: job.Seed = base.meta("Seed", "Sampling seed (choice i samples with seed + i).", setting="random_seed")
    top_k: job.TopK = base.meta("Top k", "0 = off.", default=0)
    min_p: job.MinP = base.meta("Min p", "0 = off.", default=0.0)
    repetition_penalty: job.RepetitionPenalty = base.meta("Repetition penalty", "1 = off.", default=1.0)
    presence_penalty: job.Penalty = base.meta("Presence penalty", "0 = off.", default=0.0)
    frequency_penalty: job.Penalty = base.meta("Frequency penalty", "0 = off.", default=0.0)
    logit_bias: Annotated[Optional[dict[str, float]], BeforeValidator(check_logit_bias)] = Field(
        None, description=f"{{token id: bias in [-100, 100]}} added to those tokens' logits, at most "
        f"{t.MAX_LOGIT_BIAS} entries (-100 in effect bans a token, 100 forces it).")
    user: Annotated[Optional[str], BeforeValidator(check_user)] = Field(
        None, description="The end user's id, as OpenAI takes it: stored with the job, changes nothing.")
    metadata: Annotated[Optional[dict[str, str]], BeforeValidator(check_metadata)] = Field(
        None, description="Up to 16 string pairs (keys <= 64, values <= 512 characters) stored with the job and "
        "returned.")
    logprobs: Flag = Field(None, description="Return each output token's log probability.")
    top_logprobs: Annotated[Optional[int], BeforeValidator(check_top_logprobs)] = Field(
        None, description=f"0 to {MAX_TOP_LOGPROBS} most likely tokens per position (needs logprobs: true).")
    instaboost: Annotated[Optional[InstaBoost], BeforeValidator(boost_object)] = Field(
        None, description="The boost: {multiplier, layers, start_layer, num_middle_layers, heads, placement}; "
        "without it nothing is boosted unless a message marks spans.")
    stop: Stop = Field(None, description="Up to 4 stop strings; generation ends at the first, which the text omits.")
    response_format: Annotated[Optional[dict[str, Any]], BeforeValidator(check_response_format)] = Field(
        None, description="text, json_object or json_schema: the output is constrained while decoding.")
    messages: Annotated[list[Annotated[ChatMessage, BeforeValidator(check_message)]],
                        BeforeValidator(check_messages), AfterValidator(messages_total)] = Field(
        description="OpenAI chat messages; boosted spans are marked <boost>…</boost> in any message, by a "
        "message's own \"boost\": M, or default to the system message(s).")


def unknown_chat_field(key: str, where: str) -> str:
    """Return the message for an unknown key of a chat body (or of its instaboost object)."""
    if where == "instaboost":
        return f"unknown field instaboost.{brief(key)}; allowed: {', '.join(InstaBoost.BOOST_KEYS)}"
    return f"{key}: {REFUSED_WHY[key]}" if key in REFUSED_WHY else f"unrecognized request argument {brief(key)}"


def validate_chat(body: Any, settings: Settings) -> ChatCompletionRequest:
    """Return the validated chat request; raise one ValidationError listing every problem, in today's words.

    The messages' problems are reported once the rest is valid (their boost defaults depend on a valid boost).
    """
    if not isinstance(body, Mapping):
        raise not_an_object("model and messages")
    try:
        return ChatCompletionRequest.model_validate(body, strict=True, context=context(settings, True))
    except pydantic.ValidationError as exc:
        errors = problems(exc, unknown_chat_field, missing=ChatCompletionRequest.MISSING)
    others = [e for e in errors if not e["field"].startswith("messages")]
    raise_problems(others or errors, "invalid request")
    raise AssertionError("unreachable")
