"""Every job-request field, declared once: name, kind, bounds, default, help and where it appears.

``JOB_FIELDS`` generates the validator (``shared.schemas.JobRequest.from_dict``), the OpenAPI schema
(``web.openapi``), the submit form (``web.pages`` and ``index.html``) and the command-line options
(``worker.cli.main``); ``tests/unit/test_fields.py`` fails if any of them drifts from it. Adding a field
takes one row here plus its use.

Kinds: ``text`` (required, not blank), ``model`` (a model name), ``integer``, ``number``, ``choice``
(one of ``choices``), ``numbers`` (a non-empty list of distinct numbers), ``choices`` (a non-empty
list of distinct choices), ``boolean`` (a switch: a form checkbox, a command-line flag), ``checks``
(a list of simple checks ``{type, value}``, shared.evaluation.checks) and ``ifeval`` (a list of IFEval
instruction ids or ``{id, kwargs}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

PLACEMENTS = ("system", "prefix", "raw")
LAYER_MODES = ("all", "middle")
ENGINES = ("fast", "transformerlens")
# Which queries a boost applies to: every one, the decoding queries (those that predict an output token: the
# prompt's last position and each generated token's), or the rest of the prompt's.
SCOPES = ("all", "generated", "prompt")
MAX_MULTIPLIER = 1e6  # log(1e6) ~ 13.8: past this the span takes all the mass and M no longer matters
MAX_LAYER = 10_000
MAX_SEED = 2**32 - 1
MAX_TOP_K = 1_000_000  # past any vocabulary: as good as off
MAX_LOGIT_BIAS = 300  # logit_bias entries, as OpenAI allows
MAX_CHECKS = 20  # simple checks or IFEval instructions per job
KINDS = ("text", "model", "integer", "number", "choice", "numbers", "choices", "boolean", "checks", "ifeval",
         # Chat jobs only (CHAT_FIELDS; validated by shared.chat): OpenAI-shaped values.
         "messages", "strings", "object")


@dataclass(frozen=True)
class JobField:
    """One field of a job request."""

    name: str
    kind: str
    help: str
    label: str
    setting: str | None = None  # the setting whose value is the default (a list field wraps it in a list)
    default: Any = None  # the default when no setting gives it; None with no setting: required
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is excluded: (lo, hi]
    hi_open: bool = False  # hi itself is excluded: [lo, hi)
    nullable: bool = False  # optional with no default: null (or omitted) means off
    hi_setting: str | None = None  # an upper bound this deployment sets, e.g. limits.max_new_tokens
    choices: tuple[str, ...] = ()
    hint: str = ""  # appended to out-of-range messages, e.g. what a value means
    advanced: bool = False  # the form shows it under "Advanced settings"
    cli: str | None = None  # command-line flag; a list field takes one value there
    cli_short: str | None = None

    def __post_init__(self):
        assert self.kind in KINDS, self.kind

    @property
    def required(self) -> bool:
        return self.setting is None and self.default is None and not self.nullable

    @property
    def is_list(self) -> bool:
        return self.kind in ("numbers", "choices")

    @property
    def is_rules(self) -> bool:
        """A list of checks (simple or IFEval), given as JSON."""
        return self.kind in ("checks", "ifeval")

    def upper(self, settings: Mapping[str, Any] | None) -> float | None:
        """Return the upper bound in force: the declared one, or the setting's when it has one."""
        if self.hi_setting and settings is not None:
            return settings[self.hi_setting]
        return self.hi

    def default_value(self, settings: Mapping[str, Any]) -> Any:
        """Return the value an omitted field takes under these settings."""
        if self.setting is None:
            return list(self.default) if isinstance(self.default, tuple) else self.default
        value = settings[self.setting]
        return [value] if self.is_list else value

    def interval(self, settings: Mapping[str, Any] | None = None) -> str:
        """Return the allowed range as text, e.g. "in (0, 100]" or "between 1 and 1024"."""
        hi = self.upper(settings)
        if self.kind == "integer":
            return f"between {int(self.lo)} and {int(hi)}" if hi is not None else f">= {int(self.lo)}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {hi:g}{')' if self.hi_open else ']'}"


