"""The boost math on small tensors: hook form and bias form are the same operation."""

import math

import pytest
import torch

from shared.errors import ValidationError
from shared.spec import BoostSpec, select_heads
from worker.engine import boost as boost_math


def _scores(b=2, h=3, q=4, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, q, k, generator=g, dtype=torch.float64)


def test_bias_equals_multiply_and_renormalize():
    scores = _scores()
    specs = [BoostSpec(multiplier=7.0), BoostSpec(multiplier=0.25, layers=(0,))]
    boost = boost_math.build_padded_boost(specs, [(1, 3), (2, 5)], 6, n_layers=2, n_heads=3)
    factors = boost_math.boost_factors(boost, 0, 6, torch.float64)
    hooked = boost_math.boost_pattern(torch.softmax(scores, -1), factors)
    biased = torch.softmax(scores + boost_math.bias_for_layer(boost, 0, 6, torch.float64), -1)
    assert torch.allclose(hooked, biased, atol=1e-12)
    # Row 0 boosts keys 1..2 by 7: their share must rise, everything else falls, rows still sum to 1.
    base = torch.softmax(scores, -1)
    assert (hooked[0, :, :, 1:3].sum(-1) > base[0, :, :, 1:3].sum(-1)).all()
    assert (hooked[1, :, :, 2:5].sum(-1) < base[1, :, :, 2:5].sum(-1)).all()  # M < 1 de-boosts
    assert torch.allclose(hooked.sum(-1), torch.ones(2, 3, 4, dtype=torch.float64))


def test_unboosted_layer_and_identity_have_no_bias():
    boost = boost_math.build_padded_boost([BoostSpec(multiplier=1.0), BoostSpec(multiplier=5.0, layers=(1,))],
                                [(0, 2), (0, 2)], 4, n_layers=3, n_heads=2)
    assert boost_math.bias_for_layer(boost, 0, 4) is None
    bias = boost_math.bias_for_layer(boost, 1, 4)
    assert torch.all(bias[0] == 0)  # the M = 1 row gets nothing
    assert torch.allclose(bias[1, :, 0, :2], torch.full((2, 2), math.log(5.0)))
    assert torch.all(bias[1, :, 0, 2:] == 0)


def test_bias_extends_past_prompt_for_generated_keys():
    boost = boost_math.build_padded_boost([BoostSpec(multiplier=2.0)], [(1, 2)], 3, n_layers=1, n_heads=1)
    bias = boost_math.bias_for_layer(boost, 0, 5)
    assert bias.shape == (1, 1, 1, 5)
    assert bias[0, 0, 0].tolist() == [0, pytest.approx(math.log(2)), 0, 0, 0]


def test_head_fraction_is_seeded_and_reproducible():
    a = select_heads(range(30), 9, 0.2, seed=42)
    b = select_heads(range(30), 9, 0.2, seed=42)
    c = select_heads(range(30), 9, 0.2, seed=7)
    assert a == b and a != c
    assert all(len(h) == 2 for h in a.values())
    bias = boost_math.bias_for_layer(boost_math.build_padded_boost([BoostSpec(multiplier=3, head_fraction=0.2)], [(0, 1)], 2, 30, 9), 4, 2)
    boosted_heads = [h for h in range(9) if bias[0, h, 0, 0] != 0]
    assert tuple(boosted_heads) == a[4]


def test_middle_layers_and_validation():
    assert BoostSpec(layers="middle").resolve_layers(30) == (8, 9, 10, 11, 12)
    with pytest.warns(UserWarning, match="clipped"):
        assert BoostSpec(layers="middle", start_layer=28, num_middle_layers=5).resolve_layers(30) == (28, 29)
    with pytest.raises(ValidationError, match="out of range"):
        BoostSpec(layers=(3, 30)).resolve_layers(30)
    with pytest.raises(ValidationError, match="out of range"):
        BoostSpec(layers="middle", start_layer=30).resolve_layers(30)
    with pytest.raises(ValidationError, match="out of range"):
        BoostSpec(heads={0: (9,)}, layers=(0,)).resolve_heads(30, 9)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "abc", 1e9, 10**400, None, True])
def test_bad_multipliers_are_refused(bad):
    with pytest.raises(ValidationError) as exc:
        BoostSpec(multiplier=bad)
    assert exc.value.field == "multiplier"


def test_pattern_hook_leaves_fully_masked_rows_at_zero():
    pattern = torch.zeros(1, 1, 1, 3)
    boost = boost_math.build_padded_boost([BoostSpec(multiplier=4)], [(0, 1)], 3, 1, 1)
    out = boost_math.make_pattern_hook(boost, 0)(pattern)
    assert torch.all(out == 0) and not torch.isnan(out).any()


