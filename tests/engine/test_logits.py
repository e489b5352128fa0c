"""Sampling extras as per-row logits processors (worker.engine.logits), on the real model in both engines."""

import pytest
import torch

from shared.errors import ValidationError
from shared.spec import BoostSpec, GenerationParams, GenerationRequest
from tests.fixtures.model import INSTRUCTION, QUERY
from worker.engine.logits import presence_frequency, row_processors

SPEC = BoostSpec(multiplier=4.0)
# Greedy with every processor at once, and seeded sampling with every processor and filter.
EXTRAS = [dict(repetition_penalty=1.5, presence_penalty=1.5, frequency_penalty=1.0, logit_bias={11: 5.0, 30: -100.0}),
          dict(temperature=0.9, seed=5, top_k=20, min_p=0.05, top_p=0.9, repetition_penalty=1.3,
               frequency_penalty=0.5, logit_bias={11: 3.0})]


def _req(max_new_tokens=10, **params):
    return GenerationRequest(INSTRUCTION, QUERY, SPEC, GenerationParams(max_new_tokens=max_new_tokens, **params))


def _tokens(engine, req):
    return engine.tokenizer(engine.generate([req])[0].text, add_special_tokens=False)["input_ids"]


def test_openai_penalties_count_generated_tokens_only():
    ids = torch.tensor([5, 5, 7, 7, 7, 9])  # prompt 5 5 7; generated 7 7 9
    scores = presence_frequency(0.5, 2.0, prompt_len=3)(ids, torch.zeros(12))
    assert scores[7].item() == pytest.approx(-(2 * 2.0 + 0.5))
    assert scores[9].item() == pytest.approx(-(2.0 + 0.5))
    assert scores[5].item() == 0.0 and scores[0].item() == 0.0
    assert row_processors(GenerationParams(), 3) == []  # the defaults add nothing to the loop


@pytest.mark.parametrize("extra", EXTRAS, ids=["greedy", "sampled"])
def test_both_engines_give_identical_tokens_with_the_extras(fast_engine, tl_engine, extra):
    req = _req(max_new_tokens=6, **extra)
    fast = fast_engine.generate([req])[0]
    assert tl_engine.generate([req])[0].text == fast.text
    # A row's processors see its own unpadded tokens: the same inside a batch with a longer prompt beside it.
    other = GenerationRequest(INSTRUCTION * 3, QUERY, SPEC, GenerationParams(max_new_tokens=4))
    assert fast_engine.generate([other, req])[1].text == fast.text


def test_logit_bias_minus_100_removes_the_greedy_token(fast_engine):
    plain = fast_engine.generate([_req(max_new_tokens=1)])[0]
    first = fast_engine.tokenizer(plain.text, add_special_tokens=False)["input_ids"][0]
    banned = fast_engine.generate([_req(max_new_tokens=1, logit_bias={first: -100})])[0]
    assert banned.text and banned.text != plain.text
    forced = fast_engine.generate([_req(max_new_tokens=2, logit_bias={first + 1: 100})])[0]
    assert forced.text.startswith(fast_engine.tokenizer.decode([first + 1]).strip())  # +100 forces a token


def test_repetition_penalty_reduces_repeats(fast_engine):
    def repeats(**extra):
        ids = _tokens(fast_engine, GenerationRequest("Write a poem.", "Roses are red, roses are red,", SPEC,
                                                     GenerationParams(max_new_tokens=16, **extra)))
        return len(ids) - len(set(ids))

    assert repeats(repetition_penalty=2.0) < repeats()
    assert repeats(frequency_penalty=2.0, presence_penalty=2.0) < repeats()


def test_top_k_1_equals_greedy(fast_engine):
    greedy = fast_engine.generate([_req(max_new_tokens=6)])[0].text
    assert fast_engine.generate([_req(max_new_tokens=6, temperature=1.5, seed=3, top_k=1)])[0].text == greedy
    assert fast_engine.generate([_req(max_new_tokens=6, temperature=1.5, seed=3, min_p=1.0)])[0].text == greedy
    assert fast_engine.generate([_req(max_new_tokens=6, temperature=1.5, seed=3)])[0].text != greedy


def test_a_token_id_past_the_vocabulary_is_refused(fast_engine):
    with pytest.raises(ValidationError) as exc:
        fast_engine.generate([_req(logit_bias={10**7: 1.0})])
    assert exc.value.field == "logit_bias"
