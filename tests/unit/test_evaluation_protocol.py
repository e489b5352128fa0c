"""The paper's protocol: grids, the stop rule and choice of M, bootstrap CIs, the summary and calibration."""

import pytest

from shared.errors import ValidationError
from shared.evaluation.protocol import (LOG_GRID, PAPER_GRID, bootstrap_ci, calibrate, get_grid, log_grid,
                                        next_multiplier, recommend, summarize)


def stats(*rows):
    return [{"multiplier": m, "success": s, "fluency": f} for m, s, f in rows]


def test_grids():
    assert PAPER_GRID == (1, 3, 5, 7, 9, 11, 13, 15, 17, 19)
    assert LOG_GRID == (1, 1.4, 1.9, 2.7, 3.8, 5.3, 7.4, 10, 14, 20)
    assert get_grid() == PAPER_GRID and get_grid("log") == LOG_GRID
    assert get_grid([5, 1, 5.0, 2]) == (1.0, 2.0, 5.0)
    assert log_grid(1, 100, 3) == (1.0, 10.0, 100.0)
    for bad in ("linear", [], [0, 1], [float("nan")], [True]):
        with pytest.raises(ValidationError):
            get_grid(bad)


def test_stop_at_the_first_dip_even_if_fluency_recovers():
    rows = stats((1, 0.2, 1.9), (3, 0.4, 1.7), (5, 0.7, 1.3), (7, 0.9, 0.8), (9, 1.0, 1.5))
    pick = recommend(rows)
    assert pick["multiplier"] == 5 and pick["success"] == 0.7
    assert pick["stopped_at"] == 7 and pick["considered"] == [1, 3, 5]
    assert "M=7 fell below the fluency floor" in pick["reason"]


def test_choice_is_the_highest_success_with_ties_to_the_smaller_m():
    rows = stats((5, 0.6, 1.2), (1, 0.1, 1.9), (3, 0.6, 1.6), (7, 0.5, 1.0))  # unsorted on purpose
    pick = recommend(rows)
    assert pick["multiplier"] == 3 and pick["stopped_at"] is None and pick["considered"] == [1, 3, 5, 7]


def test_the_floor_is_configurable_and_inclusive():
    rows = stats((1, 0.2, 1.9), (3, 0.5, 1.5), (5, 0.8, 1.2))
    assert recommend(rows, floor=1.2)["multiplier"] == 5
    assert recommend(rows, floor=1.3)["multiplier"] == 3


def test_no_recommendation_when_even_m1_is_below_the_floor():
    pick = recommend(stats((1, 0.5, 0.9), (3, 0.9, 1.5)))
    assert pick["multiplier"] is None and pick["stopped_at"] == 1 and "no M is at or above" in pick["reason"]
    assert recommend(stats((1, None, 1.9)))["multiplier"] is None
    assert recommend(stats((1, 0.3, 1.9), (3, 0.5, None)))["stopped_at"] == 3


def test_next_multiplier_stops_going_up():
    assert next_multiplier(PAPER_GRID, []) == 1
    assert next_multiplier(PAPER_GRID, stats((1, 0.1, 1.9), (3, 0.3, 1.5))) == 5
    assert next_multiplier(PAPER_GRID, stats((1, 0.1, 1.9), (3, 0.3, 0.5))) is None
    assert next_multiplier((1, 3), stats((1, 0.1, 1.9), (3, 0.3, 1.5))) is None


def test_bootstrap_ci_is_seeded_and_contains_the_estimate():
    values = [True] * 14 + [False] * 6
    ci = bootstrap_ci(values, seed=3)
    assert ci == bootstrap_ci(values, seed=3)
    lo, hi = ci
    assert 0.4 < lo < 0.7 < hi < 0.95
    fluency = [0.2, 1.9, 1.4, 0.7, 2.0, 1.1, 1.6, 0.9, 1.8, 1.3]
    assert bootstrap_ci(fluency, seed=3) != bootstrap_ci(fluency, seed=4)
    # random.Random(seed).random() is reproducible across Python versions, so this value is pinned.
    assert bootstrap_ci(fluency, seed=3) == pytest.approx((0.96, 1.6))
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)
    assert bootstrap_ci([]) == (None, None)
    narrow = bootstrap_ci(values, level=0.5, seed=3)
    assert lo <= narrow[0] <= narrow[1] <= hi


