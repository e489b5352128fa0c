"""One timing loop for the benchmarks: warm up every contender, then interleave N rounds of all of them."""

from __future__ import annotations

import time
from typing import Callable, Mapping


def interleaved(runs: Mapping[str, Callable[[], object]], rounds: int,
                sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Return each contender's wall times over rounds, after one warm-up call each.

    Rounds are interleaved (a, b, a, b, ...) so that drift in the machine's speed hits every contender alike.
    """
    for fn in runs.values():  # warm-up: kernels, caches, allocator
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times
