"""The job request: one validated shape for the JSON API, the HTML form and the CLI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from shared.errors import ValidationError
from shared.spec import ENGINES, LAYER_MODES, PLACEMENTS, BoostSpec, GenerationParams, GenerationRequest

MAX_MODEL_NAME = 255
MAX_LAYER = 10_000
MAX_SEED = 2**32 - 1
MAX_REPORTED_UNKNOWN = 10  # a body of thousands of stray keys gets a short answer, not thousands of errors
# No tokenizer we know has a token longer than this (SmolLM2's longest is 81 bytes, a run of spaces), so
# ceil(utf8_bytes / MAX_BYTES_PER_TOKEN) is a safe lower bound on a text's token count at submit time.
MAX_BYTES_PER_TOKEN = 128
# What counts as blank text: ECMAScript's \s, spelled out so the OpenAPI pattern (JSON Schema regexes are
# ECMAScript) and this validator agree character for character.
WHITESPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
             "\u2028\u2029\u202f\u205f\u3000\ufeff"


def show(value: Any, limit: int = 40) -> str:
    """Return repr(value) cut to about limit characters, for error messages that echo user input."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value) if not isinstance(value, (list, dict, tuple)) or len(value) < 20 else \
        f"a {type(value).__name__} of {len(value)} items"
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class Variant:
    """One generation of a job: the original (M=1, no layers) or a multiplier on a layer mode."""

    name: str
    multiplier: float
    layer_mode: str  # "none" for the original, else one of LAYER_MODES

    @property
    def is_original(self) -> bool:
        return self.layer_mode == "none"


