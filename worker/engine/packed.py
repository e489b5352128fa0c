"""Cache surgery for continuous batching: one left-padded DynamicCache whose rows join and leave between steps.

Every row's keys are right-aligned: row r holds its real positions in the last ``width - pad[r]`` columns of
a full-attention layer and zeros (masked) before them. A sliding-window layer (transformers'
DynamicSlidingWindowLayer) holds only the last ``min(width, window - 1)`` columns; its ``cumulative_length``
is the width, so its mask offset and the boost's key offset (``boost.key_offset``) stay in padded coordinates.
Because padding is only ever on the left, a distance in padded columns is a distance in the row's own
positions, which is all causal and sliding masks use (RoPE positions come from each row's position_ids).
"""

from __future__ import annotations

from typing import Sequence

import torch


def stored_length(layer, width: int) -> int:
    """Return how many key columns a cache layer holds for a padded width (a sliding layer: window - 1 at most)."""
    if getattr(layer, "is_sliding", False):
        return min(width, layer.sliding_window - 1)
    return width


def fit_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Return [B, H, L, D] right-aligned to n columns: zero columns added, or the oldest ones dropped, on the left."""
    have = t.shape[2]
    if have == n:
        return t
    if have > n:
        return t[:, :, have - n:]
    pad = t.new_zeros(t.shape[0], t.shape[1], n - have, t.shape[3])
    return torch.cat([pad, t], dim=2)


def _set(layer, keys: torch.Tensor, values: torch.Tensor, width: int) -> None:
    layer.keys, layer.values = keys, values
    if getattr(layer, "is_sliding", False):
        layer.cumulative_length = width


def merge(cache, width: int, other, other_width: int) -> int:
    """Append other's rows to cache (both packed caches); return the new width (the wider of the two)."""
    new = max(width, other_width)
    for a, b in zip(cache.layers, other.layers, strict=True):
        n = stored_length(a, new)
        _set(a, torch.cat([fit_left(a.keys, n), fit_left(b.keys, n)]),
             torch.cat([fit_left(a.values, n), fit_left(b.values, n)]), new)
    return new


def select(cache, keep: Sequence[int], width: int, trim: int) -> int:
    """Keep only the rows `keep` and drop `trim` padding columns every kept row has on the left; return the width."""
    idx = torch.tensor(list(keep), dtype=torch.long, device=cache.layers[0].keys.device)
    new = width - trim
    for layer in cache.layers:
        n = stored_length(layer, new)
        _set(layer, fit_left(layer.keys.index_select(0, idx), n), fit_left(layer.values.index_select(0, idx), n),
             new)
    return new


def attention_mask(pads: Sequence[int], width: int, device) -> torch.Tensor:
    """Return the [B, width] 2-D mask: 0 on each row's left padding, 1 on its positions."""
    cols = torch.arange(width, device=device)[None, :]
    return (cols >= torch.tensor(list(pads), device=device)[:, None]).long()