def records(setting, table, n=10, head_fraction=1.0, copied=0, deflected=0):
    """Make n validation and n test records per M: success rate s, fluency f; the first copied + deflected
    of them (passing the checks) copy the instruction or deflect."""
    out = []
    for m, (s, f) in table.items():
        for part in ("validation", "test"):
            for i in range(n):
                out.append({"multiplier": m, "layers": setting, "head_fraction": head_fraction, "split": part,
                            "case": f"c{i}", "follows": i < round(s * n), "fluency": f, "copied": i < copied,
                            "deflected": copied <= i < copied + deflected,
                            "repetitive": False, "repeated_ngram_share": 0.05, "truncated": None})
    return out


def test_summarize_rows_per_setting_m_and_split():
    rows = summarize(records("all", {1: (0.2, 1.9), 3: (0.5, 1.6)}), n_boot=200)
    assert [(r["multiplier"], r["split"]) for r in rows] == [(1, "validation"), (1, "test"), (3, "validation"),
                                                             (3, "test")]
    r = rows[2]
    assert (r["setting"], r["n"], r["success"], r["fluency"], r["copy_rate"]) == ("all", 10, 0.5, 1.6, 0.0)
    assert r["success_lo"] <= r["success"] <= r["success_hi"]
    assert r["repetitive_rate"] == 0.0 and r["truncated_rate"] is None and r["repetition"] == 0.05


def test_calibrate_per_setting_and_overall():
    runs = records("all", {1: (0.2, 1.9), 3: (0.4, 1.7), 5: (0.7, 1.3), 7: (0.9, 0.8), 9: (1.0, 1.5)})
    # The middle setting has no M = 1 runs of its own: it shares the unboosted ones.
    runs += [r for r in records("middle", {3: (0.3, 1.8), 5: (0.5, 1.6), 7: (0.8, 1.4), 9: (0.6, 0.9)},
                                head_fraction=0.5)]
    result = calibrate(runs, n_boot=300)
    by = {s["setting"]: s for s in result["settings"]}
    assert set(by) == {"all", "middle, 50% heads"}
    assert by["all"]["multiplier"] == 5 and by["all"]["stopped_at"] == 7
    mid = by["middle, 50% heads"]
    assert mid["multiplier"] == 7 and mid["considered"] == [1, 3, 5, 7] and mid["stopped_at"] == 9
    assert mid["baseline_test"]["success"] == 0.2  # the shared unboosted runs
    best = result["best"]
    assert (best["setting"], best["multiplier"], best["success"]) == ("middle, 50% heads", 7, 0.8)
    test = best["test"]
    assert test["split"] == "test" and test["multiplier"] == 7 and test["n"] == 10
    assert test["success_lo"] <= test["success"] <= test["success_hi"]
    assert calibrate(runs, n_boot=300) == result


def test_calibrate_can_use_the_judge_or_loose_keys():
    runs = records("all", {1: (0.2, 1.9), 3: (0.6, 1.5)})
    for r in runs:
        r["judge_follows"], r["judge_fluency"] = r["multiplier"] == 1, 0.5 if r["multiplier"] == 3 else 2.0
    result = calibrate(runs, success="judge_follows", fluency="judge_fluency", n_boot=100)
    assert result["best"]["multiplier"] == 1 and result["best"]["stopped_at"] == 3


def test_bad_records_are_reported_together():
    with pytest.raises(ValidationError) as err:
        summarize([{"multiplier": 0, "layers": "all", "split": "validation"},
                   {"multiplier": 3, "layers": None, "split": "train"}])
    assert [e["field"] for e in err.value.errors] == ["records[0].multiplier", "records[1].split",
                                                      "records[1].layers"]


