"""Token logprobs: the log-softmax of the model's raw logits, gathered for prompt and generated tokens.

Raw means before temperature, top-p and any other logits processor (vLLM's default ``raw_logprobs``): a
token's logprob says how likely the (boosted) model found it, not how likely the sampler was to draw it.
A section is {"ids", "tokens", "logprobs", "top"}: per token its id, its text (decoded alone), its logprob
(None for a prompt's first token, which nothing predicts) and the k most likely tokens as [[text, logprob]].
``decode`` runs an engine group's prefill (prompt scoring) and decoding with these records attached.
"""

from __future__ import annotations

from typing import Sequence

import torch

MAX_TOP = 20  # top logprobs per token, as OpenAI's chat API and vLLM allow


def token_texts(tokenizer, ids: Sequence[int], cache: dict | None = None) -> list[str]:
    """Return each token's text decoded alone (a byte-level piece of a character decodes to U+FFFD)."""
    cache = {} if cache is None else cache
    missing = [i for i in dict.fromkeys(ids) if i not in cache]
    for i, text in zip(missing, tokenizer.batch_decode([[i] for i in missing])):
        cache[i] = text
    return [cache[i] for i in ids]


def gather(logprobs: torch.Tensor, targets: Sequence[int], k: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Return each position's logprob of its target and its top-k (id, logprob); logprobs is [N, V] log-softmax."""
    if not len(targets):
        return [], []
    idx = torch.tensor(list(targets), device=logprobs.device)
    chosen = logprobs.gather(-1, idx[:, None])[:, 0].tolist()
    if k <= 0:
        return chosen, [[] for _ in targets]
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return chosen, [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


def section(tokenizer, ids: Sequence[int], lps: Sequence[float | None], top: Sequence[Sequence[tuple[int, float]]],
            cache: dict | None = None) -> dict:
    """Return a stored section: token texts alongside ids, logprobs and top-k as [[text, logprob]]."""
    cache = {} if cache is None else cache
    flat = [i for t in top for i, _ in t]
    token_texts(tokenizer, list(ids) + flat, cache)
    return {"ids": list(ids), "tokens": [cache[i] for i in ids],
            "logprobs": [None if x is None else round(float(x), 6) for x in lps],
            "top": [[[cache[i], round(float(v), 6)] for i, v in t] for t in top]}


def prompt_section(tokenizer, logits: torch.Tensor, ids: Sequence[int], k: int, cache: dict | None = None) -> dict:
    """Return a prompt's section from its own positions' logits [L, V] (position j predicts token j + 1)."""
    lp = torch.log_softmax(logits[:len(ids) - 1].float(), dim=-1)
    chosen, top = gather(lp, ids[1:], k)
    return section(tokenizer, ids, [None, *chosen], [[], *top], cache)


def last_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Return the log-softmax of each row's last-position logits [B, V] (the first new token's distribution)."""
    return torch.log_softmax(logits.float(), dim=-1)


class StepRecorder:
    """A logits processor, first in generate()'s list, that keeps each step's raw logprobs for the rows that ask.

    It sees the raw logits before any other processor changes them. A step's chosen token is known only at
    the next step (or from the final sequences), so only the previous step's full row is held: memory stays
    one [B, V] tensor plus k values per token.
    """

    def __init__(self, ks: Sequence[int | None]):
        self.ks = list(ks)
        self.k = max((k for k in ks if k is not None), default=0)
        self.prev: torch.Tensor | None = None
        self.chosen: list[list[float]] = [[] for _ in ks]
        self.top: list[list[list[tuple[int, float]]]] = [[] for _ in ks]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self._take(input_ids[:, -1].tolist())
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        if self.k > 0:
            values, ids = self.prev.topk(min(self.k, self.prev.shape[-1]), dim=-1)
            for row, (i, v) in enumerate(zip(ids.tolist(), values.tolist())):
                if self.ks[row] is not None:
                    self.top[row].append(list(zip(i, v))[:self.ks[row]])
        else:
            for row, k in enumerate(self.ks):
                if k is not None:
                    self.top[row].append([])
        return scores

    def _take(self, tokens: list[int]) -> None:
        got = self.prev.gather(-1, torch.tensor(tokens, device=self.prev.device)[:, None])[:, 0].tolist()
        for row, k in enumerate(self.ks):
            if k is not None:
                self.chosen[row].append(got[row])

    def finish(self, sequences: torch.Tensor) -> None:
        """Record the last step's chosen tokens (from the finished sequences)."""
        if self.prev is not None:
            self._take(sequences[:, -1].tolist())
            self.prev = None

    def row(self, tokenizer, row: int, ids: Sequence[int], cache: dict | None = None) -> dict:
        """Return row's section for its generated ids (the first len(ids) steps)."""
        n = len(ids)
        return section(tokenizer, ids, self.chosen[row][:n], self.top[row][:n], cache)


def trim_section(section: dict, length: int) -> dict:
    """Keep a section's tokens that start within the first `length` characters of its text."""
    keep, at = 0, 0
    for token in section["tokens"]:
        if at >= length:
            break
        at += len(token)
        keep += 1
    return {key: value[:keep] for key, value in section.items()}


def decode(engine, model, requests, prompts, padded, clock, on_text=None, halt=None):
    """Run an engine group's prefill (for prompt logprobs) and decoding inside the engine's boost; return
    (sequences, each row's prompt logprobs section or None, the StepRecorder or None).

    Prompt scoring is one forward over the padded batch. When it already answers every row (greedy, at
    most one new token, nothing streamed: lm-eval's echo requests) generate() is skipped.
    """
    width = padded.input_ids.shape[1]
    ks = [r.logprobs for r in requests]
    recorder = StepRecorder(ks) if any(k is not None for k in ks) else None
    scored: list[dict | None] = [None] * len(requests)
    if any(r.prompt_logprobs is not None for r in requests) or all(r.params.max_new_tokens == 0 for r in requests):
        positions = (padded.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask, position_ids=positions,
                       use_cache=False).logits
        cache: dict = {}
        for row, (req, p) in enumerate(zip(requests, prompts)):
            if req.prompt_logprobs is not None:
                scored[row] = prompt_section(engine.tokenizer, logits[row, padded.pads[row]:], p.input_ids,
                                             req.prompt_logprobs, cache)
        # Only where no row has logits processors (a bias or grammar must shape even a single token).
        if on_text is None and all(r.params.greedy and r.params.max_new_tokens <= 1 for r in requests) \
                and not engine._row_processors(requests, width, padded.pads):
            last = logits[:, -1].float()
            if recorder is not None:
                recorder(padded.input_ids, last)
            seq = torch.cat([padded.input_ids, last.argmax(-1, keepdim=True)], dim=1)
            if recorder is not None:
                recorder.finish(seq)
            return seq, scored, recorder
    seq = model.generate(input_ids=padded.input_ids, attention_mask=padded.attention_mask,
                         streamer=engine._streamer(requests, on_text),
                         **engine._decode_kwargs(requests, width, clock, halt, padded.pads, recorder))
    if recorder is not None:
        recorder.finish(seq)
    return seq, scored, recorder
