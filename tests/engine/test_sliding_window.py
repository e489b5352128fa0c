"""Sliding-window layers with a KV cache: both engines boost the instruction's absolute key positions.

A sliding-window layer's cache (transformers' DynamicSlidingWindowLayer) hands attention only the last
window keys once the sequence is longer than the window, so key index k is no longer position k. This runs
on a tiny random Gemma 3 (window 8, mixed sliding and full layers) with the default model's tokenizer: no
download, about a second per engine. The real Gemma 3 270M is checked in test_engine_gemma.py.
"""

import copy

import pytest
import torch

from bench.equivalence import cached_and_full
from shared.spec import BoostSpec, GenerationParams, GenerationRequest

WINDOW = 8
INSTRUCTION = "Answer only in French."
STEPS = 4  # prompt positions decoded one at a time with the cache (bench/equivalence.py cached_and_full)
QUERY = "Tell me about the rivers, bridges, markets and old churches of the city of Berlin, please."


@pytest.fixture(scope="module")
def tiny():
    """(fast engine, transformerlens engine) on identical copies of a tiny random Gemma 3."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from worker.engine.fast import FastEngine
    from worker.engine.lens import TransformerLensEngine
    from worker.engine.loading import LoadedModel, ModelSource, _gguf_to_folder, resolve_model

    tok = AutoTokenizer.from_pretrained(str(_gguf_to_folder(resolve_model("smollm2-135m-instruct"))))
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    cfg = Gemma3TextConfig(architectures=["Gemma3ForCausalLM"], vocab_size=len(tok), hidden_size=64,
                           intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                           sliding_window=WINDOW, max_position_embeddings=256, initializer_range=0.2,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                        "sliding_attention"],
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    engines = []
    for cls in (FastEngine, TransformerLensEngine):
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(copy.deepcopy(cfg)).eval()  # its own config: the bridge rewrites it
        model.generation_config.eos_token_id = tok.eos_token_id
        src = ModelSource("tiny-gemma3", "folder", "", None, "google/gemma-3-270m")
        engines.append(cls(LoadedModel(src, model, tok, "cpu", torch.float32)))
    return engines


def _request(multiplier, **spec):
    return GenerationRequest(INSTRUCTION, QUERY, BoostSpec(multiplier=multiplier, placement="raw", **spec),
                             GenerationParams(max_new_tokens=6))


def test_the_prompt_outgrows_the_window(tiny):
    fast, _ = tiny
    p = fast.prompt(_request(1.0))
    assert p.span[1] + WINDOW < len(p.input_ids) - 4, "the instruction must leave the window while decoding"


@pytest.mark.parametrize("which", ["fast", "transformerlens"])
@pytest.mark.parametrize("multiplier", [1.0, 50.0])
def test_cached_decoding_equals_a_full_forward(tiny, which, multiplier):
    engine = tiny[0] if which == "fast" else tiny[1]
    cached, full = cached_and_full(engine, _request(multiplier), STEPS)
    diff = (cached - full).abs().max().item()
    assert diff <= 1e-4, f"{which}: cached decoding differs from the uncached forward by {diff:.3g}"


def test_boost_matters_while_decoding(tiny):
    # Guard against a vacuous pass: the boost must move the decoded logits (on the full layer at least).
    fast, _ = tiny
    base, _ = cached_and_full(fast, _request(1.0), STEPS)
    boosted, _ = cached_and_full(fast, _request(50.0), STEPS)
    assert (base - boosted).abs().max().item() > 1e-2


def test_engines_agree_past_the_window(tiny):
    fast, tl = tiny
    for spec in (dict(multiplier=50.0), dict(multiplier=0.2, layers=(0, 1)), dict(multiplier=9.0, head_fraction=0.5)):
        req = _request(**spec)
        diff = (fast.logits(req) - tl.logits(req)).abs().max().item()
        assert diff <= 1e-4, (spec, diff)
        a, b = cached_and_full(fast, req, STEPS)[0], cached_and_full(tl, req, STEPS)[0]
        assert (a - b).abs().max().item() <= 1e-4, spec


def test_generate_uses_absolute_key_positions(tiny):
    """Through HF generate (prefill + cached steps): the fast engine and the reference agree token for token
    with the uncached reference, and the attention mass is read on the same keys."""
    fast, tl = tiny
    req = _request(50.0)
    uncached = tl.generate_uncached(req)
    got_fast = fast.generate([req], attention=True)[0]
    got_tl = tl.generate([req], attention=True)[0]
    ids = [fast.tokenizer.encode(r.text, add_special_tokens=False) for r in (got_fast, got_tl)]
    assert got_fast.text == got_tl.text == fast.tokenizer.decode(uncached, skip_special_tokens=True).strip(), ids
    for label in ("unboosted", "boosted"):
        assert got_fast.attention_mass[label] == pytest.approx(got_tl.attention_mass[label], abs=1e-4)
