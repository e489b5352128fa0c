"""The engine (boost math, model loading, generation), the CLI and the Celery tasks.

Importing this package is cheap: torch loads only when an engine is used.
"""

__all__ = ["InstaBoostTransformerLens"]


def __getattr__(name):
    # Lazy so `import worker.jobs.tasks` or the CLI's `serve` don't pay for torch until needed.
    if name == "InstaBoostTransformerLens":
        from worker.seed_api import InstaBoostTransformerLens

        return InstaBoostTransformerLens
    raise AttributeError(name)
