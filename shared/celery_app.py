"""The deployment's Celery app as a module attribute, for tools that take ``celery -A`` (Flower).

``celery -A shared.celery_app flower`` sees the same broker, Redis namespace (key prefix) and transport
options as the web app and the workers, from the same settings. Torch-free: no task bodies are imported.
"""

from shared.celery_config import get_celery

app = get_celery()
