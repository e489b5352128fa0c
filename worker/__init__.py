"""Everything that runs a model, in three parts:

- ``worker.engine``: the InstaBoost method (boost math, prompt span, model loading, the two engines);
- ``worker.jobs``: the Celery side (the app, the ``instaboost.run_job`` task, heartbeat, recovery loop);
- ``worker.cli``: the ``instaboost`` command (generate, run-tests, serve, settings).

``from worker import InstaBoostTransformerLens`` is the prototype's library API (``worker.prototype_api``).
Importing this package is cheap: torch loads only when an engine is used.
"""

__all__ = ["InstaBoostTransformerLens"]


def __getattr__(name):
    # Lazy so `import worker.jobs.tasks` or the CLI's `serve` don't pay for torch until needed.
    if name == "InstaBoostTransformerLens":
        from worker.prototype_api import InstaBoostTransformerLens

        return InstaBoostTransformerLens
    raise AttributeError(name)
