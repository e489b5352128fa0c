"""The InstaBoost web app: a JSON API, server-rendered pages and CSV export.

Never imports torch: jobs are validated with shared.job_request and enqueued to workers by task name.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any, Mapping

from flask import Flask

from shared.calibration import dimension_text
from shared.job_request import multiplier_text
from web.charts import attention_chart, sweep_chart
from web.context import csrf

# test_config keys that stand for settings, so tests can point the app at their own services.
CONFIG_SETTINGS = {
    "DATABASE_URL": "database.url",
    "REDIS_URL": "redis.url",
    "REDIS_NAMESPACE": "redis.namespace",
    "API_TOKEN": "web.api_token",
}


def _settings(test_config: Mapping[str, Any] | None):
    from shared.settings import get_settings, load_settings

    if test_config is None:
        return get_settings()
    overrides = dict(test_config.get("SETTINGS") or {})
    for key, name in CONFIG_SETTINGS.items():
        if key in test_config:
            overrides[name] = test_config[key]
    return load_settings(overrides=overrides)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app from shared.settings (test_config overrides settings and Flask config).

    Raises shared.deployment.DeploymentConflict when the Redis prefix belongs to another database's deployment.
    """
    from shared import deployment
    from shared.celery_config import make_celery
    from shared.db import get_sessionmaker
    from shared.worker_registry import redis_client
    from web import (api, auth, context, errors, export, health, monitoring, pages, queue, v1, v1_completions,
                     v1_responses)

    settings = _settings(test_config)
    app = Flask(__name__)
    app.config.update(
        # A random key per process still works for one gunicorn worker; set web.secret_key for more.
        SECRET_KEY=settings.web.secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=settings.limits.max_request_bytes,
        JSON_SORT_KEYS=False,
        WTF_CSRF_TIME_LIMIT=None,
    )
    if test_config:
        app.config.update({k: v for k, v in test_config.items() if k != "SETTINGS"})

    app.extensions["instaboost"] = context.Services(
        settings=settings,
        sessionmaker=get_sessionmaker(settings.database.url),
        celery=make_celery(settings),
        redis=redis_client(settings.redis.url),
    )
    # Refuse to start next to another deployment's workers; with the database or Redis down, submit checks it.
    deployment.claim_if_reachable(app.extensions["instaboost"].redis, settings.redis.namespace,
                                  settings.database.url)
    # Before anything else sees a request: the token on every route, the cross-site rules, CSRF for forms.
    auth.configure(app, settings)
    csrf.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v1_completions.bp)
    app.register_blueprint(v1_responses.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(export.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(monitoring.bp)
    app.register_blueprint(queue.bp)
    errors.register(app)
    app.teardown_appcontext(context.close_session)
    app.jinja_env.filters["age"] = _age
    app.jinja_env.filters["when"] = _when
    app.jinja_env.filters["attention_chart"] = attention_chart
    app.jinja_env.filters["sweep_chart"] = sweep_chart
    app.jinja_env.filters["multiplier"] = multiplier_text
    app.jinja_env.filters["dimension"] = dimension_text

    @app.after_request
    def security_headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                    "form-action 'self'; base-uri 'none'")
        else:  # JSON, problem+json and CSV are data, never documents to render or run
            resp.headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
        return resp

    return app


def _age(value: datetime | None) -> str:
    """Render how long ago value was, e.g. '3 min ago'."""
    if value is None:
        return ""
    seconds = int((datetime.now(timezone.utc) - value).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


def _when(value: datetime | None) -> str:
    """Render a timestamp as UTC, to the second."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"
