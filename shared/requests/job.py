"""The job request (POST /api/jobs, the submit form, the CLI), declared once as a pydantic model.

``JobFields`` is the declaration: each field's type and bounds (shared.requests.types), its help
(``description``), its form label (``title``) and, as ``json_schema_extra``, where its default comes from
(``x-setting``), its command-line flag (``x-cli``) and whether the form shows it under "Advanced settings".
shared.fields reads the form and CLI rows from it, shared.job_request.JobRequest adds what a job does with them,
and web.openapi documents it. Adding a job field is one field here (plus its use).
"""

from __future__ import annotations

from typing import Any, Mapping

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from shared.errors import ValidationError
from shared.requests import base
from shared.requests import types as t
from shared.requests.errors import context, fail, not_an_object, problems, raise_problems
from shared.settings import Settings
from shared.validation import brief

# The values a job shares with the other requests (chat, sweep): one type each, so bounds and messages agree.
MULTIPLIER_HINT = "1 = no boost, below 1 de-boosts"
Multiplier = t.number(0, t.MAX_MULTIPLIER, lo_open=True, hint=MULTIPLIER_HINT, optional=True)
ModelName = t.model_name(True)
StartLayer = t.integer(0, t.MAX_LAYER, optional=True)
NumMiddleLayers = t.integer(1, t.MAX_LAYER, optional=True)
HeadPercentage = t.number(0, 100, lo_open=True, optional=True)
Seed = t.integer(0, t.MAX_SEED, optional=True)
Placement = t.choice(t.PLACEMENTS, True)
Engine = t.choice(t.ENGINES, True)
MaxNewTokens = t.integer(1, hi_setting="limits.max_new_tokens", optional=True)
Temperature = t.number(0, 10, optional=True)
TopP = t.number(0, 1, lo_open=True, optional=True)
TopK = t.integer(0, t.MAX_TOP_K, optional=True)
MinP = t.number(0, 1, optional=True)
RepetitionPenalty = t.number(0, 10, lo_open=True, optional=True)
Penalty = t.number(-2, 2, optional=True)
Scope = t.choice(t.SCOPES, True)
TargetMass = t.number(0, 1, lo_open=True, hi_open=True, hint="the share of attention on the instruction",
                      optional=True)
BoilerplateMultiplier = t.number(0, 1, lo_open=True, hint="1 = off, below 1 de-boosts the instruction turn's "
                                 "template tokens", optional=True)


