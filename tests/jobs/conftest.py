"""Jobs: the task body, real worker processes, faults, end to end, concurrent submissions.

All need Redis and PostgreSQL; the modules that run the real model in a worker are `slow` as a whole,
test_tasks.py names its slow tests itself.
"""

from tests.helpers import mark_folder

pytest_collection_modifyitems = mark_folder(__file__, "services", modules={
    "test_faults.py": ["slow"],
    "test_e2e.py": ["slow"],
    "test_monitoring.py": ["slow"],
    "test_scoring.py": ["slow"],
    "test_sweep_faults.py": ["slow"],
    "test_openai_faults.py": ["slow"],
    "test_continuous_runner.py": ["slow"],
    "test_continuous_faults.py": ["slow"],
})
