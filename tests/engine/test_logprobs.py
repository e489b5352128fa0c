"""Logprobs on the real model: a prompt's echoed logprobs are the plain model's log-softmax (M = 1), a boost
changes only the positions after its span, batching changes nothing, and generated tokens carry their own."""

from __future__ import annotations

import pytest
import torch

from shared.spec import BoostSpec, ChatMessage, GenerationParams, GenerationRequest, Segment
from tests.fixtures.model import fast_engine, plain_model, tl_engine  # noqa: F401  (fixtures)

TEXT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


def scoring(ids, spans=(), k=3, max_new_tokens=0, logprobs=None):
    return GenerationRequest(prompt_ids=tuple(ids), prompt_spans=tuple(spans), prompt_logprobs=k, logprobs=logprobs,
                             spec=BoostSpec(layers="all", placement="raw"),
                             params=GenerationParams(max_new_tokens=max_new_tokens))


@pytest.fixture(scope="module")
def ids(fast_engine):  # noqa: F811
    return fast_engine.tokenizer(TEXT, add_special_tokens=False)["input_ids"]


def reference(plain_model, ids):  # noqa: F811
    with torch.inference_mode():
        logits = plain_model.model(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [lp[j, ids[j + 1]].item() for j in range(len(ids) - 1)], lp


@pytest.mark.parametrize("engine", ["fast_engine", "tl_engine"])
def test_prompt_logprobs_equal_the_plain_models_log_softmax(request, engine, ids, plain_model):  # noqa: F811
    eng = request.getfixturevalue(engine)
    want, lp = reference(plain_model, ids)
    [res] = eng.generate([scoring(ids, k=3)])
    got = res.logprobs["prompt"]
    assert got["ids"] == list(ids) and got["logprobs"][0] is None
    assert max(abs(a - b) for a, b in zip(got["logprobs"][1:], want)) <= 1e-4
    top = torch.topk(lp[3], 3)
    assert [t for t, _ in got["top"][4]] == eng.tokenizer.batch_decode([[i] for i in top.indices.tolist()])
    assert res.output_tokens == 0 and res.text == "" and res.logprobs["output"] is None


def test_boost_keeps_the_positions_before_its_span_and_changes_later_ones(fast_engine, ids):  # noqa: F811
    plain = fast_engine.generate([scoring(ids)])[0].logprobs["prompt"]["logprobs"]
    start, end = 8, 12
    boosted = fast_engine.generate([scoring(ids, [(start, end, 10.0)])])[0].logprobs["prompt"]["logprobs"]
    # logprobs[j] scores token j, predicted at position j - 1: positions before the span's end see no boosted key
    # until `start`, so every token up to start inclusive keeps its logprob.
    assert max(abs(a - b) for a, b in zip(plain[1:start + 1], boosted[1:start + 1])) <= 1e-4
    assert max(abs(a - b) for a, b in zip(plain[end + 1:], boosted[end + 1:])) > 1e-2


def test_scoring_rows_batch_with_other_rows_and_equal_alone(fast_engine, ids):  # noqa: F811
    short = ids[:7]
    chat = GenerationRequest.chat([ChatMessage("user", (Segment("Say hi."),))],
                                  params=GenerationParams(max_new_tokens=4))
    alone = fast_engine.generate([scoring(ids)])[0].logprobs["prompt"]["logprobs"]
    both = fast_engine.generate([scoring(short), scoring(ids), chat])
    assert max(abs(a - b) for a, b in zip(both[1].logprobs["prompt"]["logprobs"][1:], alone[1:])) <= 1e-4
    assert both[0].logprobs["prompt"]["ids"] == list(short)
    assert both[2].logprobs is None and both[2].output_tokens > 0


def test_generated_tokens_carry_their_raw_logprobs(fast_engine, ids, plain_model):  # noqa: F811
    _, lp = reference(plain_model, ids)
    [one] = fast_engine.generate([scoring(ids, max_new_tokens=1, logprobs=2)])  # the prefill answers it
    [gen] = fast_engine.generate([scoring(ids, max_new_tokens=3, logprobs=2)])  # generate() answers it
    first = int(lp[-1].argmax())
    for res in (one, gen):
        out = res.logprobs["output"]
        assert out["ids"][0] == first and abs(out["logprobs"][0] - lp[-1, first].item()) <= 1e-4
        assert len(out["top"][0]) == 2 and out["top"][0][0][0] == out["tokens"][0]
    assert len(gen.logprobs["output"]["ids"]) == gen.output_tokens == 3
    assert gen.text.startswith(one.text)
