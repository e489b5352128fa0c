"""The Responses API (/v1/responses) driven by the real `openai` SDK against a live server and a real worker.

A response is a chat job: greedy, it answers exactly what the same messages answer on /v1/chat/completions.
Generations stay tiny.
"""

from __future__ import annotations

import pytest

from tests.system.test_openai_api import MODEL, TOKEN, client, live_server, stored_job  # noqa: F401  (fixtures)

openai = pytest.importorskip("openai")

INSTRUCTIONS = "Answer only in French."
QUESTION = "What is the capital of Germany? Explain briefly."


def chat_text(client, messages: list[dict], max_tokens: int, **kw) -> str:  # noqa: F811
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0,
                                          **kw).choices[0].message.content


def test_a_response_answers_what_the_same_chat_answers_and_is_stored(client, pg_url):  # noqa: F811
    resp = client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=12,
                                   temperature=0, metadata={"experiment": "r1"}, user="alice", store=True)
    want = chat_text(client, [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}],
                     12)
    assert resp.output_text == want and want
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == MODEL
    assert resp.status in ("completed", "incomplete")
    if resp.status == "incomplete":
        assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[0].type == "message" and resp.output[0].role == "assistant"
    assert resp.usage.output_tokens <= 12 and resp.usage.input_tokens > 10
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.metadata == {"experiment": "r1"} and resp.user == "alice" and resp.instructions == INSTRUCTIONS
    status, kind, params, runs = stored_job(pg_url, int(resp.id[5:]))  # resp_<job id>
    assert (status, kind, params["api"]) == ("succeeded", "chat", "responses")
    assert runs[0][2] == want
    again = client.responses.retrieve(resp.id)
    assert again.output_text == want and again.status == resp.status and again.id == resp.id
    # Input as message items with input_text parts is the same request.
    items = client.responses.create(
        model=MODEL, max_output_tokens=12, temperature=0,
        input=[{"role": "developer", "content": [{"type": "input_text", "text": INSTRUCTIONS}]},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    assert items.output_text == want


def test_streaming_sends_the_responses_events_and_the_same_text(client):  # noqa: F811
    kwargs = dict(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=16, temperature=0,
                  extra_body={"instaboost": {"multiplier": 5}})
    whole = client.responses.create(**kwargs)
    events = list(client.responses.create(stream=True, **kwargs))
    kinds = [e.type for e in events]
    final = "response.incomplete" if whole.status == "incomplete" else "response.completed"
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          final]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2 and len(kinds) == 8 + len(deltas)  # really streamed in pieces, nothing else between
    assert "".join(d.delta for d in deltas) == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == whole.output_text and done.status == whole.status
    assert done.usage.output_tokens == whole.usage.output_tokens
    assert {events[0].response.id, done.id} == {done.id} and done.id.startswith("resp_")
    assert {d.item_id for d in deltas} == {events[2].item.id}
    assert client.responses.retrieve(done.id).output_text == whole.output_text  # the stream's job is stored too


def test_previous_response_id_continues_the_conversation(client, pg_url):  # noqa: F811
    first = client.responses.create(model=MODEL, input="My name is Ada. Say hello to me.", max_output_tokens=10,
                                    temperature=0, instructions="Be brief.")
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=10, temperature=0, instructions="Answer in one word.")
    assert second.previous_response_id == first.id and second.instructions == "Answer in one word."
    # Exactly the chat this conversation is: the new instructions, the earlier turn and its answer, the new input.
    want = chat_text(client, [{"role": "system", "content": "Answer in one word."},
                              {"role": "user", "content": "My name is Ada. Say hello to me."},
                              {"role": "assistant", "content": first.output_text},
                              {"role": "user", "content": "What is my name?"}], 10)
    assert second.output_text == want
    _, _, params, _ = stored_job(pg_url, int(second.id[5:]))
    assert [m["role"] for m in params["messages"]] == ["system", "user", "assistant", "user"]
    # A third turn carries both earlier turns.
    third = client.responses.create(model=MODEL, input="Thanks.", previous_response_id=second.id,
                                    max_output_tokens=4, temperature=0)
    _, _, params, _ = stored_job(pg_url, int(third.id[5:]))
    assert ["".join(t for t, _ in m["segments"]) for m in params["messages"]] == [
        "My name is Ada. Say hello to me.", first.output_text, "What is my name?", second.output_text, "Thanks."]


def test_the_boost_in_extra_body_boosts_the_instructions(client, pg_url):  # noqa: F811
    plain = client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=12,
                                    temperature=0)
    boosted = client.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=12,
                                      temperature=0, extra_body={"instaboost": {"multiplier": 30, "layers": "all"}})
    _, _, params, runs = stored_job(pg_url, int(boosted.id[5:]))
    assert params["messages"][0]["segments"] == [[INSTRUCTIONS, 30.0]] and runs[0][1] == 30.0
    assert boosted.output_text != plain.output_text


@pytest.mark.parametrize("kwargs, param", [
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]}, "tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "input[0].content[0]"),
    ({"input": 42}, "input"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"previous_response_id": "resp_987654321"}, "previous_response_id"),
])
def test_unsupported_input_is_a_clean_400(client, kwargs, param):  # noqa: F811
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(**{"model": MODEL, "input": "Hi", "max_output_tokens": 4, **kwargs})
    assert exc.value.status_code == 400 and exc.value.body["param"] == param


def test_an_unknown_response_is_not_found(client):  # noqa: F811
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_987654321")
