"""Bad input, table-driven: every malformed request gets a 4xx problem naming the field, and writes nothing.

Each API case runs against the real app on PostgreSQL and Redis with a live heartbeat for the default
model (carrying its real facts: 30 layers, an 8192-token context), so the same body with the bad field
fixed would be accepted. Row counts and queue lengths are compared before and after each case. A few
cases go through the HTML form. Bad command-line input: tests/cli/test_cli.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import text

from tests.fixtures.store import DEFAULT_MODEL, live_heartbeat, make_test_app
from tests.helpers import alias_bomb, assert_problem

BODY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 8}
# Limits raised so the model's own context (8192 tokens) is what refuses long prompts and big max_new_tokens.
MAX_TEXT = 1_200_000
MAX_BYTES = 4_000_000
MAX_NEW = 10_000
SETTINGS = {"limits.max_text_chars": MAX_TEXT, "limits.max_request_bytes": MAX_BYTES,
            "limits.max_new_tokens": MAX_NEW, "limits.max_variants": 12}
MODEL_INFO = {"n_layers": 30, "n_heads": 9, "max_context": 8192}  # SmolLM2-135M-Instruct


@dataclass
class Case:
    """One bad request and the problem it must get."""

    name: str
    status: int
    field: str | None
    json: Any = None  # merged into BODY when a dict with merge=True
    merge: bool = True
    drop: tuple[str, ...] = ()
    raw: bytes | None = None
    content_type: str | None = "application/json"
    method: str = "POST"
    path: str = "/api/jobs"
    headers: dict = field(default_factory=dict)

    def send(self, client):
        if self.method == "GET":
            return client.get(self.path)
        if self.raw is not None:
            return client.open(self.path, method=self.method, data=self.raw, content_type=self.content_type,
                               headers=self.headers)
        body = self.json
        if self.merge:
            body = {k: v for k, v in {**BODY, **(self.json or {})}.items() if k not in self.drop}
        return client.open(self.path, method=self.method, data=json.dumps(body), content_type=self.content_type,
                           headers=self.headers)


def raw_body(text_: str) -> bytes:
    return text_.encode()


def C(name, status, field_, **kw) -> Case:
    """Shorthand for a Case; JSON fields are merged into the valid BODY unless merge=False."""
    return Case(name, status, field_, **kw)


CASES = [
    # -- missing, empty, wrong types --------------------------------------------------------------
    C("missing instruction", 422, "instruction", drop=("instruction",)),
    C("missing query", 422, "query", drop=("query",)),
    C("empty instruction", 422, "instruction", json={"instruction": ""}),
    C("blank query", 422, "query", json={"query": "  \n\t "}),
    C("null instruction", 422, "instruction", json={"instruction": None}),
    C("numeric instruction", 422, "instruction", json={"instruction": 5}),
    C("list query", 422, "query", json={"query": ["What", "is"]}),
    C("object instruction", 422, "instruction", json={"instruction": {"text": "hi"}}),
    C("NUL in instruction", 422, "instruction", json={"instruction": "a\x00b"}),
    C("lone surrogate in query", 422, "query",
      raw=raw_body('{"instruction": "a", "query": "\\ud800 b", "max_new_tokens": 8}')),
    C("huge instruction", 422, "instruction", json={"instruction": "x" * (MAX_TEXT + 1)}),
    # -- multipliers --------------------------------------------------------------------------------
    C("multiplier zero", 422, "multipliers[0]", json={"multipliers": [0]}),
    C("multiplier negative", 422, "multipliers[1]", json={"multipliers": [2, -1]}),
    C("multiplier NaN string", 422, "multipliers[0]", json={"multipliers": ["NaN"]}),
    C("multiplier NaN literal", 422, "multipliers[0]",
      raw=raw_body('{"instruction": "a", "query": "b", "multipliers": [NaN]}')),
    C("multiplier Infinity literal", 422, "multipliers[0]",
      raw=raw_body('{"instruction": "a", "query": "b", "multipliers": [Infinity]}')),
    C("multiplier -Infinity literal", 422, "multipliers[1]",
      raw=raw_body('{"instruction": "a", "query": "b", "multipliers": [2, -Infinity]}')),
    C("multiplier as a JSON string", 422, "multipliers[0]", json={"multipliers": ["2"]}),
    C("multipliers as a comma string", 422, "multipliers", json={"multipliers": "2, 10"}),
    C("repeated multiplier", 422, "multipliers[1]", json={"multipliers": [2, 2.0]}),
    C("repeated layer mode", 422, "layer_modes[1]", json={"layer_modes": ["all", "all"]}),
    C("number as a JSON string", 422, "seed", json={"seed": "42"}),
    C("empty string for an optional field", 422, "placement", json={"placement": ""}),
    C("multiplier non-numeric", 422, "multipliers[0]", json={"multipliers": ["ten"]}),
    C("multiplier boolean", 422, "multipliers[0]", json={"multipliers": [True]}),
    C("multiplier too big", 422, "multipliers[0]", json={"multipliers": [1e7]}),
    C("multiplier 400-digit integer", 422, "multipliers[0]",
      raw=raw_body('{"instruction": "a", "query": "b", "multipliers": [1' + "0" * 400 + "]}")),
    C("multipliers empty", 422, "multipliers", json={"multipliers": []}),
    C("multipliers object", 422, "multipliers", json={"multipliers": {"m": 2}}),
    C("too many variants", 422, "multipliers", json={"multipliers": [1.5, 2, 3, 4, 5, 6]}),
    C("thousands of multipliers", 422, "multipliers", json={"multipliers": [2] * 5000}),
    # -- layers ---------------------------------------------------------------------------------------
    C("unknown layer mode", 422, "layer_modes[0]", json={"layer_modes": ["diagonal"]}),
    C("layer modes empty", 422, "layer_modes", json={"layer_modes": []}),
    C("layer modes number", 422, "layer_modes", json={"layer_modes": 5}),
    C("start_layer negative", 422, "start_layer", json={"start_layer": -1}),
    C("start_layer beyond the model", 422, "start_layer", json={"start_layer": 30, "layer_modes": ["middle"]}),
    C("start_layer text", 422, "start_layer", json={"start_layer": "eight"}),
    C("start_layer fraction", 422, "start_layer", json={"start_layer": 1.5}),
    C("start_layer boolean", 422, "start_layer", json={"start_layer": True}),
    C("num_middle_layers zero", 422, "num_middle_layers", json={"num_middle_layers": 0}),
    C("head percentage zero", 422, "head_boost_percentage", json={"head_boost_percentage": 0}),
    C("head percentage over 100", 422, "head_boost_percentage", json={"head_boost_percentage": 150}),
    C("seed negative", 422, "seed", json={"seed": -1}),
    C("seed over 32 bits", 422, "seed", json={"seed": 2**32}),
    # -- model, engine, placement ---------------------------------------------------------------------
    C("unknown model", 422, "model", json={"model": "no-such-model"}),
    C("model with spaces", 422, "model", json={"model": "my model"}),
    C("model number", 422, "model", json={"model": 123}),
    C("unknown engine", 422, "engine", json={"engine": "turbo"}),
    C("unknown placement", 422, "placement", json={"placement": "footer"}),
    C("placement huge string", 422, "placement", json={"placement": "p" * 100_000}),
    # -- decoding ---------------------------------------------------------------------------------
    C("max tokens over the cap", 422, "max_new_tokens", json={"max_new_tokens": MAX_NEW + 1}),
    C("max tokens zero", 422, "max_new_tokens", json={"max_new_tokens": 0}),
    C("max tokens beyond the context", 422, "max_new_tokens", json={"max_new_tokens": 9000}),
    C("temperature negative", 422, "temperature", json={"temperature": -0.1}),
    C("temperature text", 422, "temperature", json={"temperature": "hot"}),
    C("temperature 400-digit integer", 422, "temperature",
      raw=raw_body('{"instruction": "a", "query": "b", "temperature": 1' + "0" * 400 + "}")),
    C("top_p zero", 422, "top_p", json={"top_p": 0}),
    C("top_p over one", 422, "top_p", json={"top_p": 1.5}),
    # -- context ------------------------------------------------------------------------------------
    # 1.1 M ASCII bytes are at least 8594 tokens (no token is longer than 128 bytes): over 8192.
    C("prompt longer than the context", 422, "query", json={"query": "word " * 220_000}),
    # -- shape of the body ---------------------------------------------------------------------------
    C("unknown field", 422, "hf_token", json={"hf_token": "abc"}),
    C("many unknown fields", 422, "body", json={f"x{i}": i for i in range(50)}),
    C("JSON array", 422, "body", json=[BODY], merge=False),
    C("JSON string", 422, "body", json="instruction", merge=False),
    C("JSON null", 422, "body", json=None, merge=False),
    C("malformed JSON", 400, "body", raw=b'{"instruction": "a", "query": '),
    C("empty body", 400, "body", raw=b""),
    C("nested too deep", 400, "body", raw=b"[" * 100_000 + b"]" * 100_000),
    C("not UTF-8", 400, "body", raw=b'{"instruction": "\xff\xfe", "query": "b"}'),
    C("text/plain", 415, "Content-Type", content_type="text/plain"),
    C("form-encoded", 415, "Content-Type", raw=b"instruction=a&query=b",
      content_type="application/x-www-form-urlencoded"),
    C("no content type", 415, "Content-Type", raw=json.dumps(BODY).encode(), content_type=None),
    C("body over the size limit", 413, "body", json={"query": "y" * (MAX_BYTES + 10)}),
    # -- reading: unknown ids, bad cursors, bad filters -----------------------------------------------
    C("unknown job id", 404, "id", method="GET", path="/api/jobs/999999"),
    C("non-numeric job id", 404, "id", method="GET", path="/api/jobs/abc"),
    C("job id past 32 bits", 404, "id", method="GET", path="/api/jobs/99999999999999"),
    C("cancel unknown job", 404, "id", path="/api/jobs/999999/cancel", raw=b"", content_type="application/json"),
    C("cancel form-encoded", 415, "Content-Type", path="/api/jobs/999999/cancel", raw=b"x=1",
      content_type="application/x-www-form-urlencoded"),
    C("cancel without content type", 415, "Content-Type", path="/api/jobs/999999/cancel", raw=b"", content_type=None),
    C("garbage cursor", 400, "cursor", method="GET", path="/api/jobs?cursor=zz!"),
    C("runs cursor on jobs", 400, "cursor", method="GET", path="/api/jobs?cursor=r1a"),
    C("jobs cursor on runs", 400, "cursor", method="GET", path="/api/runs?cursor=j1a"),
    C("unknown status filter", 422, "status", method="GET", path="/api/jobs?status=done"),
    C("non-numeric job_id filter", 422, "job_id", method="GET", path="/api/runs?job_id=x"),
    C("limit zero", 422, "limit", method="GET", path="/api/jobs?limit=0"),
    C("limit too large", 422, "limit", method="GET", path="/api/runs?limit=100000"),
    C("NUL in model filter", 422, "model", method="GET", path="/api/runs?model=a%00b"),
    C("bad export filter", 422, "status", method="GET", path="/api/runs.csv?status=bogus"),
]


# -- services --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_app(pg_url, redis_namespace):
    """The app with raised text/size limits and a live heartbeat advertising the model's real facts."""
    with live_heartbeat(redis_namespace, "bad-input-worker", [DEFAULT_MODEL],
                        model_info={DEFAULT_MODEL: MODEL_INFO}):
        yield make_test_app(pg_url, redis_namespace, SETTINGS=SETTINGS)