class JobFields(base.Request):
    """A job: what to generate (instruction, query, model) and how to boost, decode and score it."""

    model_config = ConfigDict(frozen=True, title="JobRequest")

    instruction: t.text() = base.meta("Instruction", "Text whose tokens get boosted (a system prompt, a guideline, "
                                      "a format rule).", cli="--instruction")
    query: t.text() = base.meta("Query", "The user's message the model answers.", cli="--query")
    model: ModelName = base.meta("Model", "A model a live worker serves (see /api/models): an alias, hub id, "
                                 "folder or .gguf path.", setting="model.name", cli="--model")
    multipliers: t.numbers(0, t.MAX_MULTIPLIER, lo_open=True, hint=MULTIPLIER_HINT, optional=True) = base.meta(
        "Multipliers M", "Attention multipliers M on the instruction tokens; one boosted variant per multiplier and "
        "layer mode (1 = no boost, below 1 de-boosts). The API and form also take 'recommended': the M the latest "
        "finished calibration sweep of the model recommends.", setting="instaboost.multiplier", cli="--multiplier",
        cli_short="-m")
    layer_modes: t.choices(t.LAYER_MODES, True) = base.meta(
        "Boost layers", "Which layers each multiplier boosts: all layers, the middle block, or both (one variant "
        "each).", default=t.LAYER_MODES)
    start_layer: StartLayer = base.meta(
        "Start layer (middle block)", "First layer of the middle block.", setting="instaboost.start_layer",
        advanced=True, cli="--start-layer")
    num_middle_layers: NumMiddleLayers = base.meta(
        "Middle layers", "How many layers the middle block spans.", setting="instaboost.num_middle_layers",
        advanced=True, cli="--num-middle-layers")
    head_boost_percentage: HeadPercentage = base.meta(
        "Heads boosted (%)", "Percentage of heads boosted in each boosted layer, chosen with the seed.",
        setting="instaboost.head_boost_percentage", advanced=True)
    seed: Seed = base.meta(
        "Seed", "Seed for head selection and sampling.", setting="random_seed", advanced=True, cli="--seed")
    placement: Placement = base.meta(
        "Instruction placement", "Where the instruction goes: the chat system turn, the start of the user turn, or "
        "no template.", setting="instaboost.placement", advanced=True, cli="--placement")
    scope: Scope = base.meta(
        "Boost scope", "Which queries the boost acts on: all (the prompt and the generated tokens), generated (only "
        "the decoding queries: the prompt's last position and each generated token's) or prompt (only the prompt's "
        "other positions).", default="all", advanced=True, cli="--scope")
    target_mass: TargetMass = base.meta(
        "Target mass p (empty = off)", "Instead of (or after) M, raise each boosted head's attention share on the "
        "instruction to at least this p, per query (null = off). Use with multipliers >= 1; left out, multipliers "
        "is [1]: the target alone.", advanced=True, cli="--target-mass", required=False)
    boilerplate_multiplier: BoilerplateMultiplier = base.meta(
        "Boilerplate M (1 = off)", "De-boost the instruction turn's template scaffolding (for placement system: "
        "the system turn's tokens around the instruction, such as <|im_start|>system and <|im_end|>, but not the "
        "first token) by this M in (0, 1], with the same layers, heads and scope as the boost (1 = off).",
        default=1.0, advanced=True, cli="--boilerplate-multiplier")
    engine: Engine = base.meta(
        "Engine", "fast (log-M bias inside fused attention) or transformerlens (the hook_pattern reference).",
        setting="instaboost.engine", advanced=True, cli="--engine")
    max_new_tokens: MaxNewTokens = base.meta(
        "Max new tokens", "New tokens per generation.", setting="generation.max_new_tokens", advanced=True,
        cli="--max-new-tokens")
    temperature: Temperature = base.meta(
        "Temperature (0 = greedy)", "Sampling temperature; 0 means greedy decoding.",
        setting="generation.temperature", advanced=True, cli="--temperature")
    top_p: TopP = base.meta(
        "Top p", "Nucleus sampling threshold (used when temperature > 0).", setting="generation.top_p",
        advanced=True, cli="--top-p")
    attention: t.boolean(True) = base.meta(
        "Attention analysis", "Also measure the attention mass on the instruction per layer, unboosted and boosted "
        "(two extra forward passes over each output).", default=False, advanced=True, cli="--attention")
    checks: t.checks(True) = base.meta(
        "Checks", "Pass/fail checks scored on every output: a JSON list of {type, value}, e.g. "
        '[{"type": "lowercase"}, {"type": "max_words", "value": 50}] (types: regex, not_contains_regex, '
        "contains, not_contains, json, lowercase, uppercase, max_words).", default=(), advanced=True)
    ifeval: t.ifeval(True) = base.meta(
        "IFEval checks", "IFEval instructions verified on every output (Google's checkers): a JSON list of ids or "
        '{id, kwargs}, e.g. ["change_case:english_lowercase", {"id": "length_constraints:number_words", '
        '"kwargs": {"num_words": 50, "relation": "less than"}}].', default=(), advanced=True)
    score_perplexity: t.boolean(True) = base.meta(
        "Score perplexity", "Score each output's perplexity under the same model without the boost (one extra "
        "batched forward pass); it feeds the 0-2 fluency score.", default=True, advanced=True)
    judge: t.boolean(True) = base.meta(
        "LLM judge", "Ask the LLM judge (settings judge.url, judge.model) whether each output follows the "
        "instruction and how fluent it is; off by default.", default=False, advanced=True)
    # Sampling extras (worker.engine.logits), also on /v1/chat/completions; each default changes nothing.
    top_k: TopK = base.meta(
        "Top k (0 = off)", "Sample only from the k most likely tokens (0 = off; used when temperature > 0).",
        default=0, advanced=True, cli="--top-k")
    min_p: MinP = base.meta(
        "Min p (0 = off)", "Drop tokens less likely than min_p times the most likely one (0 = off; used when "
        "temperature > 0).", default=0.0, advanced=True, cli="--min-p")
    repetition_penalty: RepetitionPenalty = base.meta(
        "Repetition penalty (1 = off)", "CTRL's repetition penalty over the prompt and the output: above 1 "
        "discourages repeating a token, below 1 encourages it (1 = off).", default=1.0, advanced=True,
        cli="--repetition-penalty")
    presence_penalty: Penalty = base.meta(
        "Presence penalty", "OpenAI's presence penalty: subtracted from the logit of every token already generated "
        "(0 = off).", default=0.0, advanced=True, cli="--presence-penalty")
    frequency_penalty: Penalty = base.meta(
        "Frequency penalty", "OpenAI's frequency penalty: subtracted once per time a token was already generated "
        "(0 = off).", default=0.0, advanced=True, cli="--frequency-penalty")

    @field_validator("judge")
    @classmethod
    def _judge_configured(cls, value: bool, info: ValidationInfo) -> bool:
        settings = (info.context or {}).get("settings")
        if value and settings is not None and not str(settings.judge.url or "").strip():
            raise fail("judge: no LLM judge is configured on this service (setting judge.url); leave judge off")
        return value

    @model_validator(mode="before")
    @classmethod
    def _target_alone(cls, data: Any) -> Any:
        """A target mass without multipliers is the target-mass mode: multipliers [1], no fixed M on top."""
        if isinstance(data, Mapping) and data.get("target_mass") not in (None, "") and \
                data.get("multipliers") in (None, ""):
            return {**data, "multipliers": [1.0]}
        return data

    @model_validator(mode="after")
    def _target_with_multipliers(self) -> "JobFields":
        low = [m for m in self.multipliers if m < 1.0]
        if self.target_mass is not None and low:
            raise fail(f"target_mass raises the instruction's attention share while multipliers "
                       f"{', '.join(format(m, 'g') for m in low)} (below 1) lower it: use multipliers >= 1 with a "
                       "target mass, or leave target_mass null", field="target_mass")
        return self

    @model_validator(mode="after")
    def _variant_count(self, info: ValidationInfo) -> "JobFields":
        settings = (info.context or {}).get("settings")
        count = 1 + len(self.multipliers) * len(self.layer_modes)
        limit = settings.limits.max_variants if settings is not None else count
        if count > limit:
            raise fail(f"{count} variants requested (1 original + {len(self.multipliers)} multipliers x "
                       f"{len(self.layer_modes)} layer modes); at most {limit} are allowed: drop some multipliers "
                       "or layer modes", field="multipliers")
        return self


