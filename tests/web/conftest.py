"""The Flask app through its test client on real PostgreSQL and Redis: API, pages, security, bad input, fuzz."""

from tests.helpers import mark_folder

pytest_collection_modifyitems = mark_folder(__file__, "services")