JOB_FIELDS: tuple[JobField, ...] = (
    JobField("instruction", "text", "Text whose tokens get boosted (a system prompt, a guideline, a format rule).",
             "Instruction", cli="--instruction"),
    JobField("query", "text", "The user's message the model answers.", "Query", cli="--query"),
    JobField("model", "model", "A model a live worker serves (see /api/models): an alias, hub id, folder or "
             ".gguf path.", "Model", setting="model.name", cli="--model"),
    JobField("multipliers", "numbers", "Attention multipliers M on the instruction tokens; one boosted variant "
             "per multiplier and layer mode (1 = no boost, below 1 de-boosts). The API and form also take 'recommended': "
             "the M the latest finished calibration sweep of the model recommends.", "Multipliers M",
             setting="instaboost.multiplier", lo=0, lo_open=True, hi=MAX_MULTIPLIER,
             hint="1 = no boost, below 1 de-boosts", cli="--multiplier", cli_short="-m"),
    JobField("layer_modes", "choices", "Which layers each multiplier boosts: all layers, the middle block, or both "
             "(one variant each).", "Boost layers", default=LAYER_MODES, choices=LAYER_MODES),
    JobField("start_layer", "integer", "First layer of the middle block.", "Start layer (middle block)",
             setting="instaboost.start_layer", lo=0, hi=MAX_LAYER, advanced=True, cli="--start-layer"),
    JobField("num_middle_layers", "integer", "How many layers the middle block spans.", "Middle layers",
             setting="instaboost.num_middle_layers", lo=1, hi=MAX_LAYER, advanced=True, cli="--num-middle-layers"),
    JobField("head_boost_percentage", "number", "Percentage of heads boosted in each boosted layer, chosen with "
             "the seed.", "Heads boosted (%)", setting="instaboost.head_boost_percentage", lo=0, lo_open=True,
             hi=100, advanced=True),
    JobField("seed", "integer", "Seed for head selection and sampling.", "Seed", setting="random_seed", lo=0,
             hi=MAX_SEED, advanced=True, cli="--seed"),
    JobField("placement", "choice", "Where the instruction goes: the chat system turn, the start of the user "
             "turn, or no template.", "Instruction placement", setting="instaboost.placement", choices=PLACEMENTS,
             advanced=True, cli="--placement"),
    JobField("scope", "choice", "Which queries the boost acts on: all (the prompt and the generated tokens), generated "
             "(only the decoding queries: the prompt's last position and each generated token's) or prompt (only the "
             "prompt's other positions).", "Boost scope", default="all", choices=SCOPES, advanced=True, cli="--scope"),
    JobField("target_mass", "number", "Instead of (or after) M, raise each boosted head's attention share on the "
             "instruction to at least this p, per query (null = off). Use with multipliers >= 1; M = 1 gives the "
             "target alone.", "Target mass p (empty = off)", lo=0, lo_open=True, hi=1, hi_open=True, nullable=True,
             hint="the share of attention on the instruction", advanced=True, cli="--target-mass"),
    JobField("engine", "choice", "fast (log-M bias inside fused attention) or transformerlens (the hook_pattern "
             "reference).", "Engine", setting="instaboost.engine", choices=ENGINES, advanced=True, cli="--engine"),
    JobField("max_new_tokens", "integer", "New tokens per generation.", "Max new tokens",
             setting="generation.max_new_tokens", lo=1, hi_setting="limits.max_new_tokens", advanced=True,
             cli="--max-new-tokens"),
    JobField("temperature", "number", "Sampling temperature; 0 means greedy decoding.", "Temperature (0 = greedy)",
             setting="generation.temperature", lo=0, hi=10, advanced=True, cli="--temperature"),
    JobField("top_p", "number", "Nucleus sampling threshold (used when temperature > 0).", "Top p",
             setting="generation.top_p", lo=0, lo_open=True, hi=1, advanced=True, cli="--top-p"),
    JobField("attention", "boolean", "Also measure the attention mass on the instruction per layer, unboosted "
             "and boosted (two extra forward passes over each output).", "Attention analysis", default=False,
             advanced=True, cli="--attention"),
    JobField("checks", "checks", "Pass/fail checks scored on every output: a JSON list of {type, value}, e.g. "
             '[{"type": "lowercase"}, {"type": "max_words", "value": 50}] (types: regex, not_contains_regex, '
             "contains, not_contains, json, lowercase, uppercase, max_words).", "Checks", default=(),
             advanced=True),
    JobField("ifeval", "ifeval", "IFEval instructions verified on every output (Google's checkers): a JSON list of "
             'ids or {id, kwargs}, e.g. ["change_case:english_lowercase", {"id": "length_constraints:number_words", '
             '"kwargs": {"num_words": 50, "relation": "less than"}}].', "IFEval checks", default=(),
             advanced=True),
    JobField("score_perplexity", "boolean", "Score each output's perplexity under the same model without the boost "
             "(one extra batched forward pass); it feeds the 0-2 fluency score.", "Score perplexity",
             default=True, advanced=True),
    JobField("judge", "boolean", "Ask the LLM judge (settings judge.url, judge.model) whether each output follows the "
             "instruction and how fluent it is; off by default.", "LLM judge", default=False, advanced=True),
    # Sampling extras (worker.engine.logits), also on /v1/chat/completions; each default changes nothing.
    JobField("top_k", "integer", "Sample only from the k most likely tokens (0 = off; used when temperature > 0).",
             "Top k (0 = off)", default=0, lo=0, hi=MAX_TOP_K, advanced=True, cli="--top-k"),
    JobField("min_p", "number", "Drop tokens less likely than min_p times the most likely one (0 = off; used when "
             "temperature > 0).", "Min p (0 = off)", default=0.0, lo=0, hi=1, advanced=True, cli="--min-p"),
    JobField("repetition_penalty", "number", "CTRL's repetition penalty over the prompt and the output: above 1 "
             "discourages repeating a token, below 1 encourages it (1 = off).", "Repetition penalty (1 = off)",
             default=1.0, lo=0, lo_open=True, hi=10, advanced=True, cli="--repetition-penalty"),
    JobField("presence_penalty", "number", "OpenAI's presence penalty: subtracted from the logit of every token "
             "already generated (0 = off).", "Presence penalty", default=0.0, lo=-2, hi=2, advanced=True,
             cli="--presence-penalty"),
    JobField("frequency_penalty", "number", "OpenAI's frequency penalty: subtracted once per time a token was "
             "already generated (0 = off).", "Frequency penalty", default=0.0, lo=-2, hi=2, advanced=True,
             cli="--frequency-penalty"),
)

