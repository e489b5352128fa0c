"""shared.chat: an OpenAI chat body into a chat job's params (which tokens are boosted, with which M)."""

from __future__ import annotations

import pytest

from shared.chat import chat_params, generation_request, split_boost_tags
from shared.errors import ValidationError
from shared.settings import load_settings

SETTINGS = load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None)
SYSTEM = {"role": "system", "content": "Answer in French."}
USER = {"role": "user", "content": "Capital of Italy?"}


def params(**body):
    return chat_params({"model": "m", "messages": [SYSTEM, USER], **body}, SETTINGS)


def segments(p):
    return [m["segments"] for m in p["messages"]]


def test_tags_are_removed_and_the_rest_of_the_text_is_kept_exactly():
    text = "a <boost>b c</boost> d<boost>e</boost>"
    pieces = split_boost_tags(text, "f")
    assert pieces == [("a ", False), ("b c", True), (" d", False), ("e", True)]
    assert "".join(p for p, _ in pieces) == text.replace("<boost>", "").replace("</boost>", "")


@pytest.mark.parametrize("text, what", [("<boost>x", "unclosed"), ("x</boost>", "without"),
                                        ("<boost>a<boost>b</boost></boost>", "nests"), ("<boost></boost>", "empty")])
def test_malformed_tags_are_refused_naming_the_message(text, what):
    with pytest.raises(ValidationError) as exc:
        chat_params({"model": "m", "messages": [{"role": "user", "content": text}]}, SETTINGS)
    assert exc.value.errors[0]["field"] == "messages[0].content" and what in exc.value.errors[0]["message"]


def test_without_instaboost_nothing_is_boosted():
    p = params()
    assert segments(p) == [[["Answer in French.", None]], [["Capital of Italy?", None]]]
    req = generation_request(p)
    assert req.is_identity and req.multipliers == ()


def test_with_instaboost_the_system_messages_are_boosted_by_default():
    p = chat_params({"model": "m", "instaboost": {"multiplier": 7, "layers": "middle", "start_layer": 2},
                     "messages": [SYSTEM, {"role": "developer", "content": "Be brief."}, USER]}, SETTINGS)
    assert segments(p) == [[["Answer in French.", 7.0]], [["Be brief.", 7.0]], [["Capital of Italy?", None]]]
    req = generation_request(p)
    assert req.multipliers == (7.0, 7.0) and req.spec.layers == "middle" and req.spec.start_layer == 2
    assert p["instruction"] == "Answer in French.\nBe brief." and p["query"] == "Capital of Italy?"


def test_tags_and_message_boosts_replace_the_default_and_each_keeps_its_m():
    p = chat_params({"model": "m", "instaboost": {"multiplier": 5}, "messages": [
        SYSTEM, {"role": "user", "content": [{"type": "text", "text": "Hi <boost>in French</boost>"}]},
        {"role": "assistant", "content": "Ciao", "boost": 0.5}]}, SETTINGS)
    assert segments(p) == [[["Answer in French.", None]], [["Hi ", None], ["in French", 5.0]], [["Ciao", 0.5]]]
    assert generation_request(p).multipliers == (5.0, 0.5)


def test_decoding_fields_and_their_openai_names():
    p = params(max_tokens=7, max_completion_tokens=9, temperature=0.5, top_p=0.9, seed=3, stop="END", n=1)
    assert (p["max_new_tokens"], p["temperature"], p["top_p"], p["seed"], p["stop"]) == (9, 0.5, 0.9, 3, ["END"])
    req = generation_request(p)
    assert req.params.stop == ("END",) and req.params.max_new_tokens == 9


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(ValidationError) as exc:
        params(n=99, temperature=-1, instaboost={"multiplier": 0, "placement": "x"}, foo=1)
    assert {e["field"] for e in exc.value.errors} == {"n", "temperature", "instaboost.multiplier",
                                                      "instaboost.placement", "foo"}


def test_sampling_extras_n_user_and_metadata_are_stored_and_reach_the_engine_request():
    p = params(n=3, seed=2**32 - 2, temperature=0.7, top_k=5, min_p=0.1, repetition_penalty=1.2, presence_penalty=0.5,
               frequency_penalty=-0.5, logit_bias={"42": -100, "7": 2.5}, user="u", metadata={"k": "v"},
               store=True, service_tier="auto", reasoning_effort="low")
    assert (p["n"], p["top_k"], p["logit_bias"], p["user"], p["metadata"]) == (3, 5, {"42": -100.0, "7": 2.5}, "u",
                                                                               {"k": "v"})
    gens = [generation_request(p, i).params for i in range(3)]
    assert [g.seed for g in gens] == [2**32 - 2, 2**32 - 1, 0]  # seed + i, modulo 2**32
    assert gens[0].logit_bias == ((7, 2.5), (42, -100.0))
    assert (gens[0].top_k, gens[0].min_p, gens[0].repetition_penalty, gens[0].presence_penalty,
            gens[0].frequency_penalty) == (5, 0.1, 1.2, 0.5, -0.5)
    # A job stored before these fields existed still builds its request, with neutral defaults.
    old = {k: v for k, v in p.items() if k not in ("n", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                                                   "frequency_penalty", "logit_bias", "user", "metadata")}
    assert generation_request(old).params.repetition_penalty == 1.0


@pytest.mark.parametrize("field, why", [("tools", "chat template declares no tool support"),
                                        ("functions", "no tool (function) support"), ("audio", "text only"),
                                        ("modalities", "text only")])
def test_openai_fields_refused_say_why(field, why):
    with pytest.raises(ValidationError) as exc:
        params(**{field: ["audio"] if field == "modalities" else [{"type": "function"}]})
    assert exc.value.errors[0]["field"] == field and why in exc.value.errors[0]["message"]


# -- scope and target mass in instaboost (issue 21) ---------------------------------------------------------------

def test_instaboost_scope_and_target_mass_reach_the_engine_request():
    from shared.chat import chat_params, generation_request
    from shared.settings import load_settings

    settings = load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None)
    body = {"model": settings.model.name, "messages": [{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "Hi"}],
            "instaboost": {"target_mass": 0.4, "scope": "generated"}}
    params = chat_params(body, settings)
    req = generation_request(params)
    assert (req.spec.scope, req.spec.target_mass, req.multipliers) == ("generated", 0.4, (1.0,))
    old = {k: v for k, v in params.items() if k not in ("scope", "target_mass")}  # a job stored before them
    assert (generation_request(old).spec.scope, generation_request(old).spec.target_mass) == ("all", None)


@pytest.mark.parametrize("boost, message", [({"target_mass": 0.4, "multiplier": 0.5}, "below 1"),
                                            ({"target_mass": 1.2}, "in (0, 1)"), ({"scope": "gen"}, "one of")])
def test_bad_instaboost_scope_and_target_mass_are_refused(boost, message):
    from shared.chat import chat_params
    from shared.settings import load_settings

    settings = load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None)
    body = {"model": settings.model.name, "instaboost": boost,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    with pytest.raises(ValidationError) as err:
        chat_params(body, settings)
    assert err.value.errors[0]["field"].startswith("instaboost.") and message in err.value.errors[0]["message"]
