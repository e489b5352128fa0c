"""Per-step hooks handed to generate(): the step clock, per-row sampling, halting and token budgets."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from shared.spec import GenerationParams
from worker.engine.logits import sampling_probs


class StepClock:
    """A stopping criterion that stops nothing: it records when each decoding step ends.

    Passed to generate() so every row of a padded group can report the time to its own last token.
    """

    def __init__(self):
        self.start = time.perf_counter()
        self.steps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.steps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def until_step(self, n: int) -> float:
        """Return the seconds from the start to the end of decoding step n (1-based; clamped to those seen)."""
        if not self.steps:
            return time.perf_counter() - self.start
        return self.steps[max(1, min(n, len(self.steps))) - 1] - self.start


def as_hook(base: type, fn):
    """Return fn as an instance of transformers' base class (generate() checks the type)."""
    return type(type(fn).__name__, (base,), {"__call__": lambda self, *a, **kw: fn(*a, **kw)})()


class RowSampler:
    """A logits processor that samples each sampling row with a generator of its own, seeded by the row's seed.

    The drawn token is left as the row's only finite logit, so generate()'s greedy step picks it; greedy
    rows are untouched. A row's draws therefore depend on its own seed and logits alone, not on which
    rows share its padded group (global-RNG sampling repeated only for the same padded group).
    """

    def __init__(self, params: Sequence[GenerationParams], device: str):
        self.rows = [(i, p, torch.Generator(device=device).manual_seed(p.seed))
                     for i, p in enumerate(params) if not p.greedy]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, p, gen in self.rows:
            probs = sampling_probs(scores[i], p)
            token = torch.multinomial(probs, 1, generator=gen)
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


class RowHalt:
    """A stopping criterion that ends the rows halt(row) names (asked once per decoding step)."""

    def __init__(self, halt: Callable[[int], bool]):
        self.halt = halt

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.tensor([bool(self.halt(i)) for i in range(input_ids.shape[0])], device=input_ids.device)


class RowBudget:
    """A stopping criterion that ends each row at its own max_new_tokens (generate() pads it afterwards)."""

    def __init__(self, width: int, budgets: Sequence[int]):
        self.width = width
        self.budgets = torch.tensor(list(budgets))

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return (input_ids.shape[1] - self.width >= self.budgets).to(input_ids.device)