def test_several_spans_each_with_its_own_multiplier():
    scores = _scores(b=2, k=8)
    specs = [BoostSpec(layers=(0,)), BoostSpec(multiplier=3.0)]
    # Row 0: keys 1..2 by 4, keys 5..6 by 0.5; row 1: one span in the old (start, end) form, M from its spec.
    boost = boost_math.build_padded_boost(specs, [[(1, 3, 4.0), (5, 7, 0.5)], (2, 4)], 8, n_layers=1, n_heads=3)
    assert boost.key_factors[0].tolist() == [1, 4, 4, 1, 1, 0.5, 0.5, 1]
    assert boost.key_factors[1].tolist() == [1, 1, 3, 3, 1, 1, 1, 1]
    assert boost.key_mask[0].tolist() == [False, True, True, False, False, True, True, False]
    bias = boost_math.bias_for_layer(boost, 0, 8, torch.float64)
    assert torch.allclose(bias[0, 0, 0], torch.tensor([0, math.log(4), math.log(4), 0, 0, math.log(0.5),
                                                       math.log(0.5), 0], dtype=torch.float64))
    hooked = boost_math.boost_pattern(torch.softmax(scores, -1), boost_math.boost_factors(boost, 0, 8, torch.float64))
    biased = torch.softmax(scores + bias, -1)
    assert torch.allclose(hooked, biased, atol=1e-12)


def test_one_span_list_equals_the_single_span_form():
    spec = [BoostSpec(multiplier=6.0, head_fraction=0.5)]
    a = boost_math.build_padded_boost(spec, [(2, 5)], 7, n_layers=3, n_heads=4)
    b = boost_math.build_padded_boost(spec, [[(2, 5, 6.0)]], 7, n_layers=3, n_heads=4)
    c = boost_math.build_padded_boost(spec, [[(2, 5, None)]], 7, n_layers=3, n_heads=4)
    for layer in range(3):
        assert torch.equal(boost_math.bias_for_layer(a, layer, 9), boost_math.bias_for_layer(b, layer, 9))
        assert torch.equal(boost_math.bias_for_layer(a, layer, 9), boost_math.bias_for_layer(c, layer, 9))


def test_overlapping_spans_multiply_and_all_ones_boost_nothing():
    boost = boost_math.build_padded_boost([BoostSpec()], [[(0, 3, 2.0), (2, 4, 5.0)]], 5, n_layers=1, n_heads=1)
    assert boost.key_factors[0].tolist() == [2, 2, 10, 5, 1]
    ones = boost_math.build_padded_boost([BoostSpec(multiplier=7.0)], [[(0, 2, 1.0), (3, 4, 1.0)]], 5, 1, 1)
    assert ones.heads == {} and boost_math.bias_for_layer(ones, 0, 5) is None
    none = boost_math.build_padded_boost([BoostSpec(multiplier=7.0)], [[]], 5, 1, 1)
    assert none.heads == {} and not none.key_mask.any()


def test_keys_of_a_sliding_window_cache_are_the_last_positions():
    # 10 positions processed; a sliding-window cache hands attention the last 4 keys: positions 6..9.
    boost = boost_math.build_padded_boost([BoostSpec(multiplier=3.0)], [(1, 3)], 8, n_layers=1, n_heads=1)
    assert boost_math.key_offset(4, 10) == 6 and boost_math.key_offset(10, 10) == 0
    assert boost_math.key_offset(16, 10) == 0
    assert boost_math.bias_for_layer(boost, 0, 4, total=10)[0, 0, 0].tolist() == [0, 0, 0, 0]  # span left the window
    bias = boost_math.bias_for_layer(boost, 0, 4, total=5)[0, 0, 0]  # positions 1..4: the span is keys 0 and 1
    assert bias.tolist() == [pytest.approx(math.log(3)), pytest.approx(math.log(3)), 0, 0]
    # A full layer (kv_len == total) and a static cache (kv_len > total) keep key index == position.
    assert boost_math.bias_for_layer(boost, 0, 10, total=10).equal(boost_math.bias_for_layer(boost, 0, 10))
    assert boost_math.bias_for_layer(boost, 0, 16, total=10).equal(boost_math.bias_for_layer(boost, 0, 16))


def test_pattern_hook_reads_the_window_offset_at_each_call():
    boost = boost_math.build_padded_boost([BoostSpec(multiplier=4.0)], [(0, 2)], 6, 1, 1)
    seen = {"total": 6}
    hook = boost_math.make_pattern_hook(boost, 0, total=lambda: seen["total"])
    pattern = torch.full((1, 1, 1, 3), 1 / 3)
    assert torch.allclose(hook(pattern), pattern)  # keys 3..5: nothing of the span
    seen["total"] = 4  # keys 1..3: position 1 is in the span
    out = hook(pattern)[0, 0, 0]
    assert out.tolist() == pytest.approx([4 / 6, 1 / 6, 1 / 6])
    assert boost_math.make_pattern_hook(boost, 0)(pattern)[0, 0, 0].tolist() == pytest.approx([4 / 9, 4 / 9, 1 / 9])


