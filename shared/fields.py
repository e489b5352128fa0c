"""The job request's fields as rows for the form, the CLI and the OpenAPI document: name, kind, bounds, default, help.

``JOB_FIELDS`` is read from the one declaration, the pydantic model ``shared.requests.job.JobFields`` (which also
validates); it generates the OpenAPI schema (``web.openapi``), the submit form (``web.pages`` and ``index.html``)
and the command-line options (``worker.cli.options``); ``tests/unit/test_fields.py`` fails if any of them drifts
from it. Adding a field takes one field in ``JobFields`` plus its use.

Kinds: ``text`` (required, not blank), ``model`` (a model name), ``integer``, ``number``, ``choice``
(one of ``choices``), ``numbers`` (a non-empty list of distinct numbers), ``choices`` (a non-empty
list of distinct choices), ``boolean`` (a switch: a form checkbox, a command-line flag), ``checks``
(a list of simple checks ``{type, value}``, shared.evaluation.checks) and ``ifeval`` (a list of IFEval
instruction ids or ``{id, kwargs}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.requests import job
from shared.requests.base import extra
from shared.requests.types import (ENGINES, LAYER_MODES, MAX_CHECKS, MAX_LAYER, MAX_LOGIT_BIAS,  # noqa: F401
                                   MAX_MULTIPLIER, MAX_SEED, MAX_TOP_K, PLACEMENTS, SCOPES, rule_of)
from shared.settings import Settings

KINDS = ("text", "model", "integer", "number", "choice", "numbers", "choices", "boolean", "checks", "ifeval")


@dataclass(frozen=True)
class JobField:
    """One field of a job request."""

    name: str
    kind: str
    help: str
    label: str
    setting: str | None = None  # the setting whose value is the default (a list field wraps it in a list)
    default: Any = None  # the default when no setting gives it; None with no setting: required
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is excluded: (lo, hi]
    hi_open: bool = False  # hi itself is excluded: [lo, hi)
    nullable: bool = False  # optional with no default: null (or omitted) means off
    hi_setting: str | None = None  # an upper bound this deployment sets, e.g. limits.max_new_tokens
    choices: tuple[str, ...] = ()
    hint: str = ""  # appended to out-of-range messages, e.g. what a value means
    advanced: bool = False  # the form shows it under "Advanced settings"
    cli: str | None = None  # command-line flag; a list field takes one value there
    cli_short: str | None = None

    def __post_init__(self):
        assert self.kind in KINDS, self.kind

    @property
    def required(self) -> bool:
        return self.setting is None and self.default is None and not self.nullable

    @property
    def is_list(self) -> bool:
        return self.kind in ("numbers", "choices")

    @property
    def is_rules(self) -> bool:
        """A list of checks (simple or IFEval), given as JSON."""
        return self.kind in ("checks", "ifeval")

    def upper(self, settings: Settings | None) -> float | None:
        """Return the upper bound in force: the declared one, or the setting's when it has one."""
        if self.hi_setting and settings is not None:
            return settings[self.hi_setting]
        return self.hi

    def default_value(self, settings: Settings) -> Any:
        """Return the value an omitted field takes under these settings."""
        if self.setting is None:
            return list(self.default) if isinstance(self.default, tuple) else self.default
        value = settings[self.setting]
        return [value] if self.is_list else value

    def interval(self, settings: Settings | None = None) -> str:
        """Return the allowed range as text, e.g. "in (0, 100]" or "between 1 and 1024"."""
        hi = self.upper(settings)
        if self.kind == "integer":
            return f"between {int(self.lo)} and {int(hi)}" if hi is not None else f">= {int(self.lo)}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {hi:g}{')' if self.hi_open else ']'}"


def _row(name: str, f: Any) -> JobField:
    """Return the form/CLI row of one field of the job request's declaration."""
    rule, x = rule_of(f), extra(f)
    return JobField(name, rule.kind, f.description, f.title, setting=x.get("x-setting"),
                    default=None if x.get("x-setting") or f.is_required() else f.default, lo=rule.lo, hi=rule.hi,
                    lo_open=rule.lo_open, hi_open=rule.hi_open, hi_setting=rule.hi_setting, choices=rule.choices,
                    hint=rule.hint, nullable=not f.is_required() and f.default is None and not x.get("x-setting"),
                    advanced=bool(x.get("x-advanced")), cli=x.get("x-cli"), cli_short=x.get("x-cli-short"))


JOB_FIELDS: tuple[JobField, ...] = tuple(_row(name, f) for name, f in job.JobFields.model_fields.items())

BY_NAME: dict[str, JobField] = {f.name: f for f in JOB_FIELDS}

FIELD_NAMES: tuple[str, ...] = tuple(BY_NAME)
