"""The boost math: mask and bias builders and the attention-pattern hook. No I/O, no model state.

InstaBoost multiplies the attention weight a query gives to instruction keys by M and renormalizes
the row. With pre-softmax scores s, softmax(s)_k * f_k / sum_j softmax(s)_j * f_j equals
softmax(s + log f)_k, so the same operation is an additive bias of log M on the instruction keys.
The hook form (``boost_pattern``) is the reference; the bias form (``bias_for_layer``) runs inside
fused attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from shared.spec import BoostSpec  # the spec lives in shared/ so the web app can validate without torch


@dataclass
class BatchBoost:
    """Per-batch boost state: which keys, heads and multiplier apply to each row in each layer.

    key_mask: [B, K] bool, True on instruction keys (K covers prompt + generated positions).
    multipliers: [B] float, M per row.
    heads: {layer: [B, H] bool}, True where the row boosts that head in that layer.
    """

    key_mask: torch.Tensor
    multipliers: torch.Tensor
    heads: dict[int, torch.Tensor]


def key_mask_from_spans(spans: Sequence[tuple[int, int]], length: int, device=None) -> torch.Tensor:
    """Return a [B, length] bool mask that is True on each row's [start, end) key span."""
    pos = torch.arange(length, device=device)
    starts = torch.tensor([s for s, _ in spans], device=device)[:, None]
    ends = torch.tensor([e for _, e in spans], device=device)[:, None]
    return (pos[None, :] >= starts) & (pos[None, :] < ends)


def build_batch_boost(specs: Sequence[BoostSpec], spans: Sequence[tuple[int, int]], length: int,
                      n_layers: int, n_heads: int, device=None, keep_identity: bool = False) -> BatchBoost:
    """Resolve each row's spec into per-layer head masks; rows with M = 1 boost nothing unless kept."""
    heads: dict[int, torch.Tensor] = {}
    for row, spec in enumerate(specs):
        if spec.is_identity and not keep_identity:
            continue
        for layer, hs in spec.resolve_heads(n_layers, n_heads).items():
            if layer not in heads:
                heads[layer] = torch.zeros(len(specs), n_heads, dtype=torch.bool, device=device)
            heads[layer][row, list(hs)] = True
    return BatchBoost(
        key_mask=key_mask_from_spans(spans, length, device),
        multipliers=torch.tensor([s.multiplier for s in specs], dtype=torch.float64, device=device),
        heads=heads,
    )


def _cells(boost: BatchBoost, layer: int, kv_len: int) -> torch.Tensor | None:
    """Return [B, H, 1, kv_len] bool: the (row, head, key) cells this layer boosts, or None."""
    heads = boost.heads.get(layer)
    if heads is None:
        return None
    return heads[:, :, None, None] & _fit(boost.key_mask, kv_len)[:, None, None, :]


def boost_factors(boost: BatchBoost, layer: int, kv_len: int, dtype=torch.float32) -> torch.Tensor | None:
    """Return [B, H, 1, kv_len] multiplicative factors (M on boosted cells, 1 elsewhere), or None."""
    cells = _cells(boost, layer, kv_len)
    if cells is None:
        return None
    m = boost.multipliers.to(dtype)[:, None, None, None]
    return torch.where(cells, m, torch.ones((), dtype=dtype, device=m.device))


def bias_for_layer(boost: BatchBoost, layer: int, kv_len: int, dtype=torch.float32) -> torch.Tensor | None:
    """Return the [B, H, 1, kv_len] additive pre-softmax bias (log M on boosted cells), or None."""
    cells = _cells(boost, layer, kv_len)
    if cells is None:
        return None
    log_m = torch.log(boost.multipliers).to(dtype)[:, None, None, None]
    return torch.where(cells, log_m, torch.zeros((), dtype=dtype, device=log_m.device))


def boost_pattern(pattern: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Multiply post-softmax weights by the factors and renormalize each row (the paper's operation)."""
    scaled = pattern * factors.to(pattern.dtype)
    # Rows that attend nowhere (fully masked padding queries) stay zero instead of becoming NaN.
    return scaled / scaled.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(pattern.dtype).tiny)


def make_pattern_hook(boost: BatchBoost, layer: int):
    """Return a TransformerLens hook for blocks.{layer}.attn.hook_pattern that applies the boost."""

    def hook(pattern: torch.Tensor, hook=None) -> torch.Tensor:
        factors = boost_factors(boost, layer, pattern.shape[-1], dtype=torch.float32)
        if factors is None:
            return pattern
        return boost_pattern(pattern.float(), factors.to(pattern.device)).to(pattern.dtype)

    return hook


def instruction_mass(weights: torch.Tensor, key_mask: torch.Tensor, q_positions: torch.Tensor) -> torch.Tensor:
    """Return [B] attention mass on the instruction: mean over heads and the given query positions.

    weights: [B, H, Q, K] post-softmax; key_mask: [B, K]; q_positions: [B, Q] bool selecting queries.
    """
    keys = _fit(key_mask, weights.shape[-1])
    mass = (weights.float() * keys[:, None, None, :]).sum(-1).mean(1)  # [B, Q]
    sel = q_positions.to(mass.dtype)
    return (mass * sel).sum(-1) / sel.sum(-1).clamp_min(1)


def _fit(mask: torch.Tensor, length: int) -> torch.Tensor:
    # The span always lies in the prompt, so keys past the stored width are never boosted.
    if mask.shape[-1] >= length:
        return mask[..., :length]
    pad = torch.zeros(*mask.shape[:-1], length - mask.shape[-1], dtype=mask.dtype, device=mask.device)
    return torch.cat([mask, pad], dim=-1)
