"""``instaboost calibrate``: run the paper's protocol locally on one engine, no database or broker.

Every case runs unboosted once (M = 1, shared by every setting), then each grid M for every setting still
walking, all rows of one M batched through the fast engine (per-row spans, M, layers and heads), scored
as the worker scores runs (perplexity under the unboosted model in one extra batched pass per batch).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

from shared.calibration import (SweepSetting, assign_splits, boosted_grid, record, result_summary,
                                still_going, validation_stats)
from shared.evaluation import protocol
from shared.evaluation.cases import Case
from shared.spec import BoostSpec, GenerationParams, GenerationRequest
from worker.scoring import score_results


def _requests(cases: Sequence[Case], m: float, setting: SweepSetting, base: BoostSpec,
              params: GenerationParams, baseline: bool = False) -> list[GenerationRequest]:
    spec = base.with_(multiplier=m, layers=setting.layers, head_fraction=setting.head_fraction, scope=setting.scope,
                      target_mass=None if baseline else setting.target_mass,  # the baseline is unboosted
                      boilerplate_multiplier=1.0 if baseline else setting.boilerplate_multiplier)
    return [GenerationRequest(c.instruction, c.query, spec, params) for c in cases]


def run_rows(engine, requests: list[GenerationRequest], cases: list[Case], batch_size: int,
             perplexity: bool, copy_words: int) -> list[tuple[Any, dict]]:
    """Generate and score rows in batches; return [(result, scores)] in order."""
    out = []
    for start in range(0, len(requests), max(1, batch_size)):
        reqs, cs = requests[start:start + batch_size], cases[start:start + batch_size]
        results = engine.generate(reqs)
        out += zip(results, score_results(engine, reqs, results, cases=cs, perplexity=perplexity,
                                          copy_words=copy_words))
    return out


def calibrate_local(engine, cases: Sequence[Case], *, grid: Sequence[float], settings: Sequence[SweepSetting],
                    floor: float = protocol.FLOOR, copy_ceiling: float | None = protocol.COPY_CEILING,
                    base: BoostSpec | None = None,
                    params: GenerationParams | None = None, batch_size: int = 16, perplexity: bool = True,
                    copy_words: int = 6, n_boot: int = protocol.N_BOOT, test_at: str = "all",
                    log: Callable[[str], None] | None = None,
                    on_record: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run the sweep; return {"records", "summary", "multipliers_run", "seconds"}.

    test_at "all" runs the test half at every M the walk reaches (the full table); "recommended" runs it
    only unboosted and at each setting's recommended M, as the paper does (half the cost). on_record is
    called with each record as its batch finishes, so a long sweep that is stopped keeps what it ran.
    """
    if test_at not in ("all", "recommended"):
        raise ValueError(f"test_at must be all or recommended, got {test_at!r}")
    base = base or BoostSpec()
    params = params or GenerationParams(max_new_tokens=64)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cases = list(cases)
    splits = assign_splits(cases)
    t0 = time.perf_counter()
    records: list[dict] = []

    validation = [c for c in cases if splits[c.name] == "validation"]
    test = [c for c in cases if splits[c.name] == "test"]

    def run(m: float, group: Sequence[SweepSetting], subset: Sequence[Case] = cases, baseline: bool = False) -> None:
        reqs, cs, where = [], [], []
        for setting in group:
            reqs += _requests(subset, m, setting, base, params, baseline)
            cs += subset
            where += [setting] * len(subset)
        for (result, scores), case, setting in zip(run_rows(engine, reqs, cs, batch_size, perplexity, copy_words),
                                                   cs, where):
            # The text rides along so a records file can be read and rescored later (--records).
            records.append({**record(scores, case=case.name, split_=splits[case.name], multiplier=m,
                                     setting=setting), "output": result.text})
            if on_record is not None:
                on_record(records[-1])

    run(1.0, [settings[0]], baseline=True)  # the unboosted baseline, shared by every setting (protocol._by_setting)
    done = [1.0]
    log(f"M=1: {len(cases)} cases in {time.perf_counter() - t0:.0f} s")
    # A baseline below the floor ends every setting's walk at M = 1 (they share it).
    going = [] if still_going(records, settings[:1], floor) == [] else list(settings)
    for m in boosted_grid(grid):
        if not going:
            break
        t = time.perf_counter()
        subset = cases if test_at == "all" else validation
        run(m, going, subset)
        done.append(m)
        stats = ", ".join(f"{x['setting']}: success {x['success']}, effective {x['effective_success']}, "
                          f"fluency {x['fluency']}"
                          for s_ in going for x in validation_stats(records, s_) if x["multiplier"] == m)
        log(f"M={m:g}: {len(going)} setting(s) x {len(subset)} cases in {time.perf_counter() - t:.0f} s ({stats})")
        going = still_going(records, going, floor)
    if test_at == "recommended":
        for setting in settings:
            pick = protocol.recommend(validation_stats(records, setting), floor, copy_ceiling)["multiplier"]
            if pick is not None and pick != 1.0:
                t = time.perf_counter()
                run(pick, [setting], test)
                log(f"test half at M={pick:g} ({setting.label}): {len(test)} cases in {time.perf_counter() - t:.0f} s")
    result = protocol.calibrate(records, floor=floor, copy_ceiling=copy_ceiling, n_boot=n_boot)
    return {"records": records, "summary": result_summary(result), "multipliers_run": done,
            "seconds": time.perf_counter() - t0}
