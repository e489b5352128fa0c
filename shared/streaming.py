"""Text streaming shared by the engine (which cuts at stop strings), the worker (which streams deltas) and the
web (which relays them).

The streamed deltas of a generation, joined, equal the text the engine finally returns: the decoded
tokens, cut before the first stop string, stripped of surrounding whitespace. The worker appends a streamed
job's events to a Redis stream (publish_event); the web waits on it with blocking reads (read_events).
Torch-free.
"""

from __future__ import annotations

import json
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
    """Turn the pieces of a growing decoded text into deltas that join up to ``final_text`` of the whole.

    Held back until more text arrives: leading and trailing whitespace (the answer is stripped), an
    incomplete UTF-8 character (decoded as U+FFFD) and a tail that could begin a stop string. Only the text not
    yet sent is searched: what was sent never holds the start of a stop string (a tail that could begin one is
    held), so each piece costs its own length plus what is held, not the whole text's.
    """

    def __init__(self, stop: Sequence[str] = (), strip: bool = True):
        self.stop = [s for s in stop if s]
        self.strip = strip
        self.pending = ""  # decoded text not sent yet
        self.started = False  # something was sent: the leading whitespace is behind
        self.stopped = False

    def _visible(self, final: bool) -> tuple[str, int]:
        """Return (the part of pending that may be sent now, how many leading characters it skips)."""
        text, hit = cut_at_stop(self.pending, self.stop)
        if hit:
            self.stopped = True
            final = True
        skip = 0
        if self.strip and not self.started:
            skip = len(text) - len(text.lstrip())
            text = text[skip:]
        if not final:
            if text.endswith("\ufffd"):
                text = text[:-1]
            hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[:len(text) - hold]
        return (text.rstrip() if self.strip else text), skip

    def push(self, piece: str, final: bool = False) -> str:
        """Append a piece of decoded text; return the new delta ('' when nothing new may be shown yet)."""
        if self.stopped:
            return ""
        self.pending += piece
        delta, skip = self._visible(final)
        if not delta:
            return ""
        self.started = True
        self.pending = self.pending[skip + len(delta):]
        return delta


# -- the events of a streamed job, from the worker to the web: a Redis stream per job ------------------------

STREAM_MAXLEN = 20_000  # events kept per job (a reader that falls this far behind sees the gap, see read_events)
STREAM_TTL = 3600  # seconds a job's events are kept after the last one


def publish_event(redis, key: str, event: dict) -> None:
    """Append an event to a job's Redis stream (XADD, capped at about STREAM_MAXLEN; expiring STREAM_TTL after)."""
    pipe = redis.pipeline()
    pipe.xadd(key, {"event": json.dumps(event)}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, STREAM_TTL)
    pipe.execute()


def read_events(redis, key: str, cursor: str, block_seconds: float) -> tuple[list[dict], str]:
    """Return (the events after cursor, the new cursor), waiting up to block_seconds for one (XREAD BLOCK).

    Start from cursor "0". Each event of a delivery carries its number ("seq", from 0): a reader that finds one
    missing (trimmed past STREAM_MAXLEN) knows its text has a gap.
    """
    reply = redis.xread({key: cursor}, block=max(1, int(block_seconds * 1000)), count=1000)
    events = []
    for _, entries in reply or ():
        for entry_id, fields in entries:
            cursor = entry_id
            events.append(json.loads(fields.get("event") or fields[b"event"]))
    return events, cursor
