"""Token streaming out of ``generate``: a transformers streamer that turns each row's new tokens into text deltas."""

from __future__ import annotations

from typing import Callable, Sequence

from shared.streaming import DeltaBuffer


class RowStreamer:
    """A transformers streamer (put / end) for a batch: calls on_text(row, delta) as each row's text grows.

    The deltas of a row join up to the text the engine returns for it (see shared.streaming); a row
    stops streaming at its first end-of-sequence token or stop string.
    """

    def __init__(self, tokenizer, rows: int, eos: set[int], on_text: Callable[[int, str], None],
                 stop: Sequence[str] = (), budgets: Sequence[int] | None = None,
                 strips: Sequence[bool] | None = None):
        self.tokenizer = tokenizer
        self.eos = eos
        self.on_text = on_text
        self.ids: list[list[int]] = [[] for _ in range(rows)]
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
            self.ids[row].append(tok)
            self._emit(row, self.buffers[row].update(self._decode(row)))
            if self.buffers[row].stopped:
                self.done[row] = True
            elif self.budgets is not None and len(self.ids[row]) >= self.budgets[row]:
                self._flush(row)  # the row's own max_new_tokens: what follows is padding

    def end(self) -> None:
        for row in range(len(self.ids)):
            if not self.done[row]:
                self._flush(row)

    def _flush(self, row: int) -> None:
        self.done[row] = True
        self._emit(row, self.buffers[row].update(self._decode(row), final=True))

    def _decode(self, row: int) -> str:
        return self.tokenizer.decode(self.ids[row], skip_special_tokens=True)

    def _emit(self, row: int, delta: str) -> None:
        if delta:
            self.on_text(row, delta)
