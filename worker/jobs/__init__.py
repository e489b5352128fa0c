"""The Celery side of the worker: the app (``celery -A worker.jobs.app worker``), the ``instaboost.run_job``
task, the heartbeat that advertises this process, and the sweeper that recovers lost jobs."""