# -- scope and target mass (issue 21) -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(scope="decode"), dict(scope=""), dict(target_mass=0), dict(target_mass=1),
                                 dict(target_mass=1.5), dict(target_mass=-0.2), dict(target_mass=True),
                                 dict(target_mass="0.3"), dict(target_mass=float("nan")),
                                 dict(target_mass=0.3, multiplier=0.5)])
def test_bad_scope_and_target_mass_are_refused(bad):
    with pytest.raises(ValidationError) as err:
        BoostSpec(**bad)
    assert err.value.field == ("scope" if "scope" in bad else "target_mass")


def test_target_mass_with_a_deboosted_span_is_refused():
    from shared.spec import ChatMessage, GenerationRequest, Segment

    msgs = [ChatMessage("system", (Segment("Be brief.", 0.5),)), ChatMessage.plain("user", "Hi")]
    GenerationRequest.chat(msgs, BoostSpec())  # a de-boost alone is fine
    with pytest.raises(ValidationError, match="lowers it"):
        GenerationRequest.chat(msgs, BoostSpec(target_mass=0.4))


def test_identity_needs_m_one_and_no_target():
    assert BoostSpec(scope="prompt").is_identity
    assert not BoostSpec(target_mass=0.2).is_identity


@pytest.mark.parametrize("a", [1e-6, 0.05, 0.29, 0.3, 0.9, 0.0])
def test_target_factor_math_and_tensor_forms_agree_and_reach_the_target(a):
    from shared.spec import target_log_factor

    p = 0.3
    scalar = target_log_factor(a, p)
    tensor = boost_math.target_log_factors(torch.tensor([[[a]]], dtype=torch.float32), torch.tensor([p]))
    assert float(tensor) == pytest.approx(scalar, rel=1e-5, abs=1e-6)
    if 0 < a < p:
        f = math.exp(scalar)
        assert a * f / (a * f + 1 - a) == pytest.approx(p)  # the new share is exactly p
    else:
        assert scalar == 0.0  # already at or above p, or nothing to raise
    nan = boost_math.target_log_factors(torch.tensor([[[a]]]), torch.tensor([float("nan")]))
    assert float(nan) == 0.0  # a row without a target


def test_target_mass_hook_and_bias_give_the_target_share_after_m():
    scores = _scores(b=2, h=3, q=5, k=7, seed=3).float()
    specs = [BoostSpec(target_mass=0.6), BoostSpec(multiplier=2.0, target_mass=0.5, layers=(0,))]
    boost = boost_math.build_padded_boost(specs, [(1, 3), (2, 5)], 7, n_layers=2, n_heads=3)
    base = torch.softmax(scores, -1)
    hooked = boost_math.boost_pattern(base, boost_math.pattern_factors(boost, 0, base))
    spans = [(1, 3), (2, 5)]
    m_only = boost_math.boost_pattern(base, boost_math.boost_factors(boost, 0, 7))
    for row, (s, e) in enumerate(spans):
        before, after = m_only[row, ..., s:e].sum(-1), hooked[row, ..., s:e].sum(-1)
        p = specs[row].target_mass
        assert torch.allclose(after, torch.clamp(before, min=p), atol=1e-5)
    # The same as a pre-softmax bias: log M, plus log F from the share after M.
    share = (m_only * boost.key_mask[:, None, None, :]).sum(-1)
    bias = boost_math.bias_for_layer(boost, 0, 7) + torch.where(
        boost_math.boost_cells(boost, 0, 7), boost_math.target_log_factors(share, boost.target)[..., None],
        torch.zeros(()))
    assert torch.allclose(torch.softmax(scores + bias, -1), hooked, atol=1e-6)


def test_scope_gates_queries_by_position():
    specs = [BoostSpec(multiplier=4.0), BoostSpec(multiplier=4.0, scope="generated"),
             BoostSpec(multiplier=4.0, scope="prompt")]
    boost = boost_math.build_padded_boost(specs, [(0, 2)] * 3, 6, n_layers=1, n_heads=2, prompt_len=4)
    # A forward over all 6 positions: queries 3, 4, 5 decode (3 is the prompt's last, its output is generated).
    gate = boost_math.query_gate(boost, 6, 6)
    assert gate.tolist() == [[True] * 6, [False] * 3 + [True] * 3, [True] * 3 + [False] * 3]
    assert boost_math.query_gate(boost, 1, 6).tolist() == [[True], [True], [False]]  # one decoding step
    assert boost_math.query_gate(boost, 3, 3).tolist() == [[True], [False], [True]]  # a prefill before the last
    only_all = boost_math.build_padded_boost(specs[:1], [(0, 2)], 6, n_layers=1, n_heads=2)
    assert boost_math.query_gate(only_all, 6, 6) is None
    base = torch.softmax(_scores(b=3, h=2, q=6, k=6).float(), -1)
    factors = boost_math.pattern_factors(boost, 0, base)
    assert torch.all(factors[1, :, :3] == 1) and torch.all(factors[1, :, 3:, :2] == 4)
    assert torch.all(factors[2, :, 3:] == 1) and torch.all(factors[2, :, :3, :2] == 4)
