"""JobRequest validation: every bad field is reported, by name, in one error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.job_request import JobRequest, variant_name
from shared.settings import load_settings
from shared.spec import BoostSpec, GenerationParams


@pytest.fixture(scope="module")
def settings():
    return load_settings(env={}, dotenv=None, overrides={"limits.max_variants": 5, "limits.max_text_chars": 100,
                                                          "limits.max_new_tokens": 64, "generation.max_new_tokens": 32})


def make(settings, **fields):
    return JobRequest.from_dict({"instruction": "Answer in French.", "query": "What is 2+2?", **fields}, settings)


def error_fields(settings, body) -> list[str]:
    with pytest.raises(ValidationError) as info:
        JobRequest.from_dict(body, settings)
    assert info.value.status == 422
    return [e["field"] for e in info.value.errors]


def test_defaults_give_the_original_all_middle_trio(settings):
    req = make(settings)
    assert [v.name for v in req.variants()] == ["original", "all_x10", "middle_x10"]
    assert req.model == settings.model.name and req.max_new_tokens == 32
    assert req.variants()[0].multiplier == 1.0 and req.variants()[0].layer_mode == "none"


def test_variants_are_multipliers_times_layer_modes(settings):
    req = make(settings, multipliers=[2, 10], layer_modes=["middle"])
    assert [v.name for v in req.variants()] == ["original", "middle_x2", "middle_x10"]


def test_form_strings_are_coerced(settings):
    req = make(settings, multipliers="2.5, 10", start_layer="3", temperature="0.7", top_p="0.9",
               max_new_tokens="16", head_boost_percentage="50", layer_modes=["all"])
    assert req.multipliers == (2.5, 10.0) and req.start_layer == 3 and req.max_new_tokens == 16
    assert req.temperature == 0.7 and req.head_boost_percentage == 50.0


def test_specs_follow_the_request(settings):
    req = make(settings, multipliers=[4], layer_modes=["middle"], start_layer=2, num_middle_layers=3,
               head_boost_percentage=50, seed=7, placement="prefix", max_new_tokens=8)
    original, middle = req.variants()
    assert req.boost_spec(middle) == BoostSpec(multiplier=4, layers="middle", start_layer=2, num_middle_layers=3,
                                               head_fraction=0.5, seed=7, placement="prefix")
    assert req.boost_spec(original).is_identity
    assert req.generation_params() == GenerationParams(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=7)
    assert req.generation_request(middle).instruction == "Answer in French."


def test_params_round_trip(settings):
    req = make(settings, multipliers=[3, 5], layer_modes=["all"])
    params = req.to_params()
    assert params["multipliers"] == [3.0, 5.0] and "api_token" not in str(params)
    assert JobRequest.from_params(params) == req


@pytest.mark.parametrize("body, fields", [
    ({}, ["instruction", "query"]),
    ({"instruction": "  ", "query": "q"}, ["instruction"]),
    ({"instruction": 5, "query": ["q"]}, ["instruction", "query"]),
    ({"instruction": "i", "query": "x" * 101}, ["query"]),
    ({"instruction": "i", "query": "q", "multipliers": [0]}, ["multipliers[0]"]),
    ({"instruction": "i", "query": "q", "multipliers": [2, -1, "abc", float("nan")]},
     ["multipliers[1]", "multipliers[2]", "multipliers[3]"]),
    ({"instruction": "i", "query": "q", "multipliers": []}, ["multipliers"]),
    ({"instruction": "i", "query": "q", "multipliers": {"a": 1}}, ["multipliers"]),
    ({"instruction": "i", "query": "q", "multipliers": [1e7]}, ["multipliers[0]"]),
    ({"instruction": "i", "query": "q", "layer_modes": ["all", "first"]}, ["layer_modes[1]"]),
    ({"instruction": "i", "query": "q", "layer_modes": []}, ["layer_modes"]),
    ({"instruction": "i", "query": "q", "multipliers": [1, 2, 3]}, ["multipliers"]),  # 7 variants > 5
    ({"instruction": "i", "query": "q", "start_layer": -1}, ["start_layer"]),
    ({"instruction": "i", "query": "q", "start_layer": 1.5}, ["start_layer"]),
    ({"instruction": "i", "query": "q", "num_middle_layers": 0}, ["num_middle_layers"]),
    ({"instruction": "i", "query": "q", "head_boost_percentage": 0}, ["head_boost_percentage"]),
    ({"instruction": "i", "query": "q", "head_boost_percentage": 100.5}, ["head_boost_percentage"]),
    ({"instruction": "i", "query": "q", "seed": True}, ["seed"]),
    ({"instruction": "i", "query": "q", "placement": "suffix"}, ["placement"]),
    ({"instruction": "i", "query": "q", "engine": "slow"}, ["engine"]),
    ({"instruction": "i", "query": "q", "max_new_tokens": 65}, ["max_new_tokens"]),
    ({"instruction": "i", "query": "q", "max_new_tokens": 0}, ["max_new_tokens"]),
    ({"instruction": "i", "query": "q", "temperature": -0.1}, ["temperature"]),
    ({"instruction": "i", "query": "q", "top_p": 0}, ["top_p"]),
    ({"instruction": "i", "query": "q", "top_p": "1.5"}, ["top_p"]),
    ({"instruction": "i", "query": "q", "model": "has space"}, ["model"]),
    ({"instruction": "i", "query": "q", "model": 3}, ["model"]),
    ({"instruction": "i", "query": "q", "api_token": "x", "colour": 1}, ["api_token", "colour"]),
    ({"instruction": "i\x00", "query": "q"}, ["instruction"]),
    ({"instruction": "i", "query": "lone \ud800 surrogate"}, ["query"]),
])
def test_bad_fields_are_named(settings, body, fields):
    assert error_fields(settings, body) == fields


def test_all_errors_are_collected_at_once(settings):
    fields = error_fields(settings, {"instruction": "", "query": "", "temperature": 99, "engine": "x", "bogus": 1})
    assert set(fields) == {"instruction", "query", "temperature", "engine", "bogus"}


def test_body_must_be_an_object(settings):
    assert error_fields(settings, ["instruction"]) == ["body"]


def test_duplicate_multipliers_collapse(settings):
    assert make(settings, multipliers=[10, 10.0, "10"]).multipliers == (10.0,)


# -- variant names are unique for every accepted list (issue 9) ---------------------------------------------

def test_near_equal_multipliers_get_distinct_exact_names(settings):
    req = make(settings, multipliers=[2.0000001, 2.0000002], layer_modes=["all"])
    assert [v.name for v in req.variants()] == ["original", "all_x2.0000001", "all_x2.0000002"]
    # The names people know stay as they were.
    assert [variant_name(m, "all") for m in (10, 2.5, 0.5, 1e6, 100, 1e-3)] == \
        ["all_x10", "all_x2.5", "all_x0.5", "all_x1e+06", "all_x100", "all_x0.001"]


@given(st.lists(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False), min_size=1,
                max_size=4, unique=True))
@hyp_settings(max_examples=300, derandomize=True, deadline=None, database=None)
def test_every_accepted_list_has_unique_variant_names(multipliers):
    s = load_settings(env={}, dotenv=None, overrides={"limits.max_variants": 12})
    try:
        req = JobRequest.from_dict({"instruction": "i", "query": "q", "multipliers": multipliers}, s, strict=True)
    except ValidationError:
        return  # refused as a whole: nothing is generated
    names = [v.name for v in req.variants()]
    assert len(set(names)) == len(names) == 1 + 2 * len(req.multipliers), names
    # And the name gives back its multiplier exactly.
    for v in req.variants()[1:]:
        assert float(v.name.split("_x", 1)[1]) == v.multiplier


# -- scope and target mass (issue 21) -------------------------------------------------------------------------

def test_scope_and_target_mass_reach_the_boost_spec_and_the_original_stays_unboosted():
    from shared.settings import load_settings

    settings = load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None)
    req = JobRequest.from_dict({"instruction": "Answer in French.", "query": "Hi", "target_mass": 0.4,
                                "scope": "generated", "layer_modes": ["all"]}, settings, strict=True)
    assert req.multipliers == (1.0,)  # a target mass alone: no fixed M on top
    original, boosted = req.variants()
    assert req.boost_spec(original).is_identity
    spec = req.boost_spec(boosted)
    assert (spec.scope, spec.target_mass, spec.multiplier) == ("generated", 0.4, 1.0)
    again = JobRequest.from_params(req.to_params())
    assert (again.scope, again.target_mass) == ("generated", 0.4)
    old = {k: v for k, v in req.to_params().items() if k not in ("scope", "target_mass")}
    assert (JobRequest.from_params(old).scope, JobRequest.from_params(old).target_mass) == ("all", None)


@pytest.mark.parametrize("bad, field", [({"target_mass": 1}, "target_mass"), ({"target_mass": 0}, "target_mass"),
                                        ({"target_mass": "0.3"}, "target_mass"), ({"scope": "decode"}, "scope"),
                                        ({"target_mass": 0.3, "multipliers": [0.5, 4]}, "target_mass")])
def test_bad_scope_and_target_mass_are_refused_naming_the_field(bad, field):
    from shared.settings import load_settings

    settings = load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None)
    with pytest.raises(ValidationError) as err:
        JobRequest.from_dict({"instruction": "Answer in French.", "query": "Hi", **bad}, settings, strict=True)
    assert [e["field"] for e in err.value.errors] == [field]
