"""Code shared by the web app and the workers: settings, errors, the job fields and their validation, the
boost spec, the job store (``shared.store``), Celery's config, worker heartbeats and the evaluation library.

Nothing in this package imports torch, so the web process stays light.
"""
