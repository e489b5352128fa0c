"""The command line: ``instaboost generate | run-tests | serve | settings`` (entry point ``worker.cli:main``)."""

from worker.cli.main import main

__all__ = ["main"]
