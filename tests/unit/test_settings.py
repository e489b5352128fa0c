"""Settings are declared once and feed config.yaml, the environment and the README."""

from pathlib import Path

import pytest

from shared.errors import ValidationError
from shared.settings import SETTINGS, load_settings, to_markdown, to_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_config_yaml_is_generated_from_settings():
    assert (ROOT / "config.yaml").read_text() == to_yaml(), "run: instaboost settings --yaml > config.yaml"


def test_readme_settings_table_is_current():
    assert to_markdown() in (ROOT / "README.md").read_text(), "run: instaboost settings --markdown, paste into README"


def test_prototype_keys_are_present():
    names = {s.name for s in SETTINGS}
    for key in ["random_seed", "model.name", "model.device", "instaboost.multiplier",
                "instaboost.boost_middle_layers_only", "instaboost.num_middle_layers", "instaboost.start_layer",
                "instaboost.head_boost_percentage", "generation.temperature", "generation.max_new_tokens",
                "generation.top_p", "evaluation.num_runs"]:
        assert key in names


def test_precedence_default_file_dotenv_environment(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("instaboost:\n  multiplier: 4\n  start_layer: 3\ngeneration:\n  top_p: 0.5\n")
    dot = tmp_path / ".env"
    dot.write_text("INSTABOOST_START_LAYER=6\nHUGGINGFACE_TOKEN=hf_secret\n")
    s = load_settings(cfg, env={"INSTABOOST_GENERATION_TOP_P": "0.8"}, dotenv=dot)
    assert s.instaboost.multiplier == 4.0          # file
    assert s.instaboost.start_layer == 6           # .env beats file
    assert s.generation.top_p == 0.8               # environment beats all
    assert s.instaboost.num_middle_layers == 5     # default
    assert s.hf.token == "hf_secret"               # alias variable
    assert s.public()["hf.token"] == "***"
    assert "hf_secret" not in to_yaml() + to_markdown()


def test_bad_values_say_what_to_fix(tmp_path):
    with pytest.raises(ValidationError, match="instaboost.start_layer must be a int"):
        load_settings(None, env={"INSTABOOST_START_LAYER": "eight"}, dotenv=None)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("instaboost:\n  multiplyer: 4\n")
    with pytest.raises(ValidationError, match="unknown setting 'instaboost.multiplyer'"):
        load_settings(cfg, env={}, dotenv=None)
    with pytest.raises(ValidationError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={}, dotenv=None)


def test_config_yaml_refuses_aliases(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("generation:\n  max_new_tokens: &n 64\nlimits:\n  max_new_tokens: *n\n")
    with pytest.raises(ValidationError, match=r"YAML aliases \(\*n, line 4\) are not allowed in config.yaml"):
        load_settings(cfg, env={}, dotenv=None)


def test_list_and_bool_settings_parse_from_environment():
    s = load_settings(None, env={"INSTABOOST_WORKER_MODELS": "a, b", "INSTABOOST_BOOST_MIDDLE_LAYERS_ONLY": "yes"},
                      dotenv=None)
    assert s.worker.models == ["a", "b"]
    assert s.instaboost.boost_middle_layers_only is True


def test_renamed_testing_settings_are_still_read(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("testing:\n  num_runs: 3\n")
    assert load_settings(cfg, env={}, dotenv=None)["evaluation.num_runs"] == 3
    s = load_settings(cfg, env={"INSTABOOST_TESTING_RESULTS_DIR": "old-dir"}, dotenv=None)
    assert s.evaluation.results_dir == "old-dir"


def test_settings_are_typed_attributes():
    s = load_settings(None, env={"INSTABOOST_CONFIG": "", "INSTABOOST_WEB_WORKERS": "3"}, dotenv=None)
    assert s.web.workers == 3 and type(s.web.workers) is int
    assert type(s.sweeper.interval) is float and type(s.worker.batch_jobs) is bool
    assert s.worker.models == ["smollm2-135m-instruct"] and s.random_seed == 42
    assert all(getattr(getattr(s, name.rpartition(".")[0]), name.rpartition(".")[2]) == s[name]
               for name in s if "." in name)


def test_a_misspelt_setting_fails_at_first_use():
    s = load_settings(None, env={"INSTABOOST_CONFIG": ""}, dotenv=None)
    with pytest.raises(AttributeError, match="worker"):
        s.web.worker
    with pytest.raises(AttributeError, match="no setting or section 'webb'"):
        s.webb
    with pytest.raises(Exception, match="frozen"):
        s.web.workers = 4


def _settings_reads(tree):
    """Yield (line, receiver, section, key) for every `<...settings>.<section>.<key>` read in a module."""
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            receiver = ast.unparse(node.value.value)
            if receiver in ("s", "SETTINGS") or receiver.endswith(("settings", "settings()")):
                yield node.lineno, receiver, node.value.attr, node.attr


def test_every_settings_attribute_in_the_source_is_declared():
    """A typo in a rarely run path fails here, not in production: each settings.<section>.<key> exists."""
    import ast

    from shared import settings as settings_module
    from shared.settings import SECTIONS, Settings

    known = set(dir(Settings)) | set(dir(settings_module)) | {"cache_clear"}
    bad = []
    for folder in ("shared", "web", "worker", "tests", "bench", "migrations"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue  # its misspelt names are on purpose
            for line, receiver, section, key in _settings_reads(ast.parse(path.read_text())):
                where = f"{path.relative_to(ROOT)}:{line}: {section}.{key}"
                if section in SECTIONS:
                    if key not in SECTIONS[section].model_fields:
                        bad.append(where)
                elif receiver != "s" and section not in known and not section[:1].isupper():
                    bad.append(where)
    assert bad == [], "settings read that SETTINGS does not declare: " + ", ".join(bad)
