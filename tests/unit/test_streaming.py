"""shared.streaming.DeltaBuffer: the deltas of text pushed in pieces join up to final_text of the whole, whatever
the pieces, stop strings and whitespace; the buffer never searches text it already sent."""

from __future__ import annotations

import random

from shared.streaming import DeltaBuffer, final_text

ALPHABET = ["a", "b", "c", " ", "\n", ".", "é", "\ufffd", "END", "</s>", "ab"]


def stream(pieces: list[str], stop: tuple[str, ...], strip: bool) -> tuple[str, bool]:
    buf = DeltaBuffer(stop, strip)
    out = [buf.push(p) for p in pieces]
    if not buf.stopped:
        out.append(buf.push("", final=True))
    return "".join(out), buf.stopped


def test_pieces_join_up_to_the_final_text():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 12))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        stop = tuple(rng.sample(["END", "b.", "</s>", "\n\n", "cc", "abc"], rng.randint(0, 3)))
        strip = rng.random() < 0.7
        assert stream(pieces, stop, strip) == final_text(text, stop, strip=strip), (pieces, stop, strip)


def test_a_stop_string_split_over_pieces_is_never_sent():
    buf = DeltaBuffer(("</answer>",))
    sent = [buf.push(p) for p in ["Rome", " is it <", "/ans", "wer> and more"]]
    assert sent == ["Rome", " is it", "", ""] and buf.stopped
    assert "".join(sent) == final_text("Rome is it </answer> and more", ("</answer>",))[0]


def test_whitespace_and_incomplete_characters_wait_for_more_text():
    buf = DeltaBuffer(())
    assert [buf.push(p) for p in ["  ", "Hi", " ", "\ufffd", "é", "  "]] == ["", "Hi", "", "", " \ufffdé", ""]
    assert buf.push("", final=True) == ""  # trailing whitespace is stripped from the answer
    exact = DeltaBuffer((), strip=False)
    assert [exact.push(p) for p in ["  ", "Hi", "\ufffd"]] == ["  ", "Hi", ""]
    assert exact.push("", final=True) == "\ufffd"


def test_only_unsent_text_is_kept():
    """A long answer keeps only its unsent tail: each piece costs its own length, not the whole text's."""
    buf = DeltaBuffer(("STOP",))
    for i in range(2000):
        buf.push(f"word{i} ")
        assert len(buf.pending) <= len(f"word{i} ")
