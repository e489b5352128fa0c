"""The test layout: every test module lives in a layer folder, and every layer folder marks its tests."""

from tests.helpers import ROOT

TESTS = ROOT / "tests"
SHARED = {"__init__.py", "conftest.py", "helpers.py"}
# Where a new test goes (the README's Tests section says the same):
LAYERS = {
    "unit": "pure functions and small tensors: no model, no services",
    "cli": "the instaboost command in a subprocess refusing bad input (no services)",
    "engine": "the method on real or tiny models (worker/engine), the command when it generates",
    "store": "the job store on PostgreSQL/SQLite: lifecycle, paging, migrations",
    "web": "the Flask app through its test client: API, pages, security, bad input, fuzz",
    "jobs": "the task body and real worker processes: faults, end to end, concurrent submissions",
    "system": "the whole system from outside: serve, startup, browser, compose, Docker",
}


def test_no_test_module_sits_directly_in_tests():
    loose = sorted(p.name for p in TESTS.glob("*.py") if p.name not in SHARED)
    where = "\n".join(f"  tests/{name}/: {what}" for name, what in LAYERS.items())
    assert not loose, f"move {loose} into the layer folder it belongs to (git mv keeps its history):\n{where}"


def test_every_layer_folder_has_its_conftest_and_nothing_else_holds_tests():
    folders = {p.parent.name for p in TESTS.glob("*/test_*.py")}
    assert folders <= set(LAYERS), f"test modules in a folder that is no layer: {sorted(folders - set(LAYERS))}"
    for name in LAYERS:
        conftest = TESTS / name / "conftest.py"
        assert conftest.is_file() and "mark_folder(__file__" in conftest.read_text(), \
            f"tests/{name}/conftest.py must apply the folder's markers: mark_folder(__file__, ...)"
        assert (TESTS / name / "__init__.py").is_file(), f"tests/{name}/__init__.py is missing"


def test_markers_come_from_the_folder_conftest_not_from_pytestmark():
    marked = sorted(str(p.relative_to(TESTS)) for p in TESTS.glob("*/test_*.py")
                    if any(line.startswith("pytestmark") for line in p.read_text().splitlines()))
    assert not marked, f"{marked}: set module-wide markers in the folder's conftest.py (mark_folder) instead"
