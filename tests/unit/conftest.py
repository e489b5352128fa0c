"""Unit tests: pure functions and small tensors. No model, no services: no markers."""

from tests.helpers import mark_folder

pytest_collection_modifyitems = mark_folder(__file__)