def variant_name(multiplier: float, layer_mode: str) -> str:
    """Return the stable variant name, e.g. all_x10 or middle_x2.5."""
    return f"{layer_mode}_x{multiplier:g}"


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
    engine: str
    max_new_tokens: int
    temperature: float
    top_p: float

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def defaults(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Return the value each optional field takes when omitted."""
        return {
            "model": settings["model.name"],
            "multipliers": [settings["instaboost.multiplier"]],
            "layer_modes": list(LAYER_MODES),
            "start_layer": settings["instaboost.start_layer"],
            "num_middle_layers": settings["instaboost.num_middle_layers"],
            "head_boost_percentage": settings["instaboost.head_boost_percentage"],
            "seed": settings["random_seed"],
            "placement": settings["instaboost.placement"],
            "engine": settings["instaboost.engine"],
            "max_new_tokens": settings["generation.max_new_tokens"],
            "temperature": settings["generation.temperature"],
            "top_p": settings["generation.top_p"],
        }

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
        v = _Validator(settings, strict)
        names = cls.field_names()
        unknown = [str(k) for k in data if k not in names]
        for key in unknown[:MAX_REPORTED_UNKNOWN]:
            v.error(key[:64], f"unknown field {show(key)}; allowed fields: {', '.join(names)}")
        if len(unknown) > MAX_REPORTED_UNKNOWN:
            v.error("body", f"{len(unknown)} unknown fields in all; send only: {', '.join(names)}")
        given = {k: val for k, val in data.items() if k in names and val is not None and (strict or val != "")}
        values = {**cls.defaults(settings), **given}

        out: dict[str, Any] = {}
        out["instruction"] = v.text("instruction", data.get("instruction"))
        out["query"] = v.text("query", data.get("query"))
        out["model"] = v.model(values["model"])
        out["multipliers"] = v.multipliers(values["multipliers"])
        out["layer_modes"] = v.layer_modes(values["layer_modes"])
        out["start_layer"] = v.integer("start_layer", values["start_layer"], lo=0, hi=MAX_LAYER)
        out["num_middle_layers"] = v.integer("num_middle_layers", values["num_middle_layers"], lo=1, hi=MAX_LAYER)
        out["head_boost_percentage"] = v.number("head_boost_percentage", values["head_boost_percentage"],
                                                lo=0, hi=100, lo_open=True)
        out["seed"] = v.integer("seed", values["seed"], lo=0, hi=MAX_SEED)
        out["placement"] = v.choice("placement", values["placement"], PLACEMENTS)
        out["engine"] = v.choice("engine", values["engine"], ENGINES)
        out["max_new_tokens"] = v.integer("max_new_tokens", values["max_new_tokens"], lo=1,
                                          hi=settings["limits.max_new_tokens"])
        out["temperature"] = v.number("temperature", values["temperature"], lo=0, hi=10)
        out["top_p"] = v.number("top_p", values["top_p"], lo=0, hi=1, lo_open=True)

        if out["multipliers"] and out["layer_modes"]:
            count = 1 + len(out["multipliers"]) * len(out["layer_modes"])
            limit = settings["limits.max_variants"]
            if count > limit:
                v.error("multipliers", f"{count} variants requested (1 original + {len(out['multipliers'])} "
                                       f"multipliers x {len(out['layer_modes'])} layer modes); at most {limit} "
                                       "are allowed: drop some multipliers or layer modes")
        if v.errors:
            fields_ = ", ".join(dict.fromkeys(e["field"] for e in v.errors))
            raise ValidationError(f"invalid job request: fix {fields_}", errors=v.errors)
        return cls(**out)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "JobRequest":
        """Rebuild a request from stored Job.params (already validated when submitted)."""
        data = {k: params[k] for k in cls.field_names()}
        data["multipliers"] = tuple(float(m) for m in data["multipliers"])
        data["layer_modes"] = tuple(data["layer_modes"])
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
        return d

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
                         placement=self.placement)

    def generation_params(self) -> GenerationParams:
        """Return the decoding settings shared by every variant."""
        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed)

    def generation_request(self, variant: Variant) -> GenerationRequest:
        """Return the engine request for variant."""
        return GenerationRequest(self.instruction, self.query, self.boost_spec(variant), self.generation_params())


@dataclass
class _Validator:
    """Collects field errors instead of stopping at the first one."""

    settings: Mapping[str, Any]
    strict: bool = False
    errors: list[dict] = field(default_factory=list)

    def error(self, name: str, message: str) -> None:
        self.errors.append({"field": name, "message": message})

    def text(self, name: str, value: Any) -> str:
        limit = self.settings["limits.max_text_chars"]
        if value is None or (isinstance(value, str) and not value.strip(WHITESPACE)):
            self.error(name, f"{name} is required and must not be blank")
            return ""
        if not isinstance(value, str):
            self.error(name, f"{name} must be a string, got {type(value).__name__}")
            return ""
        if len(value) > limit:
            self.error(name, f"{name} is {len(value)} characters; at most {limit} are allowed")
        if "\x00" in value:
            self.error(name, f"{name} must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.error(name, f"{name} must be valid Unicode text (it holds a lone surrogate)")
        return value

    def model(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            self.error("model", "model must be a non-empty model name")
            return ""
        value = value if self.strict else value.strip()
        if len(value) > MAX_MODEL_NAME or any(c.isspace() or not c.isprintable() for c in value):
            self.error("model", f"model must be a name of at most {MAX_MODEL_NAME} printable characters "
                                "without spaces")
        return value

    def _as_number(self, name: str, value: Any, integer: bool) -> float | int | None:
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool):
            self.error(name, f"{name} must be {kind}, got a boolean")
            return None
        if isinstance(value, str) and self.strict:
            self.error(name, f"{name} must be {kind}, got a string: send it as a JSON number")
            return None
        if isinstance(value, str):
            try:
                value = int(value.strip()) if integer else float(value.strip())
            except ValueError:
                self.error(name, f"{name} must be {kind}, got {show(value)}")
                return None
        if integer and isinstance(value, float) and value.is_integer():
            value = int(value)
        if integer and not isinstance(value, int):
            self.error(name, f"{name} must be {kind}, got {show(value)}")
            return None
        if not isinstance(value, (int, float)):
            self.error(name, f"{name} must be {kind}, got {type(value).__name__}")
            return None
        if isinstance(value, int) and not integer and abs(value) > 1e300:
            # JSON allows integers of any length; float() of one this long overflows.
            self.error(name, f"{name} is far out of range, got {show(value)}")
            return None
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            self.error(name, f"{name} must be a finite number")
            return None
        return value

    def integer(self, name: str, value: Any, lo: int, hi: int) -> int:
        n = self._as_number(name, value, integer=True)
        if n is None:
            return 0
        if not lo <= n <= hi:
            self.error(name, f"{name} must be between {lo} and {hi}, got {show(n)}")
        return int(n)

    def number(self, name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
        x = self._as_number(name, value, integer=False)
        if x is None:
            return 0.0
        if (x <= lo if lo_open else x < lo) or x > hi:
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            self.error(name, f"{name} must be in {interval}, got {x:g}")
        return float(x)

    def choice(self, name: str, value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.error(name, f"{name} must be one of {', '.join(allowed)}; got {show(value)}")
            return ""
        return value

    def _as_list(self, name: str, value: Any) -> list | None:
        if isinstance(value, str) and not self.strict:
            return [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        self.error(name, f"{name} must be a JSON array" if self.strict else
                   f"{name} must be a list (or a comma-separated string)")
        return None

    def multipliers(self, value: Any) -> tuple[float, ...]:
        from shared.spec import check_multiplier

        items = self._as_list("multipliers", value)
        if items is None:
            return ()
        if not items:
            self.error("multipliers", "give at least one multiplier, e.g. 10 or 2, 10")
            return ()
        limit = self.settings["limits.max_variants"]
        if len(items) >= limit:  # each multiplier adds at least one variant to the original
            self.error("multipliers", f"{len(items)} multipliers given; with the original at most {limit} "
                                      "variants are allowed: drop some multipliers")
            return ()
        out: list[float] = []
        for i, item in enumerate(items):
            name = f"multipliers[{i}]"
            if self.strict and (isinstance(item, str) or isinstance(item, bool)):
                self.error(name, f"{name} must be a JSON number, got {show(item)}")
                continue
            if isinstance(item, str) and len(item) > 40:
                self.error(name, f"{name} must be a number, got {show(item)}")
                continue
            try:
                m = check_multiplier(item, name)
            except ValidationError as exc:
                self.errors.extend(exc.errors)
                continue
            except OverflowError:  # an integer too long for a float
                self.error(name, f"{name} must be <= 1e6, got {show(item)}")
                continue
            if m not in out:  # a repeated multiplier would only regenerate the same variant
                out.append(m)
            elif self.strict:  # the OpenAPI document says uniqueItems
                self.error(name, f"multiplier {m:g} is given twice; list each once")
        return tuple(out)

    def layer_modes(self, value: Any) -> tuple[str, ...]:
        items = self._as_list("layer_modes", value)
        if items is None:
            return ()
        if len(items) > 2 * len(LAYER_MODES):
            self.error("layer_modes", f"{len(items)} layer modes given; choose among {', '.join(LAYER_MODES)}")
            return ()
        if not items:
            self.error("layer_modes", f"choose at least one layer mode: {', '.join(LAYER_MODES)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(items):
            if item not in LAYER_MODES:
                self.error(f"layer_modes[{i}]", f"layer mode must be one of {', '.join(LAYER_MODES)}; got {show(item)}")
            elif item not in out:
                out.append(item)
            elif self.strict:  # the OpenAPI document says uniqueItems
                self.error(f"layer_modes[{i}]", f"layer mode {item!r} is given twice; list each once")
        return tuple(out)
