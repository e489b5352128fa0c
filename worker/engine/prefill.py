"""Chunked prefill for continuous batching: a joining group's prompts enter a cache of their own a chunk at a time.

One forward over a long prompt stalls every running row for that whole forward. With a per-step token budget
(``worker.step_token_budget``) the ``ContinuousDecoder`` spends what the running rows' decoding leaves of the
budget on joining rows: a ``Fill`` (one group of joining rows, left-padded among themselves, with its own
DynamicCache and boost state) advances some columns of its padded prompt per step, and its rows join decoding
once their whole prompt is in the cache (``worker.engine.packed.merge``).

Why a row's tokens stay its own across chunks:

- a chunk's queries see the same keys as in one forward: those already cached plus the chunk's own, causally
  (the 2-D mask covers every column so far; RoPE positions come from position_ids);
- the boost is built once over the group's whole padded prompt in absolute key positions, and each forward
  slices it at the keys the layer sees (``boost.key_offset`` from the positions processed, which the fast
  engine's pre-hook reads from the cache), so every query of every chunk adds log M on the instruction keys;
  the scope gate and the target mass are per query position (``boost.query_gate``: only the prompt's last
  position is a decoding query, as in the one-forward prefill), and the target's share pass runs over the
  chunk's own queries and keys;
- sliding-window layers keep window - 1 columns between chunks and see them plus the chunk
  (transformers' DynamicSlidingWindowLayer), so their mask and key offsets stay right.

Only the order of floating-point sums changes with the chunk shapes (tests/engine/test_continuous.py holds
greedy and seeded tokens equal to the row decoded alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worker.engine.base import PaddedRows
from worker.engine.fast import active_state, boost_state


@dataclass
class Fill:
    """A group of joining rows whose padded prompts are prefilled into their own cache, some columns per step."""

    rows: list  # the decoder's rows, in the group's order
    padded: PaddedRows
    state: object  # fast.boost_state's: the group's biases, kept across chunks
    cache: object  # a transformers DynamicCache
    every: bool  # keep every position's logits (a row asks for prompt logprobs)
    done: int = 0  # padded columns already in the cache
    logits: list = field(default_factory=list)  # every position's logits so far, per chunk (when every)

    @property
    def width(self) -> int:
        return self.padded.input_ids.shape[1]

    @property
    def remaining(self) -> int:
        """Padded columns still to prefill."""
        return self.width - self.done

    @property
    def urgent(self) -> bool:
        """Whether an interactive row is in the group (it is served before the others)."""
        return any(r.first for r in self.rows)


def open_fill(model, rows: list, padded: PaddedRows, boost) -> Fill:
    """Return a Fill for rows over their padded prompts, its cache empty and its boost state built for the width."""
    from transformers import DynamicCache

    every = any(r.request.prompt_logprobs is not None for r in rows)
    width = padded.input_ids.shape[1]
    return Fill(rows, padded, boost_state(boost, width), DynamicCache(config=model.config), every)


def advance(model, fill: Fill, cols: int) -> torch.Tensor | None:
    """Prefill the next cols columns (at most those left); once the prompt is in, return the logits, else None.

    The logits: the last position's [rows, vocab], or every position's [rows, width, vocab] when fill.every.
    """
    a = fill.done
    b = min(a + max(1, int(cols)), fill.width)
    p = fill.padded
    positions = (p.attention_mask[:, :b].cumsum(-1) - 1).clamp(min=0)
    with active_state(fill.state):
        logits = model(input_ids=p.input_ids[:, a:b], attention_mask=p.attention_mask[:, :b],
                       position_ids=positions[:, a:b], past_key_values=fill.cache, use_cache=True,
                       logits_to_keep=0 if fill.every else 1).logits
    fill.done = b
    if fill.every:
        fill.logits.append(logits)
    if b < fill.width:
        return None
    return torch.cat(fill.logits, dim=1) if fill.every else logits[:, -1]
