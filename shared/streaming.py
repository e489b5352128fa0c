"""Text streaming rules shared by the engine (which cuts at stop strings) and the worker (which streams deltas).

The streamed deltas of a generation, joined, equal the text the engine finally returns: the decoded
tokens, cut before the first stop string, stripped of surrounding whitespace. Torch-free.
"""

from __future__ import annotations

from typing import Sequence


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Return (text before the first stop string, whether one occurred)."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if not hits:
        return text, False
    return text[:min(hits)], True


def final_text(decoded: str, stop: Sequence[str], strip: bool = True) -> tuple[str, bool]:
    """Return (the text a generation answers with, whether a stop string ended it); stripped unless told not to
    (a completion's text keeps its whitespace: it continues the prompt)."""
    text, stopped = cut_at_stop(decoded, stop)
    return (text.strip() if strip else text), stopped


class DeltaBuffer:
    """Turn a growing decoded text into deltas that join up to ``final_text`` of the whole.

    Held back until more text arrives: leading and trailing whitespace (the answer is stripped), an
    incomplete UTF-8 character (decoded as U+FFFD) and a tail that could begin a stop string.
    """

    def __init__(self, stop: Sequence[str] = (), strip: bool = True):
        self.stop = [s for s in stop if s]
        self.strip = strip
        self.sent = ""
        self.stopped = False

    def _visible(self, decoded: str, final: bool) -> str:
        text, hit = cut_at_stop(decoded, self.stop)
        if hit:
            self.stopped = True
            final = True
        text = text.lstrip() if self.strip else text
        if final:
            return text.rstrip() if self.strip else text
        if text.endswith("\ufffd"):
            text = text[:-1]
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        text = text[:len(text) - hold]
        return text.rstrip() if self.strip else text

    def update(self, decoded: str, final: bool = False) -> str:
        """Return the new delta for the text decoded so far ('' when nothing new may be shown yet)."""
        if self.stopped:
            return ""
        visible = self._visible(decoded, final)
        if not visible.startswith(self.sent) or len(visible) <= len(self.sent):
            return ""  # nothing new (or the decoder revised earlier text: wait for the final text)
        delta, self.sent = visible[len(self.sent):], visible
        return delta
