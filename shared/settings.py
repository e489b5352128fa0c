"""Every setting, declared once: name, type, default, help and environment variable.

The list feeds ``config.yaml`` (``instaboost settings --yaml``), environment overrides and the
README's settings table (``instaboost settings --markdown``); tests keep all three in step.
Precedence, lowest first: defaults, ``config.yaml``, ``.env``, the process environment.

Code reads them as typed attributes, one pydantic model per section generated from the table:
``get_settings().web.workers`` is an int, and a misspelt name raises AttributeError at its first use
(``tests/unit/test_settings.py`` also checks every ``settings.<section>.<key>`` in the source).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, create_model

from shared.errors import ValidationError


@dataclass(frozen=True)
class Setting:
    name: str  # dotted path into config.yaml, e.g. "model.name"
    type: type
    default: Any
    help: str
    env: str = ""  # environment variable; derived from the name when empty
    aliases: tuple[str, ...] = ()  # further environment variables, read when ``env`` is unset
    secret: bool = False  # never echoed in docs, logs or job parameters

    @property
    def env_var(self) -> str:
        # The "instaboost." section would repeat the prefix: INSTABOOST_MULTIPLIER, not INSTABOOST_INSTABOOST_...
        return self.env or "INSTABOOST_" + self.name.removeprefix("instaboost.").replace(".", "_").upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("random_seed", int, 42, "Seed for head selection and sampling."),
    Setting("model.name", str, "smollm2-135m-instruct",
            "Model alias, Hugging Face hub id, local save_pretrained folder or .gguf path."),
    Setting("model.device", str, "auto", "Device: auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu."),
    Setting("model.dtype", str, "auto", "Weights dtype: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16, float16."),
    Setting("model.cache_dir", str, "~/.cache/instaboost",
            "Where converted GGUF weights are cached (keyed by file hash)."),
    Setting("instaboost.multiplier", float, 10.0, "Attention multiplier M on the instruction tokens (1 = no boost)."),
    Setting("instaboost.boost_middle_layers_only", bool, False,
            "Boost only the middle block (start_layer, num_middle_layers) instead of all layers."),
    Setting("instaboost.num_middle_layers", int, 5, "How many layers the middle block spans."),
    Setting("instaboost.start_layer", int, 8, "First layer of the middle block."),
    Setting("instaboost.head_boost_percentage", float, 100.0,
            "Percentage of heads boosted in each boosted layer, chosen with random_seed."),
    Setting("instaboost.placement", str, "system",
            "Where the instruction goes: system (chat system turn), prefix (start of the user turn) or raw (no template)."),
    Setting("instaboost.engine", str, "fast",
            "fast (log-M bias inside fused attention) or transformerlens (hook_pattern reference)."),
    Setting("generation.temperature", float, 0.0, "Sampling temperature; 0 means greedy decoding."),
    Setting("generation.max_new_tokens", int, 128, "New tokens per generation."),
    Setting("generation.top_p", float, 1.0, "Nucleus sampling threshold (used when temperature > 0)."),
    Setting("evaluation.num_runs", int, 1, "Runs per evaluation case in run-tests.",
            aliases=("INSTABOOST_TESTING_NUM_RUNS",)),
    Setting("evaluation.results_dir", str, "results", "Where run-tests writes its CSV.",
            aliases=("INSTABOOST_TESTING_RESULTS_DIR",)),
    Setting("limits.max_new_tokens", int, 1024, "Largest max_new_tokens a job or command may ask for."),
    Setting("limits.max_variants", int, 12, "Most variants (multipliers x layer modes, plus the original) per job."),
    Setting("limits.max_text_chars", int, 20000, "Longest instruction or query, in characters."),
    Setting("limits.max_queued_jobs", int, 1000,
            "Submissions beyond this many queued jobs get HTTP 429; a sweep's next stage waits until it fits."),
    Setting("limits.max_running_sweeps", int, 4,
            "Calibration sweeps that may run at once; starting one more gets HTTP 429."),
    Setting("limits.queued_without_worker_seconds", float, 3600.0,
            "Seconds a queued job may wait while no live worker serves (or loads) its model before the recovery loop fails "
            "it, saying to start a worker for that model (such jobs would otherwise wait forever and count against "
            "limits.max_queued_jobs); 0 keeps them queued for ever."),
    Setting("limits.max_request_bytes", int, 1_000_000, "Largest HTTP request body the web app accepts."),
    Setting("limits.max_file_bytes", int, 20_000_000,
            "Largest file POST /v1/files accepts (a batch's JSONL input), in bytes."),
    Setting("limits.max_files", int, 1000,
            "Most files stored at once (uploads and batch output/error files); an upload past it gets HTTP 429."),
    Setting("limits.max_file_storage_bytes", int, 2_000_000_000,
            "Most bytes of files stored at once (uploads and batch output/error files); an upload past it gets "
            "HTTP 429."),
    Setting("v1.file_expiry_hours", float, 720.0,
            "Hours a stored file lives (uploads without expires_after, and batch output/error files); then it "
            "answers 404 and the recovery loop deletes it. 0 keeps files until deleted."),
    Setting("v1.wait_seconds", float, 120.0,
            "Seconds POST /v1/chat/completions waits for its job before answering 504 with the job's id to poll; "
            "a stream waits as long for its first text and for each next piece (a stall bound, not a total)."),
    Setting("database.url", str, "sqlite:///instaboost.db", "SQLAlchemy URL of the job store.", env="DATABASE_URL"),
    Setting("redis.url", str, "redis://127.0.0.1:6379/0", "Redis URL: Celery broker and worker heartbeats.", env="REDIS_URL"),
    Setting("redis.namespace", str, "instaboost",
            "Prefix of this deployment's Redis keys and queue names. A prefix belongs to one database (deployment): "
            "deployments sharing one Redis each need their own, or the second refuses to start."),
    Setting("redis.reconnect_max_seconds", float, 2.0,
            "Longest pause between two attempts to reach Redis again: caps the worker's reconnect backoff (Celery's "
            "own grows to 30 s) and paces the recovery loop's passes while Redis is unreachable, so work resumes within "
            "about this long after Redis returns, whatever the outage length."),
    Setting("worker.models", list, ["smollm2-135m-instruct"],
            "Models each worker preloads and serves (comma-separated in the environment)."),
    Setting("worker.job_time_limit", int, 1800, "Seconds a job may run before it is failed."),
    Setting("worker.max_batch_rows", int, 32,
            "Most rows (job variants) a worker decodes together in one batch (fast engine), from one job or, with "
            "worker.batch_jobs, from several; 1 runs every variant alone. Progress moves a batch at a time; a cancel stops its job's rows at "
            "the next token.",
            aliases=("INSTABOOST_WORKER_VARIANT_BATCH",)),
    Setting("worker.batch_jobs", bool, True,
            "Fill a worker's batch with other queued jobs of its model (their messages then find them running "
            "or done and are skipped); off: a worker runs one job at a time."),
    Setting("worker.continuous", bool, True,
            "Continuous batching for fast-engine jobs: rows join and leave the batch at every decoding step (a "
            "finished row is stored and its stream ends at once, a waiting row joins at once, chats ahead of "
            "queued lines), up to worker.max_batch_rows; off: the static runner, whose steps decode to their "
            "longest row before storing and refilling."),
    Setting("worker.step_token_budget", int, 512,
            "With worker.continuous, most tokens one decoding step processes: each running row's token counts 1, "
            "a joining row's prompt the tokens prefilled this step. A longer prompt is prefilled in chunks over "
            "several steps while the running rows go on decoding, and joins once all of it is in; keep it above "
            "worker.max_batch_rows so joining rows get a share of every step. 0: no limit (a joining prompt is "
            "prefilled whole in the step it joins)."),
    Setting("worker.batch_wait", float, 0.5,
            "With worker.batch_jobs, at most this many seconds a delivery waits before its first batch while more "
            "jobs keep arriving (it looks every 0.1 s and starts once a look finds none, or the batch is full); "
            "0 starts at once."),
    Setting("worker.max_attempts", int, 3, "Deliveries of a job before it is failed as poison."),
    Setting("worker.visibility_timeout", int, 7200,
            "Seconds Redis waits before redelivering an unacknowledged job; must exceed job_time_limit."),
    Setting("worker.heartbeat_interval", float, 10.0, "Seconds between a worker's heartbeats in Redis."),
    Setting("worker.heartbeat_ttl", float, 30.0,
            "Seconds a heartbeat outlives its last refresh; a worker silent this long counts as dead."),
    Setting("worker.db_retry_seconds", float, 60.0,
            "How long a worker retries (with backoff) a database write that failed because the database was unreachable."),
    Setting("sweeper.enabled", bool, True,
            "Run the recovery loop thread in each worker: re-enqueue jobs whose message or worker was lost."),
    Setting("sweeper.interval", float, 15.0, "Seconds between two recovery passes."),
    Setting("sweeper.outbox_grace", float, 30.0,
            "Seconds a queued job may wait for the broker to accept its message before the recovery loop sends it again."),
    Setting("sweeper.lost_after", float, 60.0,
            "Seconds a queued job's message must be missing from Redis (e.g. a restart without persistence) before it is sent again."),
    Setting("v1.max_n", int, 8,
            "Most choices (n) one chat completion, or one /v1/completions prompt, may ask for; each is a row of the "
            "same job, decoded together."),
    Setting("v1.idempotency_hours", float, 24.0,
            "Hours a chat completion's Idempotency-Key (or an openai SDK retry of the same request) maps to its "
            "job: a retry within them answers from that job instead of submitting another."),
    Setting("web.workers", int, 2,
            "gunicorn worker processes of the web app (gunicorn.conf.py; `instaboost serve --web-workers` overrides)."),
    Setting("web.threads", int, 16,
            "Threads per web worker process (at least 3). Each waiting or streaming /v1 chat completion holds one; "
            "2 per process stay free for other requests, so one web server holds web.workers x (web.threads - 2) "
            "of them at once and answers 429 (Retry-After) beyond that."),
    Setting("web.timeout", int, 60,
            "Seconds gunicorn lets a web worker process go without a heartbeat before restarting it. Threaded "
            "workers heartbeat while requests wait, so a long completion or stream never reaches it."),
    Setting("web.graceful_timeout", int, 20,
            "Seconds a stopping web server (SIGTERM) lets requests in flight finish; a completion still waiting "
            "then is cut, and the client's retry finds the same job (v1.idempotency_hours)."),
    Setting("web.api_token", str, "",
            "When set, every page and API route that reads or changes jobs requires it: scripts send "
            "'Authorization: Bearer <token>', browsers log in at /login. Empty: open to anyone who can reach it.",
            secret=True),
    Setting("web.secret_key", str, "", "Flask secret key for sessions and CSRF; random per process when empty.", secret=True),
    Setting("web.session_cookie_secure", str, "auto",
            "Mark the login session cookie Secure: auto (when the request came over https), true (always; e.g. "
            "behind a TLS proxy that does not forward the scheme) or false."),
    Setting("web.session_hours", float, 12.0, "Hours a browser login lasts before the token is asked again."),
    Setting("web.trusted_origins", list, [],
            "Other origins (scheme://host[:port], comma-separated) whose pages may send state-changing requests; "
            "such requests from any other site are refused."),
    Setting("web.allowed_hosts", list, [],
            "Host names the web app answers (host or host:port, comma-separated; '*' any; a leading dot matches "
            "subdomains); requests naming another Host get 400, which stops DNS-rebinding pages. Empty: the loopback "
            "names (localhost, 127.0.0.1, [::1]) when web.api_token is empty, any host when a token is set. Set it "
            "when serving an open instance on another address (serve --host 0.0.0.0)."),
    Setting("scoring.copy_words", int, 6,
            "Words in a row an output must reproduce from the instruction to count as copying it (scores)."),
    Setting("scoring.copy_ceiling", float, 0.05,
            "Largest validation copy rate (share of outputs copying the instruction) a calibration sweep may "
            "recommend; an M above it is passed over."),
    Setting("judge.url", str, "",
            "OpenAI-compatible endpoint of the optional LLM judge, e.g. http://127.0.0.1:8000/v1; empty: no judge."),
    Setting("judge.model", str, "", "Model name the judge endpoint serves."),
    Setting("judge.api_key", str, "", "API key sent to the judge endpoint (Bearer).", secret=True),
    Setting("judge.timeout", float, 60.0, "Seconds to wait for one judge answer."),
    Setting("hf.token", str, "", "Hugging Face token for gated hub models.", env="HF_TOKEN",
            aliases=("HUGGINGFACE_TOKEN",), secret=True),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# Said at startup (web app and `instaboost serve`) when web.api_token is empty.
OPEN_MODE_MESSAGE = "no web.api_token set: the service is open to anyone who can reach it"
# Old names still read from config.yaml (their environment variables are the settings' aliases).
RENAMED = {"testing.num_runs": "evaluation.num_runs", "testing.results_dir": "evaluation.results_dir",
           "worker.variant_batch": "worker.max_batch_rows"}




def _section_models() -> dict[str, type[BaseModel]]:
    """Return one frozen pydantic model per section ("web", "worker", ...), its fields typed from SETTINGS."""
    fields: dict[str, dict[str, Any]] = {}
    for s in SETTINGS:
        head, _, key = s.name.rpartition(".")
        if head:
            assert "." not in head and key.isidentifier(), f"{s.name}: a section.key name reads as one attribute"
            fields.setdefault(head, {})[key] = (list[str] if s.type is list else s.type, ...)
    config = ConfigDict(frozen=True, extra="forbid")
    return {head: create_model(f"{head.title()}Settings", __config__=config, **f) for head, f in fields.items()}


SECTIONS: dict[str, type[BaseModel]] = _section_models()
# Settings without a section ("random_seed"): attributes of Settings itself.
TOP_LEVEL: frozenset[str] = frozenset(s.name for s in SETTINGS if "." not in s.name)
assert not TOP_LEVEL & set(SECTIONS), "a top-level setting shadows a section"


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    try:
        if setting.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if setting.type is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if setting.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return setting.type(value)
    except (TypeError, ValueError):
        raise ValidationError(
            f"{source}: {setting.name} must be a {setting.type.__name__}, got {value!r}", field=setting.name
        ) from None


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


class Settings(Mapping):
    """Resolved settings, read by typed attribute: ``settings.model.name``, ``settings.random_seed``.

    Still a read-only mapping by dotted name, for code that picks a setting by a name held in data
    (a field's ``setting``, ``instaboost settings`` listing them all).
    """

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        self._values = values
        self.sources = sources
        sections: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            head, _, key = name.rpartition(".")
            if head:
                sections.setdefault(head, {})[key] = value
        self._sections = {head: SECTIONS[head](**sections.get(head, {})) for head in SECTIONS}

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not ordinary attributes: sections and top-level settings.
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._sections:
            return self._sections[name]
        if name in TOP_LEVEL:
            return self._values[name]
        raise AttributeError(f"no setting or section {name!r}; see 'instaboost settings' "
                             f"(sections: {', '.join(sorted(self._sections))})")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def public(self) -> dict[str, Any]:
        """Return the values with secrets masked."""
        return {k: ("***" if BY_NAME[k].secret and v else v) for k, v in self._values.items()}


def find_config(explicit: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """Return the config.yaml to read: explicit, $INSTABOOST_CONFIG, or ./config.yaml."""
    env = os.environ if env is None else env
    candidate = explicit or env.get("INSTABOOST_CONFIG")
    if candidate:
        path = Path(candidate).expanduser()
        if not path.is_file():
            raise ValidationError(f"config file {path} does not exist; fix INSTABOOST_CONFIG or --config")
        return path
    path = Path.cwd() / "config.yaml"
    return path if path.is_file() else None


def load_settings(config: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                  dotenv: str | os.PathLike | None = ".env", overrides: Mapping[str, Any] | None = None) -> Settings:
    """Resolve every setting from defaults, config.yaml, .env, the environment and explicit overrides."""
    import yaml

    from shared import yamlsafe

    env = dict(os.environ if env is None else env)
    values = {s.name: s.default for s in SETTINGS}
    sources = {s.name: "default" for s in SETTINGS}

    path = find_config(config, env)
    if path is not None:
        try:
            tree = yamlsafe.safe_load(path.read_text(), "config.yaml") or {}
        except yaml.YAMLError as exc:
            raise ValidationError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(tree, Mapping):
            raise ValidationError(f"{path} must hold a mapping of sections")
        for name, value in _flatten(tree).items():
            name = RENAMED.get(name, name)
            if name not in BY_NAME:
                raise ValidationError(f"{path}: unknown setting {name!r}; see 'instaboost settings'", field=name)
            values[name] = _coerce(BY_NAME[name], value, str(path))
            sources[name] = str(path)

    dot = _read_dotenv(Path(dotenv)) if dotenv else {}
    for layer_name, layer in ((".env", dot), ("environment", env)):
        for s in SETTINGS:
            for var in (s.env_var, *s.aliases):
                if layer.get(var, "") != "":
                    values[s.name] = _coerce(s, layer[var], f"{layer_name} {var}")
                    sources[s.name] = f"{layer_name} {var}"
                    break

    for name, value in (overrides or {}).items():
        if name not in BY_NAME:
            raise ValidationError(f"unknown setting {name!r}", field=name)
        values[name] = _coerce(BY_NAME[name], value, "override")
        sources[name] = "override"
    return Settings(values, sources)


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings, loaded on first use (get_settings.cache_clear() forgets them)."""
    return load_settings()


def to_yaml() -> str:
    """Render config.yaml with every non-secret setting at its default and its help as a comment."""
    lines = ["# InstaBoost settings. Generated by `instaboost settings --yaml`; each key can be",
             "# overridden by the environment variable named in its comment.", ""]
    section = None
    for s in SETTINGS:
        if s.secret:
            continue
        head, _, key = s.name.rpartition(".")
        if head != section:
            if head:
                lines.append(f"{head}:")
            section = head
        indent = "  " if head else ""
        lines.append(f"{indent}# {s.help} (env {s.env_var})")
        lines.append(f"{indent}{key or s.name}: {json.dumps(s.default)}")
    return "\n".join(lines) + "\n"


def to_markdown() -> str:
    """Render the settings table for the README."""
    rows = ["| setting | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        env = " / ".join(f"`{v}`" for v in (s.env_var, *s.aliases))
        default = "(secret)" if s.secret and s.default else f"`{json.dumps(s.default)}`"
        rows.append(f"| `{s.name}` | {env} | {default} | {s.help} |")
    return "\n".join(rows) + "\n"
