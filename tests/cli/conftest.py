"""The `instaboost` command in a subprocess, refusing bad input. No services; no model, but for the two cases
marked slow that need its shape. No folder markers.
"""

from tests.helpers import mark_folder

pytest_collection_modifyitems = mark_folder(__file__)
