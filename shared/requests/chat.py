"""The OpenAI chat-completions request (POST /v1/chat/completions, a batch line's body) with its instaboost extension.

Declared once as pydantic models: ``InstaBoost`` (the boost in ``extra_body``, also read by /v1/completions and
/v1/responses), ``ChatMessage`` and ``ChatCompletionRequest``. The decoding fields are the job request's own types
(shared.requests.job), so bounds and messages agree with /api/jobs. shared.chat turns a validated request into the
params a chat job stores.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from shared.errors import ValidationError
from shared.logprobs import MAX_TOP_LOGPROBS
from shared.requests import job
from shared.requests import types as t
from shared.requests.errors import FIELD as F, context, fail, not_an_object, problems, raise_problems, relocate
from shared.response_format import parse as parse_response_format
from shared.spec import CHAT_ROLES, MAX_STOP
from shared.validation import brief

BOOST_OPEN, BOOST_CLOSE = "<boost>", "</boost>"
ROLE_ALIASES = {"developer": "system"}
MAX_USER_CHARS = 512
MAX_METADATA = 16  # pairs; keys <= 64 characters, values <= 512, as OpenAI allows
TOKEN_ID = re.compile("[0-9]{1,9}")  # a logit_bias key, as the OpenAPI document's pattern says
# Why a neutral field at another value is refused, where "not supported" says too little.
REFUSED_WHY = {"tools": "the served model's chat template declares no tool support (SmolLM2's has none): call "
                        "tools client-side, or leave tools out",
               "tool_choice": "the served model's chat template declares no tool support: leave tool_choice out",
               "modalities": "this server generates text only: give [\"text\"] or leave it out",
               # OpenAI fields with no neutral value here: always refused, saying why.
               "audio": "this server generates text only: leave audio out",
               "functions": "the served model's chat template declares no tool (function) support",
               "function_call": "the served model's chat template declares no tool (function) support",
               "web_search_options": "this server has no web search: leave web_search_options out"}


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


def storable(value: str) -> bool:
    """Return whether the text can be stored: no NUL (PostgreSQL), no lone surrogate (UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def flag(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise fail(f"{F} must be a boolean, got {brief(value)}")
    return value


Flag = Annotated[Optional[bool], BeforeValidator(flag)]


# -- the boost -----------------------------------------------------------------------------------------------------


def _layer_key(k: Any) -> int | None:
    try:
        n = int(k)
    except (TypeError, ValueError):
        return None
    return n if 0 <= n <= 10_000 and str(n) == str(k).strip() else None


def _index(i: Any) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 10_000


def check_layers(value: Any) -> str | list[int] | None:
    if value is None or (isinstance(value, str) and value in t.LAYER_MODES):
        return value
    if isinstance(value, list) and value and len(value) <= 10_000 and all(map(_index, value)):
        return sorted(set(value))
    raise fail(f"{F} must be 'all', 'middle' or a non-empty list of layer indices >= 0; got {brief(value)}")


_heads_number = t.number_check(t.rule_of(job.JobFields.model_fields["head_boost_percentage"]))


def check_heads(value: Any, info: ValidationInfo) -> float | dict[str, list[int]] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _heads_number(value, info)
    if isinstance(value, Mapping) and value and all(
            _layer_key(k) is not None and isinstance(hs, list) and hs and all(map(_index, hs))
            for k, hs in value.items()):
        return {str(_layer_key(k)): sorted(set(hs)) for k, hs in value.items()}
    raise fail(f"{F} must be a percentage of heads in (0, 100] or {{\"layer\": [head indices]}}; got {brief(value)}")


class InstaBoost(t.Request):
    """The boost (extra_body instaboost): without it nothing is boosted unless a message marks spans."""

    BOOST_KEYS: ClassVar[tuple[str, ...]] = ("multiplier", "layers", "start_layer", "num_middle_layers", "heads",
                                             "placement")

    multiplier: job.Multiplier = t.meta("M", "The attention multiplier on the boosted spans (1 = no boost).",
                                        setting="instaboost.multiplier")
    layers: Annotated[Optional[str | list[int]], BeforeValidator(check_layers)] = Field(
        None, description="all, middle (start_layer, num_middle_layers) or explicit layer indices; default: the "
        "setting instaboost.boost_middle_layers_only.")
    start_layer: job.StartLayer = t.meta("Start layer", "First layer of the middle block.",
                                         setting="instaboost.start_layer")
    num_middle_layers: job.NumMiddleLayers = t.meta("Middle layers", "How many layers the middle block spans.",
                                                    setting="instaboost.num_middle_layers")
    heads: Annotated[Optional[float | dict[str, list[int]]], BeforeValidator(check_heads)] = Field(
        None, description="A percentage of heads in (0, 100] boosted per layer, or {\"layer\": [head indices]}.")
    placement: job.Placement = t.meta("Placement", "Where the instruction goes (system, prefix, raw).",
                                      setting="instaboost.placement")

    def resolved(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Return the boost's settings as a chat job stores them (layers, head percentage, explicit heads)."""
        layers = self.layers if self.layers is not None else \
            "middle" if settings["instaboost.boost_middle_layers_only"] else "all"
        pct = self.heads if isinstance(self.heads, float) else settings["instaboost.head_boost_percentage"]
        return {"multiplier": self.multiplier, "layers": layers, "start_layer": self.start_layer,
                "num_middle_layers": self.num_middle_layers, "head_boost_percentage": pct,
                "heads": self.heads if isinstance(self.heads, dict) else None, "placement": self.placement}


def boost_object(value: Any) -> Any:
    if value is not None and not isinstance(value, Mapping):
        raise fail(f"{F} must be an object: {{multiplier, layers, start_layer, num_middle_layers, heads, placement}}")
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


# -- the other OpenAI fields ---------------------------------------------------------------------------------------


def check_stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_STOP or not all(isinstance(s, str) and s for s in items):
        raise fail(f"stop must be a non-empty string or a list of up to {MAX_STOP} non-empty strings; got "
                   f"{brief(value)}")
    if any(len(s) > 200 for s in items):
        raise fail("each stop string must be at most 200 characters")
    return list(dict.fromkeys(items))


Stop = Annotated[Optional[str | list[str]], BeforeValidator(check_stop)]


def check_logit_bias(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > t.MAX_LOGIT_BIAS:
        raise fail(f"logit_bias must be an object of at most {t.MAX_LOGIT_BIAS} entries {{\"token id\": bias}}; got "
                   f"{brief(value)}")
    out = {}
    for k, b in value.items():
        key = str(k)
        if not TOKEN_ID.fullmatch(key):
            raise fail(f"logit_bias keys must be token ids (integers >= 0 as text); got {brief(k)}")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise fail(f"logit_bias[{key}] must be a number in [-100, 100]; got {brief(b)}")
        out[str(int(key))] = float(b)
    return out


def check_user(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > MAX_USER_CHARS or not storable(value)):
        raise fail(f"user must be a string of at most {MAX_USER_CHARS} characters (valid text without NUL); got "
                   f"{brief(value)}")
    return value


def check_metadata(value: Any) -> dict[str, str] | None:
    if value is not None and (not isinstance(value, Mapping) or len(value) > MAX_METADATA or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(x, str) and len(x) <= 512 and storable(k + x)
            for k, x in value.items())):
        raise fail(f"metadata must be an object of at most {MAX_METADATA} string pairs (keys up to 64 characters, "
                   f"values up to 512, valid text without NUL); got {brief(value)}")
    return dict(value) if value is not None else None


def check_stream_options(value: Any) -> Any:
    if value is not None and (not isinstance(value, Mapping) or any(k != "include_usage" for k in value)):
        raise fail("stream_options may only hold include_usage")
    return value


def check_top_logprobs(top: Any, info: ValidationInfo) -> int | None:
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise fail(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {brief(top)}")
    if top and not info.data.get("logprobs"):
        raise fail("top_logprobs needs logprobs: true")
    return top


def check_response_format(value: Any, info: ValidationInfo) -> dict | None:
    try:
        return parse_response_format(value, t.setting(info, "limits.max_text_chars"))
    except ValidationError as exc:
        e = (exc.errors or [{"field": exc.field or "response_format", "message": exc.message}])[0]
        raise fail(e["message"], field=e["field"]) from None


def neutral(key: str, allowed: tuple | None) -> Any:
    """An OpenAI field accepted only at a value that changes nothing here (allowed; None: any value)."""
    def check(value: Any) -> Any:
        # A boolean is not a number here: false is not 0.
        if allowed is not None and not any(value == a and isinstance(value, bool) == isinstance(a, bool)
                                           for a in allowed):
            raise fail(f"{key}: {REFUSED_WHY[key]}" if key in REFUSED_WHY else
                       f"{key} is not supported by this server (give {brief(allowed[0])} or leave it out)")
        return value

    return Annotated[Any, BeforeValidator(check), Field(None, description="Accepted only at a value that changes "
                                                        "nothing here" + (f": {allowed!r}." if allowed else "."))]


class ChatCompletionRequest(t.Request):
    """An OpenAI chat-completions body (the fields this server uses, and the ones accepted at neutral values)."""

    own_missing: ClassVar[tuple[str, ...]] = ("model",)
    MISSING: ClassVar[dict[str, str]] = {"model": "model is required: a model a live worker serves (see GET /v1/models)"}

    # Accepted only at the value that changes nothing here (README, "/v1 fields").
    store: neutral("store", None)
    parallel_tool_calls: neutral("parallel_tool_calls", None)
    service_tier: neutral("service_tier", None)
    tools: neutral("tools", (None,))
    tool_choice: neutral("tool_choice", (None, "none"))
    reasoning_effort: neutral("reasoning_effort", None)
    prediction: neutral("prediction", (None,))
    modalities: neutral("modalities", (None, ["text"]))
    prompt_cache_key: neutral("prompt_cache_key", None)
    safety_identifier: neutral("safety_identifier", None)
    verbosity: neutral("verbosity", None)

    model: job.ModelName = t.meta("Model", "A model a live worker serves (see GET /v1/models).", required=True)
    n: t.integer(1, hi_setting="v1.max_n", optional=True) = t.meta(
        "Choices", "How many choices to generate (each a row of the job, sampled with seed + i).", default=1)
    stream: Flag = Field(False, description="Stream the text as server-sent events as it is generated.")
    stream_options: Annotated[Optional[dict[str, Any]], BeforeValidator(check_stream_options)] = Field(
        None, description="{include_usage}: end the stream with a usage chunk.")
    max_completion_tokens: job.MaxNewTokens = Field(None, description="New tokens at most (wins over max_tokens).")
    max_tokens: job.MaxNewTokens = t.meta("Max tokens", "New tokens at most.", setting="generation.max_new_tokens")
    temperature: job.Temperature = t.meta("Temperature", "0 is greedy.", setting="generation.temperature")
    top_p: job.TopP = t.meta("Top p", "Nucleus sampling threshold.", setting="generation.top_p")
    seed: job.Seed = t.meta("Seed", "Sampling seed (choice i samples with seed + i).", setting="random_seed")
    top_k: job.TopK = t.meta("Top k", "0 = off.", default=0)
    min_p: job.MinP = t.meta("Min p", "0 = off.", default=0.0)
    repetition_penalty: job.RepetitionPenalty = t.meta("Repetition penalty", "1 = off.", default=1.0)
    presence_penalty: job.Penalty = t.meta("Presence penalty", "0 = off.", default=0.0)
    frequency_penalty: job.Penalty = t.meta("Frequency penalty", "0 = off.", default=0.0)
    logit_bias: Annotated[Optional[dict[str, float]], BeforeValidator(check_logit_bias)] = Field(
        None, description=f"{{token id: bias in [-100, 100]}} added to those tokens' logits, at most "
        f"{t.MAX_LOGIT_BIAS} entries (-100 in effect bans a token, 100 forces it).")
    user: Annotated[Optional[str], BeforeValidator(check_user)] = Field(
        None, description="The end user's id, as OpenAI takes it: stored with the job, changes nothing.")
    metadata: Annotated[Optional[dict[str, str]], BeforeValidator(check_metadata)] = Field(
        None, description="Up to 16 string pairs (keys <= 64, values <= 512 characters) stored with the job.")
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


def validate_chat(body: Any, settings: Mapping[str, Any]) -> ChatCompletionRequest:
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
