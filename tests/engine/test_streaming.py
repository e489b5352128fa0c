"""worker.engine.streaming on the real tokenizer: incremental detokenization gives the whole row's decode, a
short window at a time, across multi-byte characters split over byte tokens, special tokens and stop strings."""

from __future__ import annotations

import random

import torch

from shared.spec import ChatMessage, GenerationParams, GenerationRequest, Segment
from shared.streaming import final_text
from worker.engine.streaming import IncrementalDetokenizer, RowStreamer

TEXTS = ["Bonjour, ça va ? L'été à Zürich — très bien. 東京は日本の首都です。 Emoji: 🎉🚀 done.\n\n- item 1\n- item 2",
         "  leading spaces, then\ttabs and 'quotes' don't break it; numbers 3.14159 and 1,000,000.",
         "def f(x):\n    return x ** 2  # ünïcödé ✓\n"]


class CountingTokenizer:
    """The real tokenizer, counting how many ids each decode call is given."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def decode(self, ids, **kwargs):
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def detokenize(tokenizer, ids) -> str:
    detok = IncrementalDetokenizer(tokenizer)
    return "".join(detok.push(t) for t in ids) + detok.finish()


def test_pieces_join_up_to_the_whole_decode(fast_engine):
    tok = fast_engine.tokenizer
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert detokenize(tok, ids) == tok.decode(ids, skip_special_tokens=True) == text
    # Random ids, special ones among them: byte tokens that do not form characters, skipped specials.
    rng = random.Random(0)
    special = sorted(tok.all_special_ids)
    for _ in range(40):
        ids = [rng.choice(special) if rng.random() < 0.05 else rng.randrange(len(tok)) for _ in range(60)]
        assert detokenize(tok, ids) == tok.decode(ids, skip_special_tokens=True)


def test_each_token_decodes_a_short_window(fast_engine):
    """Decoding a row of n tokens costs O(n) tokens decoded, not O(n^2): no window grows with the row."""
    counting = CountingTokenizer(fast_engine.tokenizer)
    ids = fast_engine.tokenizer(" ".join(TEXTS * 8), add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(counting)
    pieces = [detok.push(t) for t in ids]
    assert sum(1 for p in pieces if p) > len(ids) // 2  # piece by piece, not all at the end
    assert max(counting.lengths) <= 8 and len(ids) > 500
    assert sum(counting.lengths) <= 8 * len(ids)
    assert "".join(pieces) + detok.finish() == fast_engine.tokenizer.decode(ids)


def test_row_streamer_matches_the_final_text_with_stop_strings(fast_engine):
    """RowStreamer over real ids, as generate() hands them over (prompt first, then a column per step)."""
    tok = fast_engine.tokenizer
    eos = fast_engine._eos_ids()
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    width = max(map(len, rows))
    pad = next(iter(eos))
    for stop in [(), ("very",), ("東京", "zzz"), ("\n\n",), ("x ** 2",), ("don't",)]:
        for strip in (True, False):
            got = {i: "" for i in range(len(rows))}
            streamer = RowStreamer(tok, len(rows), eos, lambda i, d: got.__setitem__(i, got[i] + d), stop,
                                   strips=[strip] * len(rows))
            streamer.put(torch.zeros(len(rows), 3, dtype=torch.long))  # the prompt
            for step in range(width):
                streamer.put(torch.tensor([r[step] if step < len(r) else pad for r in rows]))
            streamer.end()
            for i, ids in enumerate(rows):
                assert got[i] == final_text(tok.decode(ids, skip_special_tokens=True), stop, strip=strip)[0]


def test_a_generated_stream_with_a_stop_string_equals_the_result(fast_engine):
    params = GenerationParams(max_new_tokens=60, stop=(".",))
    turn = ChatMessage("user", (Segment("Write two sentences about Paris in French."),))
    req = GenerationRequest.chat([turn], params=params)
    deltas: list[str] = []
    res = fast_engine.generate([req], on_text=lambda i, d: deltas.append(d))[0]
    assert len(deltas) > 3 and "".join(deltas) == res.text and "." not in res.text
