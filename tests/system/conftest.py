"""The whole system from outside: `instaboost serve`, the startup race, a real browser, compose, Docker.

Each module needs something different (test_serve.py and test_compose.py mark per test).
"""

import pytest

from tests.helpers import mark_folder

pytest_collection_modifyitems = mark_folder(__file__, modules={
    "test_startup.py": ["services", "slow"],
    "test_browser.py": ["browser", "services", "slow"],
    # The OpenAI-compatible API through real clients (the openai SDK, lm-evaluation-harness) and a real worker.
    "test_openai_api.py": ["services", "slow"],
    "test_openai_batches.py": ["services", "slow"],
    "test_openai_lm_eval.py": ["services", "slow"],
    "test_openai_completions.py": ["services", "slow"],
    "test_openai_responses.py": ["services", "slow"],
    "test_inspect_ai.py": ["services", "slow"],
    # bench/faults.py's rows against a private PostgreSQL and Redis; the slow rows are also marked faults_slow.
    "test_fault_table.py": ["services", "slow"],
    "test_openai_structured.py": ["services", "slow"],
    # Skipped, saying why, without a Docker engine; `make docker-test` selects it with -m docker.
    "test_docker.py": ["docker", pytest.mark.timeout(3600)],
})