@pytest.fixture(scope="module")
def counts(pg_url, redis_namespace):
    """Return a function giving (jobs rows, runs rows, messages in this session's queues)."""
    from shared.db import get_db_engine
    from shared.worker_registry import redis_client

    engine = get_db_engine(pg_url)
    client = redis_client()

    def snapshot() -> tuple[int, int, int]:
        with engine.connect() as conn:
            jobs_ = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
            runs_ = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
        messages = sum(client.llen(k) for k in client.scan_iter(match=f"{redis_namespace}:*")
                       if client.type(k) == "list")
        return jobs_, runs_, messages

    yield snapshot
    client.close()


# -- tests -----------------------------------------------------------------------------------------

def test_table_is_big_enough():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


def test_a_valid_submission_is_counted(bad_app, counts):
    """The counters see a write: without this, 'nothing written' below would prove nothing."""
    before = counts()
    resp = bad_app.test_client().post("/api/jobs", json={**BODY, "start_layer": 29, "layer_modes": ["middle"]})
    assert resp.status_code == 202, resp.get_json()
    after = counts()
    assert (after[0] - before[0], after[2] - before[2]) == (1, 1)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_api_input_is_refused_and_writes_nothing(bad_app, counts, case):
    before = counts()
    assert_problem(case.send(bad_app.test_client()), case.status, case.field)
    assert counts() == before


