"""The `instaboost` command in a subprocess, failing before any model loads. No model, no services: no markers."""

from tests.helpers import mark_folder

pytest_collection_modifyitems = mark_folder(__file__)
