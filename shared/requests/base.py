"""A request body's base model and a field's declaration: label, help, default (a value or a setting) and flags.

Every request model (shared.requests.job, chat, sweep, batch) derives from ``Request``: unknown keys are refused,
and an omitted or null field takes its default, from this deployment's settings where its declaration names one
(``x-setting``). The form and the CLI read a field's ``title`` (label), ``description`` (help), ``x-cli`` and
``x-advanced`` (shared.fields).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from shared.requests.types import rule_of
from shared.settings import Settings


def meta(title: str, description: str, *, setting: str | None = None, default: Any = None, cli: str | None = None,
         cli_short: str | None = None, advanced: bool = False, required: bool | None = None) -> Any:
    """Return a field's declaration: its label, help, default (a value or the setting that gives it) and flags."""
    extra_ = {"x-setting": setting, "x-cli": cli, "x-cli-short": cli_short, "x-advanced": advanced or None}
    extra_ = {k: v for k, v in extra_.items() if v is not None}
    if required is None:
        required = setting is None and default is None
    return Field(... if required else default, title=title, description=description, json_schema_extra=extra_)


def extra(f: Any) -> dict[str, Any]:
    """Return a field's x- metadata (x-setting, x-cli, x-cli-short, x-advanced)."""
    return f.json_schema_extra or {}


def default_value(f: Any, settings: Settings | None) -> Any:
    """Return the value an omitted field takes under these settings (a list field wraps a setting in a list)."""
    key = extra(f).get("x-setting")
    if key is None or settings is None:
        return list(f.default) if isinstance(f.default, tuple) else f.default
    value = settings[key]
    return [value] if rule_of(f).kind in ("numbers", "choices") else value


class Request(BaseModel):
    """A request body: unknown keys refused, omitted and null fields given their defaults from the settings."""

    model_config = ConfigDict(extra="forbid")
    # Required fields whose absence has its own message (errors.problems' missing): left absent, not None.
    own_missing: ClassVar[tuple[str, ...]] = ()
    # Whether a default is validated like a given value (the job API: a deployment's limits bound its defaults
    # too); when not, defaults are filled in after validation (the OpenAI API: an omitted field never fails).
    validate_defaults: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill omitted fields (and null; "" from a form) with their defaults from this deployment's settings."""
        if not isinstance(data, Mapping):
            return data
        ctx = info.context or {}
        strict, settings = ctx.get("strict", True), ctx.get("settings")
        out = dict(data)
        for name, f in cls.model_fields.items():
            value = out.get(name)
            if value is None or (not strict and isinstance(value, str) and value == ""):
                if not f.is_required():
                    out[name] = default_value(f, settings) if cls.validate_defaults else None
                elif name in out or name not in cls.own_missing:
                    out[name] = None  # its validator says it is required, in its own words
        return out

    @model_validator(mode="after")
    def _late_defaults(self, info: ValidationInfo) -> "Request":
        """Fill the defaults left out of validation (validate_defaults False) from this deployment's settings."""
        if not self.validate_defaults:
            settings = (info.context or {}).get("settings")
            for name, f in type(self).model_fields.items():
                if getattr(self, name) is None and not f.is_required():
                    setattr(self, name, default_value(f, settings))
        return self
