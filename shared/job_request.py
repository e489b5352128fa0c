"""The job request: one validated shape for the JSON API, the HTML form and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from shared.errors import ValidationError
from shared.evaluation.cases import Case
from shared.evaluation.checks import parse_checks
from shared.requests.fit import fit_problems
from shared.requests.job import JobFields, validate_job
from shared.requests.base import default_value
from shared.settings import Settings, get_settings
from shared.spec import BoostSpec, GenerationParams, GenerationRequest



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


class JobRequest(JobFields):
    """A validated job: what to generate and how to boost it (fields: shared.requests.job.JobFields)."""

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def defaults(cls, settings: Settings) -> dict[str, Any]:
        """Return the value each optional field takes when omitted."""
        return {name: default_value(f, settings) for name, f in cls.model_fields.items() if not f.is_required()}

    @classmethod
    def from_dict(cls, data: Any, settings: Settings | None = None, strict: bool = False) -> "JobRequest":
        """Validate a JSON body, form or CLI fields; raise one ValidationError listing every bad field.

        strict (the JSON API) takes each field only in its JSON type, as the OpenAPI document says:
        numbers as numbers, lists as arrays, and null (not "") for "use the default". Forms send
        text, so without strict "5" is a number, "2, 10" a list and "" the default.
        """
        return validate_job(cls, data, get_settings() if settings is None else settings, strict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "JobRequest":
        """Rebuild a request from stored Job.params (already validated when submitted)."""
        # Jobs stored before a field was added lack it: they take its declared default.
        data = {name: params.get(name, default_value(f, None)) for name, f in cls.model_fields.items()}
        data["multipliers"] = tuple(float(m) for m in data["multipliers"])
        data["layer_modes"] = tuple(data["layer_modes"])
        data["checks"] = tuple(dict(c) for c in data["checks"] or ())
        data["ifeval"] = tuple(dict(c) for c in data["ifeval"] or ())
        return cls.model_construct(**data)

    def check_model(self, facts: Mapping[str, Any]) -> None:
        """Raise ValidationError when the request cannot run on a model with these facts (shared.requests.fit)."""
        # start_layer is refused in any layer mode: a start_layer past the model is a mistake even when unused.
        errors = fit_problems(facts, self.model, start_layer=self.start_layer, max_new_tokens=self.max_new_tokens,
                              tokens_field="max_new_tokens", prompt_field="query",
                              prompt_bytes=len(self.instruction.encode("utf-8")) + len(self.query.encode("utf-8")))
        if errors:
            fields_ = ", ".join(e["field"] for e in errors)
            raise ValidationError(f"the job does not fit model {self.model}: fix {fields_}", errors=errors)

    # -- use ----------------------------------------------------------------------------------

    def to_params(self) -> dict[str, Any]:
        """Return the JSON-able parameters stored on the job."""
        d = self.model_dump()
        d["multipliers"] = list(self.multipliers)
        d["layer_modes"] = list(self.layer_modes)
        d["checks"] = [dict(c) for c in self.checks]
        d["ifeval"] = [{"id": c["id"], "kwargs": dict(c.get("kwargs") or {})} for c in self.ifeval]
        return d

    def case(self, name: str = "job"):
        """Return the evaluation Case the job's outputs are checked against (checks and IFEval instructions)."""
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
                         target_mass=None if variant.is_original else self.target_mass,
                         boilerplate_multiplier=1.0 if variant.is_original else self.boilerplate_multiplier)

    def generation_params(self) -> GenerationParams:
        """Return the decoding settings shared by every variant."""
        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed, top_k=self.top_k, min_p=self.min_p,
                                repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                                frequency_penalty=self.frequency_penalty)

    def generation_request(self, variant: Variant) -> GenerationRequest:
        """Return the engine request for variant."""
        return GenerationRequest(self.instruction, self.query, self.boost_spec(variant), self.generation_params())
