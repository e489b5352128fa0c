"""The job fields are declared once (shared.fields); the validator, OpenAPI schema, form and CLI must not drift.

Everything here is generated from JOB_FIELDS, so a bound changed in the table moves every surface at once.
"""

from __future__ import annotations

import argparse
import re

import pytest

from shared.errors import ValidationError
from shared.fields import FIELD_NAMES, JOB_FIELDS
from shared.job_request import JobRequest
from shared.settings import load_settings

SETTINGS = load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None)  # defaults (plus ./config.yaml, which holds them)
NUMERIC = [f for f in JOB_FIELDS if f.kind in ("integer", "number")]
BASE = {"instruction": "Answer in French.", "query": "Hello?"}


def _edges(f):
    """Return (accepted, rejected) values at the declared bounds of a numeric field."""
    step = 1 if f.kind == "integer" else 1e-6
    hi = f.upper(SETTINGS)
    accepted = [hi - step if f.hi_open else hi] + ([] if f.lo_open else [f.lo]) + ([f.lo + step] if f.lo_open else [])
    rejected = [f.lo - step, hi + step] + ([f.lo] if f.lo_open else []) + ([hi] if f.hi_open else [])
    cast = int if f.kind == "integer" else float
    return [cast(x) for x in accepted], [cast(x) for x in rejected]


def test_the_request_model_has_exactly_the_declared_fields_in_order():
    assert tuple(JobRequest.model_fields) == FIELD_NAMES


def test_defaults_come_from_the_declared_settings():
    defaults = JobRequest.defaults(SETTINGS)
    assert set(defaults) == {f.name for f in JOB_FIELDS if not f.required}
    assert defaults["max_new_tokens"] == SETTINGS.generation.max_new_tokens
    assert defaults["multipliers"] == [SETTINGS.instaboost.multiplier]


@pytest.mark.parametrize("f", NUMERIC, ids=lambda f: f.name)
def test_the_validator_applies_the_declared_bounds(f):
    accepted, rejected = _edges(f)
    for value in accepted:
        assert getattr(JobRequest.from_dict({**BASE, f.name: value}, SETTINGS, strict=True), f.name) == value
    for value in rejected:
        with pytest.raises(ValidationError) as exc:
            JobRequest.from_dict({**BASE, f.name: value}, SETTINGS, strict=True)
        assert [e["field"] for e in exc.value.errors] == [f.name]


def test_the_openapi_schema_is_the_declaration():
    from web.openapi import job_request_schema

    schema = job_request_schema(SETTINGS)
    props = schema["properties"]
    assert tuple(props) == FIELD_NAMES
    assert schema["required"] == [f.name for f in JOB_FIELDS if f.required]
    for f in JOB_FIELDS:
        prop = props[f.name]
        assert prop["description"] == f.help
        item = prop["anyOf"][0] if "anyOf" in prop else prop  # multipliers: numbers, or "recommended"
        item = item.get("items", item)
        if f.kind in ("integer", "number", "numbers"):
            assert item["exclusiveMinimum" if f.lo_open else "minimum"] == f.lo
            assert item["exclusiveMaximum" if f.hi_open else "maximum"] == f.upper(SETTINGS)
        if f.choices:
            assert [c for c in item["enum"] if c is not None] == list(f.choices)


@pytest.mark.parametrize("f", NUMERIC, ids=lambda f: f.name)
def test_the_openapi_bounds_accept_and_reject_what_the_validator_does(f):
    import jsonschema

    from web.openapi import job_request_schema

    validator = jsonschema.Draft202012Validator(job_request_schema(SETTINGS))
    accepted, rejected = _edges(f)
    for value in accepted:
        assert validator.is_valid({**BASE, f.name: value}), (f.name, value)
    for value in rejected:
        assert not validator.is_valid({**BASE, f.name: value}), (f.name, value)