def test_effective_success_leaves_out_copies_and_deflections():
    rows = summarize(records("all", {1: (0.2, 1.9), 5: (0.6, 1.5)}, copied=1, deflected=2), n_boot=200)
    r = next(r for r in rows if r["multiplier"] == 5 and r["split"] == "validation")
    assert (r["success"], r["effective_success"], r["copy_rate"], r["deflection_rate"]) == (0.6, 0.3, 0.1, 0.2)
    assert r["effective_success_lo"] <= r["effective_success"] <= r["effective_success_hi"]
    # Records scored before the deflection scorer count a canned reply as a deflection.
    old = [{k: v for k, v in x.items() if k != "deflected"} | {"canned": x["deflected"]}
           for x in records("all", {1: (0.5, 1.9)}, deflected=3)]
    assert summarize(old, n_boot=10)[0]["effective_success"] == 0.2
    # A loop is no effective success either.
    loops = [x | {"repetitive": i < 2} for i, x in enumerate(records("all", {1: (0.5, 1.9)}))]
    assert summarize(loops, n_boot=10)[0]["effective_success"] == 0.3


def test_the_recommendation_ranks_by_effective_success():
    # M = 7 passes the most checks, but a third of its outputs talk about the instruction instead.
    runs = records("all", {1: (0.1, 1.9), 5: (0.4, 1.6)}) + records("all", {7: (0.5, 1.5)}, deflected=3)
    result = calibrate(runs, n_boot=100)
    best = result["best"]
    assert (best["multiplier"], best["success"], best["effective_success"]) == (5, 0.4, 0.4)
    assert "highest validation effective success (0.4)" in best["reason"]
    strict_best = max((r for r in result["table"] if r["split"] == "validation"), key=lambda r: r["success"])
    assert strict_best["multiplier"] == 7 and strict_best["effective_success"] == 0.2


def test_the_copy_ceiling_passes_over_an_m_that_copies_too_often():
    runs = records("all", {1: (0.1, 1.9), 5: (0.4, 1.6)}) + records("all", {7: (0.6, 1.5)}, n=20, copied=2)
    # M = 7 copies in 10% of its outputs: effective 0.5 beats 0.4, but it is over a 5% ceiling.
    assert calibrate(runs, copy_ceiling=0.05, n_boot=50)["best"]["multiplier"] == 5
    pick = calibrate(runs, copy_ceiling=0.05, n_boot=50)["settings"][0]
    assert pick["over_copy_ceiling"] == [7] and pick["considered"] == [1, 5] and pick["stopped_at"] is None
    assert "M=7 copied the instruction too often (copy rate above 5%)" in pick["reason"]
    assert calibrate(runs, copy_ceiling=0.1, n_boot=50)["best"]["multiplier"] == 7
    assert calibrate(runs, copy_ceiling=None, n_boot=50)["best"]["multiplier"] == 7
    # The unboosted baseline is always a candidate, whatever it copies.
    base = records("all", {1: (0.5, 1.9)}, copied=1) + records("all", {3: (0.2, 1.8)})
    assert calibrate(base, copy_ceiling=0.05, n_boot=50)["settings"][0]["considered"] == [1, 3]
    assert calibrate(base, copy_ceiling=0.05, n_boot=50)["best"]["multiplier"] == 1


def test_recommend_without_effective_rows_ranks_by_strict_success():
    assert recommend(stats((1, 0.2, 1.9), (3, 0.5, 1.5)), copy_ceiling=0.05)["multiplier"] == 3


def test_scope_and_target_mass_are_settings_of_their_own():
    from shared.calibration import result_summary, sweep_settings

    runs = records("all", {1: (0.1, 1.9), 5: (0.4, 1.6)})
    for r in records("all", {5: (0.6, 1.5)}):
        runs.append({**r, "scope": "generated", "target_mass": 0.3})
    result = calibrate(runs, n_boot=50)
    assert [s["setting"] for s in result["settings"]] == ["all", "all, generated, target 0.3"]
    best = result_summary(result)["recommended"]
    assert (best["setting"], best["scope"], best["target_mass"], best["multiplier"]) == \
        ("all, generated, target 0.3", "generated", 0.3, 5)
    assert result["settings"][1]["baseline_test"]["success"] == 0.1  # the shared unboosted runs
    labels = [s.label for s in sweep_settings(["all"], [1], ["all", "generated"], [None, 0.5])]
    assert labels == ["all", "all, generated", "all, target 0.5", "all, generated, target 0.5"]
    with pytest.raises(ValidationError) as exc:
        sweep_settings(["all"], [1], ["sideways"], [1.5])
    assert {e["field"] for e in exc.value.errors} == {"scopes[0]", "target_masses[0]"}
