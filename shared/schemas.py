"""The job request: one validated shape for the JSON API, the HTML form and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from shared.errors import ValidationError
from shared.fields import FIELD_NAMES, JOB_FIELDS
from shared.spec import BoostSpec, GenerationParams, GenerationRequest
from shared.validation import Validator, brief

MAX_REPORTED_UNKNOWN = 10  # a body of thousands of stray keys gets a short answer, not thousands of errors
# No tokenizer we know has a token longer than this (SmolLM2's longest is 81 bytes, a run of spaces), so
# ceil(utf8_bytes / MAX_BYTES_PER_TOKEN) is a safe lower bound on a text's token count at submit time.
MAX_BYTES_PER_TOKEN = 128


@dataclass(frozen=True)
class Variant:
    """One generation of a job: the original (M=1, no layers) or a multiplier on a layer mode."""

    name: str
    multiplier: float
    layer_mode: str  # "none" for the original, else one of LAYER_MODES

    @property
    def is_original(self) -> bool:
        return self.layer_mode == "none"


def multiplier_text(multiplier: float) -> str:
    """Return the shortest text that reads back as exactly this multiplier: 10, 2.5, 1e+06, 2.0000001."""
    short = format(multiplier, "g")  # the familiar form, when it loses nothing
    return short if float(short) == multiplier else repr(float(multiplier))


def variant_name(multiplier: float, layer_mode: str) -> str:
    """Return the stable variant name, e.g. all_x10 or middle_x2.5.

    Exact (multiplier_text reads back as the multiplier), so distinct multipliers never share a name: with
    "%g", 2.0000001 and 2.0000002 both were all_x2 and one run was lost.
    """
    return f"{layer_mode}_x{multiplier_text(multiplier)}"


ORIGINAL = Variant("original", 1.0, "none")


@dataclass(frozen=True)
class JobRequest:
    """A validated job: what to generate and how to boost it."""

    instruction: str
    query: str
    model: str
    multipliers: tuple[float, ...]
    layer_modes: tuple[str, ...]
    start_layer: int
    num_middle_layers: int
    head_boost_percentage: float
    seed: int
    placement: str
    scope: str
    target_mass: float | None
    engine: str
    max_new_tokens: int
    temperature: float
    top_p: float
    attention: bool
    checks: tuple[dict, ...] = ()
    ifeval: tuple[dict, ...] = ()
    score_perplexity: bool = True
    judge: bool = False
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def defaults(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Return the value each optional field takes when omitted."""
        return {f.name: f.default_value(settings) for f in JOB_FIELDS if not f.required}

    @classmethod
    def from_dict(cls, data: Any, settings: Mapping[str, Any] | None = None, strict: bool = False) -> "JobRequest":
        """Validate a JSON body, form or CLI fields; raise one ValidationError listing every bad field.

        strict (the JSON API) takes each field only in its JSON type, as the OpenAPI document says:
        numbers as numbers, lists as arrays, and null (not "") for "use the default". Forms send
        text, so without strict "5" is a number, "2, 10" a list and "" the default.
        """
        if settings is None:
            from shared.settings import get_settings

            settings = get_settings()
        if not isinstance(data, Mapping):
            raise ValidationError("the request body must be a JSON object with at least instruction and query",
                                  errors=[{"field": "body", "message": "expected a JSON object"}])
        v = Validator(settings, strict)
        unknown = [str(k) for k in data if k not in FIELD_NAMES]
        for key in unknown[:MAX_REPORTED_UNKNOWN]:
            v.error(key[:64], f"unknown field {brief(key)}; allowed fields: {', '.join(FIELD_NAMES)}")
        if len(unknown) > MAX_REPORTED_UNKNOWN:
            v.error("body", f"{len(unknown)} unknown fields in all; send only: {', '.join(FIELD_NAMES)}")
        given = {k: val for k, val in data.items() if k in FIELD_NAMES and val is not None and (strict or val != "")}
        values = {**cls.defaults(settings), **given}
        out = {f.name: None if f.nullable and values.get(f.name) is None else
               v.check(f, values.get(f.name) if f.required else values[f.name]) for f in JOB_FIELDS}
        if out["target_mass"] is not None:
            if "multipliers" not in given:
                out["multipliers"] = (1.0,)  # a target mass alone: the target-mass mode, no fixed M on top
            low = [m for m in out["multipliers"] if m < 1.0]
            if low:
                v.error("target_mass", f"target_mass raises the instruction's attention share while multipliers "
                                       f"{', '.join(multiplier_text(m) for m in low)} (below 1) lower it: use "
                                       "multipliers >= 1 with a target mass, or leave target_mass null")

        if out["multipliers"] and out["layer_modes"]:
            count = 1 + len(out["multipliers"]) * len(out["layer_modes"])
            limit = settings["limits.max_variants"]
            if count > limit:
                v.error("multipliers", f"{count} variants requested (1 original + {len(out['multipliers'])} "
                                       f"multipliers x {len(out['layer_modes'])} layer modes); at most {limit} "
                                       "are allowed: drop some multipliers or layer modes")
        if out.get("judge") and not str(settings.get("judge.url", "") or "").strip():
            v.error("judge", "judge: no LLM judge is configured on this service (setting judge.url); leave judge off")
        if v.errors:
            fields_ = ", ".join(dict.fromkeys(e["field"] for e in v.errors))
            raise ValidationError(f"invalid job request: fix {fields_}", errors=v.errors)
        return cls(**out)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "JobRequest":
        """Rebuild a request from stored Job.params (already validated when submitted)."""
        # Jobs stored before a field was added lack it: they take its declared default.
        data = {f.name: params.get(f.name, f.default) for f in JOB_FIELDS}
        data["multipliers"] = tuple(float(m) for m in data["multipliers"])
        data["layer_modes"] = tuple(data["layer_modes"])
        data["checks"] = tuple(dict(c) for c in data["checks"] or ())
        data["ifeval"] = tuple(dict(c) for c in data["ifeval"] or ())
        return cls(**data)

    def check_model(self, facts: Mapping[str, Any]) -> None:
        """Raise ValidationError when the request cannot run on a model with these facts.

        facts come from worker heartbeats ({"n_layers", "max_context"}, each optional). The prompt
        check is a lower bound (ceil(utf8 bytes / MAX_BYTES_PER_TOKEN) tokens, template excluded): it
        only refuses prompts that cannot fit; the worker counts tokens exactly before generating.
        """
        errors: list[dict] = []
        n_layers = facts.get("n_layers")
        # Refused in any layer mode: a start_layer past the model is a mistake even when unused.
        if isinstance(n_layers, int) and self.start_layer >= n_layers:
            errors.append({"field": "start_layer", "message": f"start_layer {self.start_layer} is out of range: "
                           f"{self.model} has {n_layers} layers (0..{n_layers - 1})"})
        context = facts.get("max_context")
        if isinstance(context, int):
            if self.max_new_tokens >= context:
                errors.append({"field": "max_new_tokens", "message": f"max_new_tokens {self.max_new_tokens} does "
                               f"not fit {self.model}'s context of {context} tokens; ask for fewer"})
            else:
                nbytes = len(self.instruction.encode("utf-8")) + len(self.query.encode("utf-8"))
                at_least = -(-nbytes // MAX_BYTES_PER_TOKEN)
                if at_least + self.max_new_tokens > context:
                    errors.append({"field": "query", "message": f"the prompt is at least {at_least} tokens; with "
                                   f"max_new_tokens {self.max_new_tokens} it exceeds {self.model}'s context of "
                                   f"{context} tokens: shorten the instruction or query"})
        if errors:
            fields_ = ", ".join(e["field"] for e in errors)
            raise ValidationError(f"the job does not fit model {self.model}: fix {fields_}", errors=errors)

    # -- use ----------------------------------------------------------------------------------

    def to_params(self) -> dict[str, Any]:
        """Return the JSON-able parameters stored on the job."""
        d = asdict(self)
        d["multipliers"] = list(self.multipliers)
        d["layer_modes"] = list(self.layer_modes)
        d["checks"] = [dict(c) for c in self.checks]
        d["ifeval"] = [{"id": c["id"], "kwargs": dict(c.get("kwargs") or {})} for c in self.ifeval]
        return d

    def case(self, name: str = "job"):
        """Return the evaluation Case the job's outputs are checked against (checks and IFEval instructions)."""
        from shared.evaluation.cases import Case
        from shared.evaluation.checks import parse_checks

        checks, ifevals = parse_checks(list(self.checks) or None, list(self.ifeval) or None)
        return Case(name, self.instruction, self.query, checks=checks, ifeval=ifevals)

    def variants(self) -> list[Variant]:
        """Return the original first, then every multiplier x layer mode."""
        out = [ORIGINAL]
        for m in self.multipliers:
            for mode in self.layer_modes:
                out.append(Variant(variant_name(m, mode), m, mode))
        return out

    def boost_spec(self, variant: Variant) -> BoostSpec:
        """Return the BoostSpec that generates variant."""
        return BoostSpec(multiplier=variant.multiplier,
                         layers="all" if variant.is_original else variant.layer_mode,
                         start_layer=self.start_layer, num_middle_layers=self.num_middle_layers,
                         head_fraction=self.head_boost_percentage / 100.0, seed=self.seed,
                         placement=self.placement, scope=self.scope,
                         target_mass=None if variant.is_original else self.target_mass)

    def generation_params(self) -> GenerationParams:
        """Return the decoding settings shared by every variant."""
        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed, top_k=self.top_k, min_p=self.min_p,
                                repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                                frequency_penalty=self.frequency_penalty)

    def generation_request(self, variant: Variant) -> GenerationRequest:
        """Return the engine request for variant."""
        return GenerationRequest(self.instruction, self.query, self.boost_spec(variant), self.generation_params())