FORM_CASES = [
    ({"multipliers": "0"}, "multipliers"),
    ({"multipliers": "2, 3, 4, 5, 6, 7"}, "multipliers"),
    ({"start_layer": "30"}, "start_layer"),
    ({"engine": "turbo"}, "engine"),
    ({"query": "   "}, "query"),
    ({"model": "no-such-model"}, "model"),
    ({"max_new_tokens": str(MAX_NEW + 1)}, "max_new_tokens"),
]


@pytest.mark.parametrize("fields, name", FORM_CASES, ids=[n + "-" + str(i) for i, (_, n) in enumerate(FORM_CASES)])
def test_bad_form_input_is_shown_next_to_the_field_and_writes_nothing(bad_app, counts, fields, name):
    import re

    client = bad_app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    data = {"csrf_token": token, "instruction": "Answer in French.", "query": "Hello?", "multipliers": "10",
            "layer_modes": ["all", "middle"], "max_new_tokens": "8", **fields}
    before = counts()
    resp = client.post("/", data=data)
    assert resp.status_code == 422
    page = resp.get_data(as_text=True)
    assert f'id="{name}-error"' in page and "Traceback" not in page
    assert counts() == before


def test_a_case_file_of_nested_yaml_aliases_gets_a_short_error_page(bad_app, counts):
    """A few hundred bytes of nested aliases once gave a 1.7 MB page (each level 10x); aliases are refused."""
    import io
    import re

    client = bad_app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/sweeps").get_data(as_text=True)).group(1)
    before = counts()
    bomb = alias_bomb(4).encode()
    resp = client.post("/sweeps", data={"csrf_token": token, "source": "upload", "grid": "1, 3", "layer_modes": "all",
                                        "head_fractions": "1", "fluency_floor": "1",
                                        "cases_file": (io.BytesIO(bomb), "cases.yaml")},
                       content_type="multipart/form-data")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "YAML aliases (*a, line 2) are not allowed in cases files" in page
    assert len(page) < 50_000, len(page)
    assert counts() == before
