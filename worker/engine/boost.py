"""The boost math: mask and bias builders and the attention-pattern hook. No I/O, no model state.

InstaBoost multiplies the attention weight a query gives to instruction keys by M and renormalizes
the row. With pre-softmax scores s, softmax(s)_k * f_k / sum_j softmax(s)_j * f_j equals
softmax(s + log f)_k, so the same operation is an additive bias of log M on the instruction keys.
A row may boost several spans, each with its own M: f is M_i on span i's keys and 1 elsewhere.
The hook form (``boost_pattern``) is the reference; the bias form (``bias_for_layer``) runs inside
fused attention.

Two more knobs per row. Scope gates the boost by query position (``query_gate``): all queries, only the
decoding ones (positions >= prompt_len - 1, whose outputs are generated tokens) or only the prompt's others.
Target mass p raises, after M, each boosted head's share a on the boosted keys to at least p: one more
factor F = p(1-a)/(a(1-p)) on those keys per (head, query) when a < p (``target_log_factors``); the hook
multiplies by it, the fast engine adds log F, which needs a first measured by a cheap extra SDPA pass.

A row may also de-boost its boilerplate (worker.engine.prompt: the instruction turn's template tokens, position 0
left out) by spec.boilerplate_multiplier: one more span whose factor M_b < 1 joins key_factors on the same
cells (``boost_cells``). It is not a boosted span: a target mass measures and raises the share of the boosted
spans only (``target_cells``), and the attention mass is measured on them only (key_mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from shared.spec import MAX_TARGET_LOG_FACTOR, BoostSpec  # in shared/ so the web app validates without torch
from worker.engine.prompt import BOILERPLATE


# One row's boosted spans: [start, end) key positions and M (None: the row's spec.multiplier).
Span = tuple[int, int, "float | None"]


@dataclass
class PaddedBoost:
    """Per-group boost state: which keys, heads and factors apply to each row in each layer.

    key_mask: [B, K] bool, True on boosted keys (the union of the row's spans; K covers prompt + generated).
    key_factors: [B, K] float64, the factor f per key: M_i on span i's keys, M_b on the de-boosted
        boilerplate's, 1 elsewhere (a key inside two spans gets the product).
    heads: {layer: [B, H] bool}, True where the row boosts that head in that layer.
    prompt_len: query positions from prompt_len - 1 on are decoding queries (their outputs are generated
        tokens); the ones before are the prompt's (scope).
    boost_prompt, boost_generated: [B] bool, whether the row boosts those queries; None when every row
        boosts every query (scope "all").
    target: [B] float32 target mass p per row (NaN: none); None when no row has one.
    boilerplate_mask: [B, K] bool, True on the keys of the boilerplate a row de-boosts (M_b < 1); None when
        no row de-boosts any.
    """

    key_mask: torch.Tensor
    key_factors: torch.Tensor
    heads: dict[int, torch.Tensor]
    prompt_len: int = 0
    boost_prompt: torch.Tensor | None = None
    boost_generated: torch.Tensor | None = None
    target: torch.Tensor | None = None
    boilerplate_mask: torch.Tensor | None = None


def key_mask_from_spans(spans: Sequence[tuple[int, int]], length: int, device=None) -> torch.Tensor:
    """Return a [B, length] bool mask that is True on each row's [start, end) key span."""
    pos = torch.arange(length, device=device)
    starts = torch.tensor([s for s, _ in spans], device=device)[:, None]
    ends = torch.tensor([e for _, e in spans], device=device)[:, None]
    return (pos[None, :] >= starts) & (pos[None, :] < ends)


def row_spans(spec: BoostSpec, entry) -> list[tuple[int, int, float]]:
    """Return one row's boosted spans as (start, end, M): a (start, end) pair means one span boosted by
    spec.multiplier; boilerplate spans (M = BOILERPLATE) are left out (row_boilerplate)."""
    return [(int(s), int(e), spec.multiplier if m is None else float(m)) for s, e, m in _triples(entry)
            if m != BOILERPLATE]


def row_boilerplate(spec: BoostSpec, entry) -> list[tuple[int, int]]:
    """Return the row's boilerplate spans that its spec de-boosts: none when boilerplate_multiplier is 1."""
    if spec.boilerplate_multiplier == 1.0:
        return []
    return [(int(s), int(e)) for s, e, m in _triples(entry) if m == BOILERPLATE]


def _triples(entry) -> list:
    """A row's spans as (start, end, M) triples: a bare (start, end) pair is the instruction (M None)."""
    if len(entry) == 2 and all(isinstance(x, int) for x in entry):
        return [(entry[0], entry[1], None)]
    return list(entry)


def build_padded_boost(specs: Sequence[BoostSpec], spans: Sequence, length: int,
                      n_layers: int, n_heads: int, device=None, keep_identity: bool = False,
                      prompt_len: int | None = None) -> PaddedBoost:
    """Resolve each row's spec and spans into key factors, per-layer head masks, scopes and target masses.

    spans[row] is either one (start, end) pair, boosted by the spec's multiplier, or a list of
    (start, end, M) spans, each with its own M (None: the spec's). Rows whose every M is 1 and that have
    no target mass boost nothing unless kept. prompt_len: the (padded) prompt's length, default length.
    """
    heads: dict[int, torch.Tensor] = {}
    mask = torch.zeros(len(specs), length, dtype=torch.bool, device=device)
    factors = torch.ones(len(specs), length, dtype=torch.float64, device=device)
    low = None
    for row, (spec, entry) in enumerate(zip(specs, spans, strict=True)):
        resolved = row_spans(spec, entry)
        for start, end, m in resolved:
            mask[row, start:end] = True
            factors[row, start:end] *= m
        boilerplate = row_boilerplate(spec, entry)
        for start, end in boilerplate:
            if low is None:
                low = torch.zeros(len(specs), length, dtype=torch.bool, device=device)
            low[row, start:end] = True
            factors[row, start:end] *= spec.boilerplate_multiplier
        if (all(m == 1.0 for _, _, m in resolved) and spec.target_mass is None and not boilerplate
                and not keep_identity):
            continue
        for layer, hs in spec.resolve_heads(n_layers, n_heads).items():
            if layer not in heads:
                heads[layer] = torch.zeros(len(specs), n_heads, dtype=torch.bool, device=device)
            heads[layer][row, list(hs)] = True
    scopes = [s.scope for s in specs]
    gates = {}
    if any(sc != "all" for sc in scopes):
        gates = {"boost_prompt": torch.tensor([sc != "generated" for sc in scopes], device=device),
                 "boost_generated": torch.tensor([sc != "prompt" for sc in scopes], device=device)}
    targets = [s.target_mass for s in specs]
    target = None
    if any(t is not None for t in targets):
        target = torch.tensor([float("nan") if t is None else t for t in targets], dtype=torch.float32,
                              device=device)
    return PaddedBoost(key_mask=mask, key_factors=factors, heads=heads,
                      prompt_len=length if prompt_len is None else int(prompt_len), target=target,
                      boilerplate_mask=low, **gates)


def query_gate(boost: PaddedBoost, q_len: int, kv_len: int, total: int | None = None) -> torch.Tensor | None:
    """Return [B, Q] bool: which of this forward's q_len queries each row boosts (its scope); None: all of them.

    The queries are the last q_len positions processed (total, else kv_len); a gate that does not vary over
    the queries (a prefill before the last position, a decoding step) comes back as [B, 1].
    """
    if boost.boost_prompt is None:
        return None
    end = kv_len if total is None else int(total)
    pos = torch.arange(end - q_len, end, device=boost.boost_prompt.device)
    decoding = pos >= boost.prompt_len - 1
    if bool(decoding.all()) or not bool(decoding.any()):
        decoding = decoding[:1]
    return torch.where(decoding[None, :], boost.boost_generated[:, None], boost.boost_prompt[:, None])


def target_log_factors(share: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return log F per (row, head, query): log(p(1-a)/(a(1-p))) where 0 < a < p, else 0 (shared.spec.target_log_factor).

    share: [B, H, Q] the boosted keys' share a; target: [B] p per row (NaN: none). Computed in float32.
    """
    a = share.float()
    p = target.float()[:, None, None].to(a.device)
    raise_ = (a > 0) & (a < p)  # NaN p compares False: rows without a target stay unchanged
    a_safe = torch.where(raise_, a, torch.full_like(a, 0.5))
    p_safe = torch.where(torch.isnan(p), torch.full_like(p, 0.5), p)
    log_f = torch.log(p_safe) + torch.log1p(-a_safe) - torch.log(a_safe) - torch.log1p(-p_safe)
    return torch.where(raise_, log_f.clamp(max=MAX_TARGET_LOG_FACTOR), torch.zeros((), device=a.device))


def key_offset(kv_len: int, total: int | None) -> int:
    """Return the absolute position of the first of the kv_len keys an attention layer sees.

    total is how many positions the model has processed, the current forward's included. KV caches either
    keep every position at its own index (full-attention layers, and static caches, whose key length may
    exceed total), or only the most recent kv_len positions (sliding-window layers once the window is
    full: transformers' DynamicSlidingWindowLayer keeps the last window - 1 and appends the new ones).
    So the keys start at total - kv_len when that is positive, and at 0 otherwise.
    """
    return 0 if total is None else max(int(total) - kv_len, 0)


def key_window(mask: torch.Tensor, kv_len: int, total: int | None = None, fill=False) -> torch.Tensor:
    """Return the columns of a [..., K] absolute-position key tensor for the kv_len keys an attention sees."""
    start = key_offset(kv_len, total)
    return _fit(mask, start + kv_len, fill=fill)[..., start:]


def boost_cells(boost: PaddedBoost, layer: int, kv_len: int, total: int | None = None) -> torch.Tensor | None:
    """Return [B, H, 1, kv_len] bool: the (row, head, key) cells this layer scales (boosted spans and de-boosted
    boilerplate), or None."""
    keys = boost.key_mask if boost.boilerplate_mask is None else boost.key_mask | boost.boilerplate_mask
    return _cells(boost, layer, keys, kv_len, total)


def target_cells(boost: PaddedBoost, layer: int, kv_len: int, total: int | None = None) -> torch.Tensor | None:
    """Return [B, H, 1, kv_len] bool: the cells whose share a target mass raises (the boosted spans', never the
    boilerplate's), or None."""
    return _cells(boost, layer, boost.key_mask, kv_len, total)


def _cells(boost: PaddedBoost, layer: int, keys: torch.Tensor, kv_len: int, total: int | None) -> torch.Tensor | None:
    heads = boost.heads.get(layer)
    if heads is None:
        return None
    return heads[:, :, None, None] & key_window(keys, kv_len, total)[:, None, None, :]


def boost_factors(boost: PaddedBoost, layer: int, kv_len: int, dtype=torch.float32,
                  total: int | None = None) -> torch.Tensor | None:
    """Return [B, H, 1, kv_len] multiplicative factors (each span's M on boosted cells, 1 elsewhere), or None.

    total: positions processed so far (see key_offset); None when the keys are positions 0 .. kv_len - 1.
    """
    cells = boost_cells(boost, layer, kv_len, total)
    if cells is None:
        return None
    f = key_window(boost.key_factors, kv_len, total, fill=1.0).to(dtype)[:, None, None, :]
    return torch.where(cells, f, torch.ones((), dtype=dtype, device=f.device))


def bias_for_layer(boost: PaddedBoost, layer: int, kv_len: int, dtype=torch.float32,
                   total: int | None = None) -> torch.Tensor | None:
    """Return the [B, H, 1, kv_len] additive pre-softmax bias (log M_i on span i's cells), or None.

    total: positions processed so far (see key_offset); None when the keys are positions 0 .. kv_len - 1.
    """
    cells = boost_cells(boost, layer, kv_len, total)
    if cells is None:
        return None
    # log in float64, then cast: one span's bias is exactly what a single M gave before.
    log_f = torch.log(key_window(boost.key_factors, kv_len, total, fill=1.0)).to(dtype)[:, None, None, :]
    return torch.where(cells, log_f, torch.zeros((), dtype=dtype, device=log_f.device))


def boost_pattern(pattern: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Multiply post-softmax weights by the factors and renormalize each row (the paper's operation)."""
    scaled = pattern * factors.to(pattern.dtype)
    # Rows that attend nowhere (fully masked padding queries) stay zero instead of becoming NaN.
    return scaled / scaled.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(pattern.dtype).tiny)


def make_pattern_hook(boost: PaddedBoost, layer: int, total=None):
    """Return a TransformerLens hook for blocks.{layer}.attn.hook_pattern that applies the boost.

    total: a callable returning the positions the model has processed so far (see key_offset), read at each
    call; without it the pattern's keys are taken to be positions 0 .. K - 1, which sliding-window caches break.
    """

    def hook(pattern: torch.Tensor, hook=None) -> torch.Tensor:
        factors = pattern_factors(boost, layer, pattern.float(), total() if total is not None else None)
        if factors is None:
            return pattern
        return boost_pattern(pattern.float(), factors).to(pattern.dtype)

    return hook


def pattern_factors(boost: PaddedBoost, layer: int, pattern: torch.Tensor,
                    total: int | None = None) -> torch.Tensor | None:
    """Return the factors the hook multiplies a [B, H, Q, K] post-softmax pattern by, or None (layer not boosted).

    M on the boosted cells (M_b on the boilerplate's); then, for target-mass rows, F from the share a after M on
    the boosted cells only (target_cells); both only on the queries the row's scope boosts. [B, H, 1, K] unless target or scope make them vary per query.
    """
    kv_len, q_len = pattern.shape[-1], pattern.shape[-2]
    factors = boost_factors(boost, layer, kv_len, dtype=torch.float32, total=total)
    if factors is None:
        return None
    factors = factors.to(pattern.device)
    one = torch.ones((), dtype=factors.dtype, device=factors.device)
    if boost.target is not None:
        cells = target_cells(boost, layer, kv_len, total).to(pattern.device)
        share = (boost_pattern(pattern, factors) * cells).sum(-1)  # [B, H, Q] after M
        f = torch.exp(target_log_factors(share, boost.target))[..., None]
        factors = factors * torch.where(cells, f, one)
    gate = query_gate(boost, q_len, kv_len, total)
    if gate is not None:
        factors = torch.where(gate.to(pattern.device)[:, None, :, None], factors, one)
    return factors


def instruction_mass(weights: torch.Tensor, key_mask: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
    """Return [B] attention mass on the instruction: mean over heads and the given query positions.

    weights: [B, H, Q, K] post-softmax; key_mask: [B, K]; q_positions: [B, Q] bool selecting queries.
    """
    return instruction_mass_sum(weights, key_mask, q_positions) / q_positions.sum(-1).clamp_min(1)


def instruction_mass_sum(weights: torch.Tensor, key_mask: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
    """Return [B] the head-mean attention mass on the instruction summed over the selected queries.

    Sums add up over blocks of queries, so a long sequence can be measured a block at a time.
    """
    keys = _fit(key_mask, weights.shape[-1])
    mass = (weights.float() * keys[:, None, None, :]).sum(-1).mean(1)  # [B, Q]
    return (mass * q_positions.to(mass.dtype)).sum(-1)


def _fit(mask: torch.Tensor, length: int, fill=0) -> torch.Tensor:
    # Spans always lie in the prompt, so keys past the stored width are never boosted (mask 0, factor 1).
    if mask.shape[-1] >= length:
        return mask[..., :length]
    pad = torch.full((*mask.shape[:-1], length - mask.shape[-1]), fill, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask, pad], dim=-1)