BY_NAME: dict[str, JobField] = {f.name: f for f in JOB_FIELDS}

# Fields a chat job (POST /v1/chat/completions, and each line of a batch) stores besides the rows above, which
# it reuses for the model, the boost's numbers and the decoding settings (shared.chat validates with them).
CHAT_FIELDS: tuple[JobField, ...] = (
    JobField("kind", "choice", "What the job runs: instaboost (an instruction and a query, several variants) or "
             "chat (OpenAI chat messages, one generation) or completion (OpenAI completions: one generation or "
             "prompt scoring per prompt).", "Kind", default="instaboost",
             choices=("instaboost", "chat", "completion")),
    JobField("messages", "messages", "OpenAI chat messages; boosted spans are marked <boost>…</boost> in any "
             "message, by a message's own \"boost\": M, or default to the system message(s).", "Messages"),
    JobField("stop", "strings", "Up to 4 stop strings; generation ends at the first, which the text omits.",
             "Stop strings", default=()),
    JobField("stream", "boolean", "Stream the text as server-sent events as it is generated.", "Stream",
             default=False),
    JobField("instaboost", "object", "The boost: {multiplier, layers, start_layer, num_middle_layers, heads, "
             "placement}; without it nothing is boosted unless a message marks spans.", "InstaBoost"),
    JobField("n", "integer", "How many choices to generate (each a row of the job, sampled with seed + i).",
             "Choices", default=1, lo=1, hi_setting="v1.max_n"),
    JobField("logit_bias", "object", "{token id: bias in [-100, 100]} added to those tokens' logits, at most "
             f"{MAX_LOGIT_BIAS} entries (-100 in effect bans a token, 100 forces it).", "Logit bias"),
    JobField("user", "text", "The end user's id, as OpenAI takes it: stored with the job, changes nothing.", "User"),
    JobField("metadata", "object", "Up to 16 string pairs (keys <= 64, values <= 512 characters) stored with the "
             "job and returned.", "Metadata"),
    JobField("priority", "choice", "interactive (chat completions: sent ahead of other work) or batch (lines of "
             "a batch).", "Priority", default="interactive", choices=("interactive", "batch")),
)
CHAT_BY_NAME: dict[str, JobField] = {f.name: f for f in CHAT_FIELDS}
FIELD_NAMES: tuple[str, ...] = tuple(BY_NAME)
