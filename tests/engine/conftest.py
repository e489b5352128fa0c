"""The method (worker/engine) on real and tiny models. A module on the real model is `slow` as a whole;
modules that mix name their slow tests themselves (test_model_loading.py).
"""

from tests.helpers import mark_folder

pytest_collection_modifyitems = mark_folder(__file__, modules={
    "test_engine.py": ["slow"],
    "test_grammar.py": ["slow"],
    "test_engine_gemma.py": ["slow"],
    "test_logprobs.py": ["slow"],
    "test_cli_generate.py": ["slow"],
    "test_run_cases.py": ["slow"],
    "test_calibrate.py": ["slow"],
    "test_run_tests_inputs.py": ["slow"],
})
