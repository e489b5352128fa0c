"""The Celery side of the worker: the app (``celery -A worker.jobs.app worker``), the ``instaboost.run_job``
task and the job runner under it, the heartbeat that advertises this process, and the recovery loop that recovers lost
jobs.

Dependencies run one way: ``tasks`` (the Celery shim) -> ``delivery`` (claim, run, settle) -> ``followups``
and ``scheduler`` (the continuous loop, ``worker.continuous``) -> ``storer`` (its scoring and storing thread) -> ``runner`` (the batch loop) -> ``intake``, ``decode``, ``kinds``, ``watch``, ``watchdog`` -> ``endings``
(exceptions, retries, the writes that end a job) -> ``faults`` (the test seam).
"""
