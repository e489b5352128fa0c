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
        params(n=3, temperature=-1, instaboost={"multiplier": 0, "placement": "x"}, foo=1)
    assert {e["field"] for e in exc.value.errors} == {"n", "temperature", "instaboost.multiplier",
                                                      "instaboost.placement", "foo"}
