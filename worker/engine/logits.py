"""Per-row logits processors: the seam where a row's own settings reshape its next-token scores.

Every decoding step, before a token is chosen (argmax for greedy rows, a seeded draw for sampling rows,
``steps.RowSampler``), each row's scores pass through that row's list of processors, in order. A processor
is a ``RowProcessor``: ``(ids, scores) -> scores`` where

- ``ids`` is the row's tokens so far, prompt then generated, WITHOUT the padded group's left padding (1-D long);
- ``scores`` is the row's next-token logits (1-D float, the model's vocabulary), raw: before temperature;
- it returns the new scores (it may change them in place). Setting a logit to ``-inf`` forbids the token.

``row_processors(params, prompt_len)`` builds a row's list from its GenerationParams (penalties, then
logit_bias); another concern (a grammar mask) appends its own processor to the list it returns. The lists
are built afresh for every generate() call (``Engine._row_processors``), so a processor may keep state of its
own across steps (a grammar matcher advanced by the row's last token, ``ids[-1]``). Because a
row sees only its own unpadded ids and scores, the fast engine (rows batched, left-padded) and the
reference engine (one row at a time) process identically.

The sampling filters act on the tempered scores inside the draw (``sampling_probs``): temperature, top_k,
min_p, then top_p (transformers' TopKLogitsWarper and MinPLogitsWarper). Greedy rows skip them: top_k and
min_p always keep the most likely token.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from shared.spec import GenerationParams

RowProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def repetition_penalty(penalty: float) -> RowProcessor:
    """Return CTRL's repetition penalty over the prompt and generated tokens (transformers' processor, per row).

    A seen token's logit is divided by penalty when positive and multiplied when negative (penalty > 1
    discourages repeats, < 1 encourages them).
    """
    from transformers import RepetitionPenaltyLogitsProcessor

    proc = RepetitionPenaltyLogitsProcessor(penalty=float(penalty))
    return lambda ids, scores: proc(ids[None, :], scores[None, :])[0]


def presence_frequency(presence: float, frequency: float, prompt_len: int) -> RowProcessor:
    """Return OpenAI's penalties over the generated tokens: logits[j] -= c[j]*frequency + (c[j] > 0)*presence."""

    def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = ids[prompt_len:]
        if generated.numel() == 0:
            return scores
        counts = torch.bincount(generated, minlength=scores.shape[-1])[:scores.shape[-1]].to(scores.dtype)
        return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence

    return apply


def logit_bias(bias: Mapping[int, float]) -> RowProcessor:
    """Return OpenAI's logit_bias: add each token's bias to its logit (-100 in effect bans it, 100 forces it)."""
    ids = torch.tensor([int(k) for k in bias], dtype=torch.long)
    values = torch.tensor([float(v) for v in bias.values()])

    def apply(_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        keep = ids < scores.shape[-1]  # ids past the vocabulary are refused earlier (Engine.prompt)
        idx = ids[keep].to(scores.device)
        return scores.index_add(-1, idx, values[keep].to(scores.device, scores.dtype))

    return apply


def row_processors(params: GenerationParams, prompt_len: int) -> list[RowProcessor]:
    """Return the processors a row's settings call for, in the order they apply (none at the defaults)."""
    out: list[RowProcessor] = []
    if params.repetition_penalty != 1.0:
        out.append(repetition_penalty(params.repetition_penalty))
    if params.presence_penalty or params.frequency_penalty:
        out.append(presence_frequency(params.presence_penalty, params.frequency_penalty, prompt_len))
    if params.logit_bias:
        out.append(logit_bias(dict(params.logit_bias)))
    return out


def sampling_probs(scores: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    """Return a sampling row's token probabilities: temperature, then top_k, min_p and top_p filters."""
    from transformers import MinPLogitsWarper, TopKLogitsWarper

    logits = (scores.float() / params.temperature)[None, :]
    if params.top_k:
        logits = TopKLogitsWarper(top_k=params.top_k)(None, logits)
    if params.min_p:
        logits = MinPLogitsWarper(min_p=params.min_p)(None, logits)
    probs = torch.softmax(logits[0], dim=-1)
    if params.top_p < 1.0:
        # Nucleus: keep the most likely tokens until their mass reaches top_p (at least one).
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return probs


class RowProcessors:
    """A padded group-level logits processor for generate(): applies each row's own processor list to its row."""

    def __init__(self, rows: list[list[RowProcessor]], pads: list[int]):
        self.rows = [(i, procs, pads[i]) for i, procs in enumerate(rows) if procs]

    def __bool__(self) -> bool:
        return bool(self.rows)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, procs, pad in self.rows:
            ids, row = input_ids[i, pad:], scores[i]
            for proc in procs:
                row = proc(ids, row)
            scores[i] = row
        return scores