def test_the_form_draws_every_declared_field():
    from web import create_app

    app = create_app({"TESTING": True, "DATABASE_URL": "sqlite://", "REDIS_URL": "redis://127.0.0.1:1/0"})
    page = app.test_client().get("/").get_data(as_text=True)
    for f in JOB_FIELDS:
        assert re.search(rf'name="{f.name}"', page), f.name
        assert f.label in page, f.label
        for choice in f.choices:
            assert f'value="{choice}"' in page, (f.name, choice)
    from web.pages import ADVANCED_FIELDS, FORM_FIELDS

    assert FORM_FIELDS == FIELD_NAMES
    assert ADVANCED_FIELDS == tuple(f.name for f in JOB_FIELDS if f.advanced)


def _cli_options(command: str) -> dict[str, argparse.Action]:
    from worker.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", ["generate", "run-tests"])
def test_the_command_line_options_are_the_declaration(command):
    from worker.cli.main import RUN_TESTS_SKIP

    options = _cli_options(command)
    for f in JOB_FIELDS:
        if f.cli is None or (command == "run-tests" and f.name in RUN_TESTS_SKIP):
            assert f.name not in options or f.cli is None
            continue
        action = options[f.name]
        assert f.cli in action.option_strings
        assert action.help.startswith(f.help)
        assert tuple(action.choices or ()) == (f.choices if f.kind == "choice" else ())
        assert isinstance(action, argparse._StoreTrueAction) == (f.kind == "boolean")


@pytest.mark.parametrize("f", [f for f in NUMERIC if f.cli], ids=lambda f: f.name)
def test_the_command_line_applies_the_declared_bounds(f):
    from worker.cli.main import build_parser, field_values

    accepted, rejected = _edges(f)
    base = ["generate", "--instruction", "x", "--query", "y"]
    for value in accepted:
        assert field_values(build_parser().parse_args([*base, f"{f.cli}={value}"]), SETTINGS)[f.name] == value
    for value in rejected:
        with pytest.raises(ValidationError) as exc:
            field_values(build_parser().parse_args([*base, f"{f.cli}={value}"]), SETTINGS)
        assert exc.value.field == f.cli and exc.value.message.startswith(f.cli)


@pytest.mark.parametrize("name", ["max_new_tokens", "temperature", "top_p", "seed"])
def test_the_engine_parameters_apply_the_declared_bounds(name):
    from shared.fields import BY_NAME
    from shared.spec import GenerationParams

    f = BY_NAME[name]
    accepted, rejected = _edges(f)
    for value in accepted if not f.hi_setting else accepted[1:]:  # the engine knows no deployment limit
        assert getattr(GenerationParams(**{name: value}), name) == value
    if name == "max_new_tokens":  # 0 is the engine's prompt-scoring row (a completion's max_tokens 0): below it
        assert GenerationParams(max_new_tokens=0).max_new_tokens == 0
        rejected = [rejected[0] - 1]
    for value in rejected if not f.hi_setting else rejected[:1]:
        with pytest.raises(ValidationError):
            GenerationParams(**{name: value})


def test_a_boolean_field_takes_json_booleans_and_form_text():
    assert JobRequest.from_dict(BASE, SETTINGS, strict=True).attention is False  # off unless asked
    assert JobRequest.from_dict({**BASE, "attention": True}, SETTINGS, strict=True).attention is True
    assert JobRequest.from_dict({**BASE, "attention": "on"}, SETTINGS).attention is True  # a ticked checkbox
    for bad, strict in (("on", True), (1, True), ("maybe", False)):
        with pytest.raises(ValidationError) as exc:
            JobRequest.from_dict({**BASE, "attention": bad}, SETTINGS, strict=strict)
        assert [e["field"] for e in exc.value.errors] == ["attention"]


def test_a_job_stored_before_a_field_existed_takes_its_default():
    params = JobRequest.from_dict(BASE, SETTINGS).to_params()
    del params["attention"]
    assert JobRequest.from_params(params).attention is False
