"""Token streaming out of ``generate``: a transformers streamer that turns each row's new tokens into text deltas.

Detokenization is incremental (as transformers' TextIteratorStreamer and vLLM's detokenizer do it): each new
token decodes a short window of recent tokens, never the whole row, so a row of n tokens costs O(n) decoding,
not O(n^2). The deltas still join up to the text the engine returns (one full decode per row, at its end,
checks it and sends what a window could not show).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from shared.streaming import DeltaBuffer

log = logging.getLogger(__name__)


class IncrementalDetokenizer:
    """Turn a row's growing token ids into text pieces, decoding only the tokens since the last piece (and the
    tokens of that piece before them, as context: a SentencePiece or byte-level decoder treats a window's first
    token like the row's first, so a context prefix decoded alone and with the new tokens keeps them alike).

    A piece is held back while the window's text ends with U+FFFD (an incomplete UTF-8 character split over
    byte tokens) or does not extend its context's text (a decoder that revised earlier text); finish() settles
    the rest against one decode of the whole row.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # the context window starts here
        self.read = 0  # tokens before this are already in the pieces
        self.pieces: list[str] = []
        self._context: str | None = ""  # ids[prefix:read] decoded (None: not yet, since they moved)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Append a token; return the text it completes ('' while held back)."""
        self.ids.append(token)
        if self._context is None:
            self._context = self._decode(self.ids[self.prefix:self.read])
        context = self._context
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(context) or text.endswith("\ufffd") or not text.startswith(context):
            return ""
        piece = text[len(context):]
        self.prefix, self.read, self._context = self.read, len(self.ids), None
        self.pieces.append(piece)
        return piece

    def finish(self) -> str:
        """Return the rest of the row's text: the whole row decoded once, less what the pieces already hold."""
        full = self._decode(self.ids)
        shown = "".join(self.pieces)
        if not full.startswith(shown):  # a decoder whose windows disagree with the whole: the pieces are sent
            log.warning("incremental detokenization diverged from the full decode (%d of %d characters)",
                        len(shown), len(full))
            return ""
        rest = full[len(shown):]
        self.pieces.append(rest)
        return rest


class RowStreamer:
    """A transformers streamer (put / end) for padded rows: calls on_text(row, delta) as each row's text grows.

    The deltas of a row join up to the text the engine returns for it (see shared.streaming); a row
    stops streaming at its first end-of-sequence token or stop string.
    """

    def __init__(self, tokenizer, rows: int, eos: set[int], on_text: Callable[[int, str], None],
                 stop: Sequence[str] = (), budgets: Sequence[int] | None = None,
                 strips: Sequence[bool] | None = None):
        self.eos = eos
        self.on_text = on_text
        self.rows = [IncrementalDetokenizer(tokenizer) for _ in range(rows)]
        self.done = [False] * rows
        self.buffers = [DeltaBuffer(stop, strip) for strip in (strips if strips is not None else [True] * rows)]
        self._prompt_seen = False
        self.budgets = list(budgets) if budgets is not None else None  # each row's max_new_tokens

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        tokens = value.reshape(-1).tolist()
        for row, tok in enumerate(tokens):
            if self.done[row]:
                continue
            if tok in self.eos:
                self._flush(row)
                continue
            piece = self.rows[row].push(tok)
            if piece:
                self._emit(row, self.buffers[row].push(piece))
            if self.buffers[row].stopped:
                self.done[row] = True
            elif self.budgets is not None and len(self.rows[row].ids) >= self.budgets[row]:
                self._flush(row)  # the row's own max_new_tokens: what follows is padding

    def end(self) -> None:
        for row in range(len(self.rows)):
            if not self.done[row]:
                self._flush(row)

    def _flush(self, row: int) -> None:
        self.done[row] = True
        self._emit(row, self.buffers[row].push(self.rows[row].finish(), final=True))

    def _emit(self, row: int, delta: str) -> None:
        if delta:
            self.on_text(row, delta)
