"""Code shared by the web app and the workers: settings, errors, specs, the store and Celery's config.

Nothing in this package imports torch, so the web process stays light.
"""
