"""Issue 21: the boilerplate M as a sweep dimension (pure: no model, no database)."""

from shared.calibration import SweepSetting, cell_key, sweep_settings, varying
from shared.evaluation import protocol
from shared.requests.sweep import validate_sweep
from shared.settings import get_settings


def test_boilerplate_multipliers_are_swept_and_labelled():
    got = sweep_settings(["all"], [1.0], ["all"], [None], [1, 0.5])
    assert [s.label for s in got] == ["all", "all, boilerplate 0.5"]
    assert [s.cell_key for s in got] == ["", "all||0.5"]
    assert cell_key("generated", 0.3) == cell_key("generated", 0.3, 1.0) == "generated|0.3"  # keys stored before
    assert [k for k, _ in varying([s.to_dict() for s in got])] == ["boilerplate_multiplier"]
    assert protocol.setting_label("all", 1.0, "all", None, None) == "all"  # records stored before lack it
    assert SweepSetting("all").boilerplate_multiplier == 1.0


def test_bad_boilerplate_multipliers_are_refused_naming_the_field():
    s = get_settings()
    for bad in ([0], [1.5], ["x"]):
        req, errors = validate_sweep({"pack": "default", "boilerplate_multipliers": bad}, s, strict=True)
        assert req is None and errors[0]["field"].startswith("boilerplate_multipliers"), errors
        assert "(0, 1]" in errors[0]["message"] or "number" in errors[0]["message"], errors
    req, errors = validate_sweep({"pack": "default", "boilerplate_multipliers": "1, 0.5"}, s, strict=False)
    assert not errors and req.swept_boilerplate_multipliers() == [1.0, 0.5]
    req, _ = validate_sweep({"pack": "default", "boilerplate_multiplier": 0.5, "boilerplate_multipliers": [1]}, s,
                            strict=True)
    assert req.dimension_problems({"boilerplate_multiplier": 0.5})[0]["field"] == "boilerplate_multipliers"
