"""The job store on real PostgreSQL (and SQLite): lifecycle, races, paging, migrations."""

from tests.helpers import mark_folder

pytest_collection_modifyitems = mark_folder(__file__, "services")
