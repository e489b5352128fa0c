"""Structured output during decoding: a request's grammar (shared.response_format) as a per-row logits processor.

The grammar is compiled once per request into an llguidance matcher against the model's tokenizer; each row
decodes with its own copy. Every step, before a token is chosen, the row's processor

- feeds its matcher the tokens the row produced since the last step (the sampled token), then
- sets every token the grammar does not allow next to ``-inf``.

End of sequence is allowed only where the grammar accepts (a complete JSON value), and once the grammar is
finished it is the only token allowed, so the row ends there. A row whose max_new_tokens runs out first ends
with finish_reason "length" and an incomplete value, as OpenAI's API does.

``GrammarRow`` has the per-row processor shape ``(ids, scores) -> scores`` (the row's ids without padding,
1-D scores), so it joins a row's list of logits processors; ``GrammarRows`` applies the rows' processors to
a whole [rows, vocab] step for generate().
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from llguidance import LLMatcher, LLTokenizer

from shared.errors import JobErrorCode, ValidationError
from shared.response_format import FIELD, grammar_error

COMPILED_CACHE = 64  # compiled grammars kept per tokenizer (a batch file sends the same schema many times)


class Grammars:
    """A tokenizer's llguidance view and its compiled grammars (one initial matcher per grammar, copied per row)."""

    def __init__(self, tokenizer, eos_ids: set[int]):
        import llguidance.hf

        # Every token generate() ends a row at is an end for the grammar too.
        self.tokenizer: LLTokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=sorted(eos_ids))
        self.eos = set(eos_ids)
        self._compiled: OrderedDict[str, LLMatcher] = OrderedDict()

    def compile(self, grammar: str) -> LLMatcher:
        """Return a fresh matcher for the grammar (compiled once, then copied); raise ValidationError naming why not."""
        first = self._compiled.get(grammar)
        if first is None:
            first = LLMatcher(self.tokenizer, grammar, log_level=0)
            if first.is_error():
                problem = " ".join(first.get_error().split()) or grammar_error(grammar)
                raise ValidationError(f"{FIELD}: the schema cannot be enforced with this model's tokenizer: "
                                      f"{problem}", field=FIELD, code=JobErrorCode.response_format)
            self._compiled[grammar] = first
            while len(self._compiled) > COMPILED_CACHE:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(grammar)
        return first.deep_copy()


class GrammarRow:
    """One row's grammar as a logits processor: (the row's ids, its next-token scores) -> masked scores."""

    def __init__(self, matcher: LLMatcher, prompt_len: int, eos: set[int], n_vocab: int):
        self.matcher = matcher
        self.prompt_len = prompt_len
        self.eos = eos
        self.n_vocab = n_vocab  # the tokenizer's; the model's scores may be wider (never-produced padding ids)
        self.fed = 0  # generated tokens the matcher has consumed
        self.done = False  # the row ended (its EOS, or padding after a stop string, budget or halt)
        self._bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.done:
            return scores
        for token in ids[self.prompt_len + self.fed:].tolist():
            self.fed += 1
            if token in self.eos or not self.matcher.consume_token(token):
                # After its EOS a row is padded (with EOS here); a token the mask forbade can only be such padding.
                self.done = True
                return scores
        return self._mask(scores)

    def _mask(self, scores: torch.Tensor) -> torch.Tensor:
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.zeros(scores.shape[-1], dtype=bool)
        n = min(self.n_vocab, scores.shape[-1])
        allowed[:n] = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:n]
        return scores.masked_fill(torch.from_numpy(~allowed).to(scores.device), float("-inf"))


class GrammarRows:
    """generate()'s processor for padded rows: each row with a grammar masks its own scores (rows share the width)."""

    def __init__(self, rows: Sequence[GrammarRow | None]):
        self.rows = list(rows)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, row in enumerate(self.rows):
            if row is not None:
                scores[i] = row(input_ids[i], scores[i])
        return scores


def grammar_rows(grammars: Grammars, requests, prompt_lens: Sequence[int]) -> list[GrammarRow | None]:
    """Return each request's grammar processor (None for free text); a grammar is compiled once per request."""
    return [GrammarRow(grammars.compile(r.grammar), n, grammars.eos, grammars.tokenizer.vocab_size)
            if getattr(r, "grammar", None) else None
            for r, n in zip(requests, prompt_lens)]
