"""gunicorn's configuration of the web app, read from the project's settings (web.*): the one used everywhere.

docker-compose.yml, the Dockerfile's web image and `instaboost serve` all start
``gunicorn -c gunicorn.conf.py --bind HOST:PORT 'web:create_app()'``; command-line options (serve's --host,
--port and --web-workers) override what is set here.

Threaded workers (gthread): a /v1 chat completion that waits for its job, or streams it, holds one thread, and
the worker process keeps heartbeating meanwhile, so gunicorn's worker timeout never ends a long request and
the other threads keep answering. web/v1.py admits at most web.threads - RESERVED_THREADS such requests per
process (429 beyond), so /healthz and the pages always find a free thread.
"""

import sys

from shared.errors import InstaBoostError
from shared.settings import get_settings
from web.limits import RESERVED_THREADS

try:
    _settings = get_settings()
except InstaBoostError as exc:
    sys.exit(f"instaboost: error: {exc.message}")
if _settings.web.threads <= RESERVED_THREADS:
    sys.exit(f"instaboost: error: web.threads must be at least {RESERVED_THREADS + 1} (got "
             f"{_settings.web.threads}): {RESERVED_THREADS} per process stay free for requests that do not wait")
if _settings.web.workers < 1:
    sys.exit(f"instaboost: error: web.workers must be at least 1 (got {_settings.web.workers})")

wsgi_app = "web:create_app()"
worker_class = "gthread"
workers = _settings.web.workers
threads = _settings.web.threads
timeout = _settings.web.timeout
graceful_timeout = _settings.web.graceful_timeout
keepalive = 5
accesslog = "-"
