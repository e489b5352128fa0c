"""Decoding a step's rows, each computation once: rows of one job that compute the same thing share one decode.

Two rows of a job compute exactly the same when their generation requests are equal once an M = 1 boost's
layers, heads and head seed are set aside (a log 1 = 0 bias changes no attention weight): a variant at M = 1
and the job's original, or a completion's prompt listed twice. The first such row is decoded; the others get
a copy of its result and are stored under their own names. Rows of different jobs are never merged, so a
job's cancel (``halt``) and its stream stay its own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from shared.spec import BoostSpec, GenerationRequest, GenerationResult


def computation(request: GenerationRequest) -> GenerationRequest:
    """Return what decides a request's output: the request itself, with an identity boost's layers and heads reset."""
    if not request.is_identity:
        return request
    return replace(request, spec=BoostSpec(placement=request.spec.placement))


def twins(jobs: Sequence[int], requests: Sequence[GenerationRequest]) -> list[int]:
    """Return for each row the index of the first row of the same job (jobs[i]) that computes what it computes."""
    keys = [computation(r) for r in requests]
    return [next(j for j in range(i + 1) if jobs[j] == jobs[i] and keys[j] == keys[i]) for i in range(len(keys))]


def decode_rows(engine, requests: Sequence[GenerationRequest], jobs: Sequence[int], *, attention: bool,
                on_text: Callable[[int, str], None] | None, halt: Callable[[int], bool]) -> list[GenerationResult]:
    """Run engine.generate over the rows' distinct computations; return one result per row, in order.

    on_text(i, delta) and halt(i) speak of rows, as if every row were decoded: a shared decode's text goes to
    each of its rows, and it halts when its first row's job does (its twins are of the same job).
    """
    first = twins(jobs, requests)
    decoded = sorted(set(first))  # the rows actually decoded, in row order
    position = {row: k for k, row in enumerate(decoded)}
    fanout: dict[int, list[int]] = {}
    for i, j in enumerate(first):
        fanout.setdefault(j, []).append(i)

    def text(k: int, delta: str) -> None:
        for i in fanout[decoded[k]]:
            on_text(i, delta)

    results = engine.generate([requests[i] for i in decoded], attention=attention,
                              on_text=text if on_text is not None else None, halt=lambda k: halt(decoded[k]))
    return [results[position[j]] if i == j else replace(results[position[j]]) for i, j in enumerate(first)]