FIELD_NAMES: tuple[str, ...] = tuple(JobFields.model_fields)


def same(name: str) -> Any:
    """Return a job field's declaration (default, label, help, flags) for another request that takes it too."""
    f = JobFields.model_fields[name]
    return Field(f.default, title=f.title, description=f.description, json_schema_extra=f.json_schema_extra)


def unknown_job_field(key: str, where: str = "") -> str:
    return f"unknown field {brief(key)}; allowed fields: {', '.join(FIELD_NAMES)}"


def validate_job(model: type[JobFields], data: Any, settings: Settings | None, strict: bool) -> JobFields:
    """Return the validated job model; raise one ValidationError listing every bad field, in today's words."""
    if not isinstance(data, Mapping):
        raise not_an_object("at least instruction and query")
    try:
        return model.model_validate(data, strict=strict, context=context(settings, strict))
    except pydantic.ValidationError as exc:
        errors = problems(exc, unknown_job_field, lambda n: f"{n} unknown fields in all; send only: "
                                                           f"{', '.join(FIELD_NAMES)}")
    raise_problems(errors, "invalid job request")
    raise AssertionError("unreachable")


_ADAPTERS: dict[str, pydantic.TypeAdapter] = {}


def check_field(name: str, value: Any, settings: Settings | None, strict: bool = True,
                model: type[BaseModel] = JobFields, unknown: Any = None) -> tuple[Any, list[dict]]:
    """Return (value validated as model's field name, []) or (None, its problems): one field alone.

    None takes the field's default (from settings where it names one). unknown words an unknown key's problem
    in an object field (errors.problems).
    """
    f = model.model_fields[name]
    if value is None:
        return base.default_value(f, settings), []
    key = f"{model.__qualname__}.{name}"
    if key not in _ADAPTERS:
        _ADAPTERS[key] = pydantic.TypeAdapter(f.rebuild_annotation())
    try:
        return _ADAPTERS[key].validate_python(value, strict=strict, context=context(settings, strict)), []
    except pydantic.ValidationError as exc:
        # A field alone has no name in its locations: give it its own.
        return None, problems(exc, unknown, prefix=name)


_MULTIPLIER = pydantic.TypeAdapter(t.number(0, t.MAX_MULTIPLIER, lo_open=True, hint=MULTIPLIER_HINT))
_LAYERS = pydantic.TypeAdapter(t.Layers)


def multiplier_problems(value: Any, name: str, settings: Settings | None,
                        strict: bool = True) -> tuple[float | None, list[dict]]:
    """Return (value as a multiplier M, []) or (None, its problems named name): M anywhere in a request."""
    try:
        return _MULTIPLIER.validate_python(value, context=context(settings, strict)), []
    except pydantic.ValidationError as exc:
        return None, problems(exc, prefix=name)


def check_multiplier(value: Any, field_name: str = "multiplier") -> float:
    """Return a valid multiplier M (0 < M <= 1e6; text like "5" too) or raise ValidationError naming the field."""
    m, errors = multiplier_problems(value, field_name, None, strict=False)
    if errors:
        raise ValidationError(errors[0]["message"], field=field_name)
    return m


def parse_layers(value: Any) -> str | tuple[int, ...]:
    """Parse 'all', 'middle', '0,3,5' or a list of ints into the engine's layers field (BoostSpec.layers)."""
    try:
        got = _LAYERS.validate_python(value, context=context(None, False))
    except pydantic.ValidationError as exc:
        raise ValidationError(problems(exc, prefix="layers")[0]["message"], field="layers") from None
    if got is None:
        raise ValidationError("layers must be 'all', 'middle' or a non-empty list of layer indices", field="layers")
    return got if isinstance(got, str) else tuple(got)


def check_values(values: Mapping[str, Any], settings: Settings | None = None) -> None:
    """Raise one ValidationError listing every bad value among these job fields (typed values, no defaults).

    For code that builds requests directly (the engine's dataclasses, the CLI): the same bounds and messages
    as the API. Without settings, bounds that a setting sets (limits.max_new_tokens) are skipped.
    """
    errors = [e for name, value in values.items() for e in check_field(name, value, settings)[1]]
    if errors:
        raise ValidationError(errors[0]["message"] if len(errors) == 1 else
                              "invalid values: " + "; ".join(e["message"] for e in errors),
                              field=errors[0]["field"], errors=errors)
