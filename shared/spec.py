"""The boost specification: one validated dataclass shared by both engines, the web app and the CLI.

Pure Python (no torch) so the web layer can validate jobs without loading an ML stack.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from shared.errors import JobErrorCode, ValidationError
from shared.fields import MAX_LOGIT_BIAS, PLACEMENTS
from shared.requests.job import check_multiplier, check_values, parse_layers  # noqa: F401 (the engine's API)


# Target mass: the bias is clamped here so its factor e^bias stays finite in float32 in both engines; a share
# below p * e^-60 (~1e-26 p) is raised by e^60 only.
MAX_TARGET_LOG_FACTOR = 60.0


def target_log_factor(share: float, target: float) -> float:
    """Return the target-mass bias for a head whose instruction share is `share`: log(p(1-a)/(a(1-p))) below p, else 0.

    Adding it to every instruction key's score makes the share exactly p (a share of 0, no instruction key in
    view, has nothing to raise). The engines compute the same on tensors (worker.engine.boost).
    """
    if not 0.0 < share < target:
        return 0.0
    bias = math.log(target) + math.log1p(-share) - math.log(share) - math.log1p(-target)
    return min(bias, MAX_TARGET_LOG_FACTOR)


@dataclass(frozen=True)
class BoostSpec:
    """What to boost and how much.

    multiplier: M > 0; the attention weight on instruction keys is multiplied by M and each row renormalized.
    layers: "all", "middle" (start_layer .. start_layer + num_middle_layers - 1) or explicit indices.
    head_fraction: share of heads boosted in each boosted layer, chosen per layer with ``seed``.
    heads: explicit heads per layer; overrides head_fraction for the layers it names.
    placement: where the instruction sits in the prompt (system, prefix, raw).
    scope: which queries are boosted: "all", "generated" (the decoding queries: the prompt's last position and
        each generated token's, i.e. those that predict an output token) or "prompt" (the prompt's others).
    target_mass: p in (0, 1) or None. After M, each boosted head's attention share on the boosted keys is raised
        to at least p, per query: a bias log(p(1-a)/(a(1-p))) on those keys when the share a is below p. With
        M = 1 this is the target-mass mode alone; it cannot be combined with M < 1 (which lowers the share).
    boilerplate_multiplier: M_b in (0, 1]; 1 = off. Below 1 it de-boosts the boilerplate: the template tokens of
        the instruction's turn that are not the instruction (placement system: the system turn's header and end,
        position 0 left out: see worker.engine.prompt.boilerplate_spans), as one more span with M_b on the same
        layers, heads and queries. A target mass counts only the boosted spans (M >= 1), never the boilerplate.
    """

    multiplier: float = 1.0
    layers: str | tuple[int, ...] = "all"
    start_layer: int = 8
    num_middle_layers: int = 5
    head_fraction: float = 1.0
    heads: Mapping[int, tuple[int, ...]] | None = None
    seed: int = 42
    placement: str = "system"
    scope: str = "all"
    target_mass: float | None = None
    boilerplate_multiplier: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "multiplier", check_multiplier(self.multiplier))
        check_values({"scope": self.scope, "target_mass": self.target_mass,  # the API's bounds and messages
                      "boilerplate_multiplier": self.boilerplate_multiplier})
        object.__setattr__(self, "boilerplate_multiplier",  # None: off (params stored before it lack it)
                           1.0 if self.boilerplate_multiplier is None else float(self.boilerplate_multiplier))
        if self.target_mass is not None:
            object.__setattr__(self, "target_mass", float(self.target_mass))
            check_target_with(self.multiplier, self.target_mass)
        object.__setattr__(self, "layers", parse_layers(self.layers))
        check_values({"start_layer": self.start_layer, "num_middle_layers": self.num_middle_layers,
                      "seed": self.seed})
        for name in ("start_layer", "num_middle_layers", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        hf = self.head_fraction
        if isinstance(hf, bool) or not isinstance(hf, (int, float)) or not (0 < float(hf) <= 1):
            raise ValidationError(
                f"head_fraction must be in (0, 1] (head_boost_percentage in (0, 100]), got {hf!r}",
                field="head_fraction")
        object.__setattr__(self, "head_fraction", float(hf))
        if self.placement not in PLACEMENTS:
            raise ValidationError(f"placement must be one of {', '.join(PLACEMENTS)}; got {self.placement!r}",
                                  field="placement")
        if self.heads is not None:
            clean = {}
            for layer, hs in dict(self.heads).items():
                hs = tuple(sorted(set(int(h) for h in hs)))
                if not hs or min(hs) < 0:
                    raise ValidationError(f"heads for layer {layer} must be non-negative indices", field="heads")
                clean[int(layer)] = hs
            object.__setattr__(self, "heads", clean)

    @property
    def is_identity(self) -> bool:
        return self.multiplier == 1.0 and self.target_mass is None and self.boilerplate_multiplier == 1.0

    def with_(self, **changes) -> "BoostSpec":
        """Return a copy with some fields changed (and validated again)."""
        return replace(self, **changes)

    def resolve_layers(self, n_layers: int) -> tuple[int, ...]:
        """Return the boosted layer indices for a model with n_layers layers."""
        if self.layers == "all":
            return tuple(range(n_layers))
        if self.layers == "middle":
            start, count = self.start_layer, self.num_middle_layers
            if start >= n_layers:
                raise ValidationError(
                    f"start_layer {start} is out of range: the model has {n_layers} layers (0..{n_layers - 1})",
                    field="start_layer", code=JobErrorCode.out_of_range)
            if start + count > n_layers:
                warnings.warn(f"middle block {start}+{count} clipped to the model's {n_layers} layers",
                              stacklevel=2)
                count = n_layers - start
            return tuple(range(start, start + count))
        bad = [i for i in self.layers if i >= n_layers]
        if bad:
            raise ValidationError(
                f"layers {bad} are out of range: the model has {n_layers} layers (0..{n_layers - 1})",
                field="layers", code=JobErrorCode.out_of_range)
        return tuple(self.layers)

    def resolve_heads(self, n_layers: int, n_heads: int) -> dict[int, tuple[int, ...]]:
        """Return {layer: boosted head indices} for every boosted layer."""
        return select_heads(self.resolve_layers(n_layers), n_heads, self.head_fraction, self.seed, self.heads)


def check_target_with(multiplier: float, target_mass: float | None, field_name: str = "target_mass") -> None:
    """Refuse a target mass together with a multiplier below 1: one lowers the share, the other raises it."""
    if target_mass is not None and multiplier < 1.0:
        raise ValidationError(f"{field_name} raises the instruction's attention share while multiplier {multiplier:g} "
                              "(below 1) lowers it: use multiplier >= 1 with a target mass, or leave target_mass "
                              "null", field=field_name)


def select_heads(layers: Sequence[int], n_heads: int, fraction: float, seed: int,
                 explicit: Mapping[int, Sequence[int]] | None = None) -> dict[int, tuple[int, ...]]:
    """Choose the boosted heads per layer: all, a seeded fraction (Random(seed + layer)), or explicit."""
    out: dict[int, tuple[int, ...]] = {}
    for layer in layers:
        if explicit and layer in explicit:
            hs = tuple(explicit[layer])
            if max(hs) >= n_heads:
                raise ValidationError(f"head {max(hs)} in layer {layer} is out of range: the model has "
                                      f"{n_heads} heads (0..{n_heads - 1})", field="heads",
                                      code=JobErrorCode.out_of_range)
        elif fraction >= 1.0:
            hs = tuple(range(n_heads))
        else:
            k = max(1, round(fraction * n_heads))
            hs = tuple(sorted(random.Random(seed + layer).sample(range(n_heads), k)))
        out[layer] = hs
    return out


MAX_STOP = 4  # stop strings per request, as OpenAI's API allows


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings shared by every variant of a job."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 42
    stop: tuple[str, ...] = ()  # generation ends at the first of these strings, which the text then omits
    # Sampling extras, applied per row by worker.engine.logits; the defaults change nothing.
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100]) pairs

    def __post_init__(self):
        # 0 new tokens is a prompt-scoring row (a completion with max_tokens 0): its prompt's logprobs only.
        check_values({**({"max_new_tokens": self.max_new_tokens} if self.max_new_tokens != 0 else {}),
                      "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "top_k": self.top_k, "min_p": self.min_p,
                      "repetition_penalty": self.repetition_penalty, "presence_penalty": self.presence_penalty,
                      "frequency_penalty": self.frequency_penalty})
        object.__setattr__(self, "top_k", int(self.top_k))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias
        try:
            bias = tuple(sorted((int(k), float(v)) for k, v in bias))
        except (TypeError, ValueError):
            raise ValidationError("logit_bias must map token ids to numbers", field="logit_bias") from None
        if len(bias) > MAX_LOGIT_BIAS or any(k < 0 or not -100 <= v <= 100 for k, v in bias):
            raise ValidationError(f"logit_bias must map at most {MAX_LOGIT_BIAS} token ids >= 0 to biases in "
                                  "[-100, 100]", field="logit_bias")
        object.__setattr__(self, "logit_bias", bias)
        object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))
        object.__setattr__(self, "seed", int(self.seed))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stop) > MAX_STOP or not all(isinstance(x, str) and x for x in stop):
            raise ValidationError(f"stop must be up to {MAX_STOP} non-empty strings", field="stop")
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


CHAT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Segment:
    """A piece of a chat message's text; boosted by ``multiplier`` unless it is None."""

    text: str
    multiplier: float | None = None

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text:
            raise ValidationError("a message segment must be non-empty text", field="messages")
        if self.multiplier is not None:
            object.__setattr__(self, "multiplier", check_multiplier(self.multiplier))


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn: a role and its text as segments, some of them boosted."""

    role: str
    segments: tuple[Segment, ...]

    def __post_init__(self):
        if self.role not in CHAT_ROLES:
            raise ValidationError(f"role must be one of {', '.join(CHAT_ROLES)}; got {self.role!r}", field="role")
        object.__setattr__(self, "segments", tuple(self.segments))

    @property
    def content(self) -> str:
        return "".join(s.text for s in self.segments)

    @classmethod
    def plain(cls, role: str, text: str, multiplier: float | None = None) -> "ChatMessage":
        """Return a message of one segment (boosted as a whole when multiplier is given)."""
        return cls(role, (Segment(text, multiplier),) if text else ())


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: an instruction and a query (or chat messages), a boost and decoding settings.

    With ``messages`` the prompt is the chat itself and the boosted tokens are its boosted segments,
    each with its own M (``spec`` then gives the layers, heads and placement; its multiplier is unused).
    """

    instruction: str = ""
    query: str = ""
    spec: BoostSpec = field(default_factory=BoostSpec)
    params: GenerationParams = field(default_factory=GenerationParams)
    messages: tuple[ChatMessage, ...] | None = None
    grammar: str | None = None  # an llguidance grammar the output must match (shared.response_format)
    # A completion given as token ids: the prompt itself (no template), boosted at prompt_spans (start, end, M).
    prompt_ids: tuple[int, ...] | None = None
    prompt_spans: tuple[tuple[int, int, float], ...] = ()
    logprobs: int | None = None  # top-k logprobs of each generated token (0: the token's own only); None: none
    prompt_logprobs: int | None = None  # the same for every prompt token (a completion's echo)
    exact_text: bool = False  # a completion: the text as decoded, its whitespace kept (chat answers are stripped)

    def __post_init__(self):
        self._check_shape()
        if self.spec.target_mass is not None:
            for m in self.multipliers:
                check_target_with(m, self.spec.target_mass)

    def _check_shape(self) -> None:
        """Check that the request holds exactly one of: prompt ids, messages, or an instruction and a query."""
        if self.prompt_ids is not None:
            object.__setattr__(self, "prompt_ids", tuple(self.prompt_ids))
            object.__setattr__(self, "prompt_spans", tuple(tuple(s) for s in self.prompt_spans))
            if not self.prompt_ids:
                raise ValidationError("prompt must hold at least one token", field="prompt")
            return
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(self.messages))
            if not self.messages:
                raise ValidationError("messages must hold at least one message", field="messages")
            if self.instruction or self.query:
                raise ValidationError("give either messages or instruction and query, not both", field="messages")
            return
        for name in ("instruction", "query"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ValidationError(f"{name} must be a non-empty string", field=name)

    @classmethod
    def chat(cls, messages, spec: BoostSpec | None = None, params: GenerationParams | None = None,
             grammar: str | None = None) -> "GenerationRequest":
        """Return a request whose prompt is these chat messages (and whose output matches grammar, if given)."""
        return cls("", "", spec or BoostSpec(), params or GenerationParams(), messages=tuple(messages),
                   grammar=grammar)

    @property
    def multipliers(self) -> tuple[float, ...]:
        """Return the M of every boosted span (one for an instruction request)."""
        if self.prompt_ids is not None:
            return tuple(m for _, _, m in self.prompt_spans)
        if self.messages is None:
            return (self.spec.multiplier,)
        return tuple(s.multiplier for m in self.messages for s in m.segments if s.multiplier is not None)

    @property
    def is_identity(self) -> bool:
        """Return True when nothing is boosted (every M is 1, or no span at all, no target mass, no de-boost of the
        boilerplate; a completion given as token ids has no boilerplate)."""
        return (self.spec.target_mass is None and all(m == 1.0 for m in self.multipliers)
                and (self.spec.boilerplate_multiplier == 1.0 or self.prompt_ids is not None))


@dataclass
class GenerationResult:
    """What an engine returns per request."""

    text: str
    prompt_tokens: int
    output_tokens: int
    span: tuple[int, int]  # [start, end) token positions of the instruction (chat: all boosted spans' hull)
    span_text: str
    seconds: float  # generation wall time; in a batch, from the batch's start to this row's last token
    # {"unboosted": [per layer], "boosted": [per layer]}: attention mass on the instruction,
    # mean over heads and generated positions; None unless asked for.
    attention_mass: dict[str, list[float]] | None = None
    # Every boosted span as (start, end, M) in the unpadded prompt; one for an instruction request.
    spans: tuple[tuple[int, int, float], ...] = ()
    finish_reason: str = "stop"  # "stop" (end of sequence or a stop string) or "length" (max_new_tokens reached)
    # The placement the prompt actually used: system and prefix fall back to raw without a chat template,
    # system to prefix when the template rejects a system turn. Empty when unknown.
    placement: str = ""
    # {"prompt": section or None, "output": section or None}, a section {"tokens", "ids", "logprobs", "top"}
    # (worker.engine.logprobs); None unless the request asked for logprobs.
    logprobs: dict | None = None

    def to_dict(self) -> dict:
        return {"text": self.text, "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "span": list(self.span), "span_text": self.span_text, "seconds": round(self.seconds, 4),
                "attention_mass": self.attention_mass, "spans": [list(s) for s in self.spans],
                "finish_reason": self.finish_reason, "placement": self.placement}
