"""Who may call what: the API token on every route, the login form, and the cross-site request guard.

With web.api_token set, every route that reads or changes jobs needs it, pages included: scripts send
'Authorization: Bearer <token>' (any route), browsers log in once at /login and then carry Flask's signed,
HttpOnly, SameSite=Lax session cookie. Open without a token: OPEN_ENDPOINTS (liveness, readiness, the
login form, logout, static files and the API's description). Without a token the service is open to
anyone who can reach it (local mode), and says so at startup.

Every request must name an allowed host (web.allowed_hosts; by default the loopback names without a token,
any host with one): a page on another site that rebinds its DNS name to this service's address reaches it
with its own name in the Host header, and gets 400. The health probes answer whatever the Host.

With or without a token, state-changing requests (POST/PUT/PATCH/DELETE) must not come from another
site's page: a browser's Sec-Fetch-Site (or, from older browsers, its Origin) must name this service, and
under /api (and a future /v1) the request must carry 'Content-Type: application/json' or an
'Authorization' header, which a page on another site cannot send without a CORS preflight that this
service never grants. Pages' forms also carry a CSRF token (Flask-WTF).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from shared.errors import BadRequest, Forbidden, Unauthorized, UnsupportedMediaType, ValidationError
from shared.settings import OPEN_MODE_MESSAGE
from shared.validation import brief
from web.context import csrf, services
from web.problems import wants_problem

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

OPEN_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "auth.login", "auth.logout", "static", "api.openapi"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIXES = ("/api/", "/v1/")  # JSON APIs: the content-type rule applies
SESSION_KEY = "auth"
SINCE_KEY = "auth_at"
COOKIE_SECURE_MODES = ("auto", "true", "false")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_HOST_ENDPOINTS = frozenset({"health.healthz", "health.readyz"})  # probes name the host by address


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def token_matches(given: str, token: str) -> bool:
    """Return True when given is the token, in constant time (digests first, so not even the length leaks)."""
    return hmac.compare_digest(_digest(given), _digest(token))


def _fingerprint(token: str) -> str:
    # A session holds a keyed hash of the token, never the token: a new token (or key) ends every session.
    key = str(current_app.secret_key).encode()
    return hmac.new(key, b"instaboost-login\0" + token.encode(), hashlib.sha256).hexdigest()


def _bearer(token: str) -> bool | None:
    """Return None without an Authorization header, else whether it is 'Bearer <the token>'."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and token_matches(given.strip(), token)


def _logged_in(token: str) -> bool:
    value, since = session.get(SESSION_KEY), session.get(SINCE_KEY)
    if not isinstance(value, str) or not isinstance(since, (int, float)):
        return False
    # Absolute lifetime from the login (the cookie's own expiry slides with each response that re-signs it).
    fresh = 0 <= time.time() - since < current_app.permanent_session_lifetime.total_seconds()
    return fresh and hmac.compare_digest(value, _fingerprint(token))


def _settings():
    return services().settings


def _refuse_anonymous():
    if wants_problem():
        raise Unauthorized("send 'Authorization: Bearer <token>' with the API token (web.api_token)",
                           field="Authorization")
    if request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", ""):
        # A browser: to the login form, and back here afterwards.
        target = request.full_path.rstrip("?") if request.query_string else request.path
        return redirect(url_for("auth.login", next=target))
    raise Unauthorized("log in at /login with the API token (web.api_token), or send "
                       "'Authorization: Bearer <token>'", field="Authorization")


def _strip_default_port(netloc: str, scheme: str) -> str:
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    netloc = netloc.lower()
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


def _normal_origin(origin: str) -> str:
    parts = urlsplit(origin.strip())
    return f"{parts.scheme.lower()}://{_strip_default_port(parts.netloc, parts.scheme.lower())}"


def _refuse_cross_site(trusted: list[str]) -> None:
    """Raise Forbidden when a browser says another site's page sent this request."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null" and _normal_origin(origin) in {_normal_origin(t) for t in trusted}:
        return
    fix = ("send it from this service's own pages or from a non-browser client, or list the origin in "
           "web.trusted_origins")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:  # set by the browser itself: pages cannot forge it
        if site not in ("same-origin", "none"):
            raise Forbidden(f"cross-site request refused: the browser says it came from a {brief(site)} page; {fix}",
                            field="Sec-Fetch-Site")
        return
    if origin is None:  # not a browser, or one too old to say: the content-type rule and CSRF still hold
        return
    scheme = urlsplit(origin).scheme.lower()
    if origin == "null" or urlsplit(origin).netloc.lower() == "" or \
            _strip_default_port(urlsplit(origin).netloc, scheme) != _strip_default_port(request.host, scheme):
        raise Forbidden(f"cross-site request refused: Origin {brief(origin)} is not this service's origin "
                        f"(host {brief(request.host)}); {fix}", field="Origin")


def _require_preflighted() -> None:
    """Raise 415 unless the request carries what another site's page cannot send without a CORS preflight."""
    if request.is_json or "Authorization" in request.headers:
        return
    raise UnsupportedMediaType(
        "send 'Content-Type: application/json' (with a JSON body where the operation takes one; cancel needs "
        "none) or an 'Authorization' header: requests without either could come from another site's page, "
        f"so they are refused (got {brief(request.mimetype) if request.mimetype else 'no content type'})",
        field="Content-Type")


def host_name(host: str) -> str:
    """Return the lower-cased name part of a Host value: "[::1]:8000" -> "[::1]", "Example.com.:80" -> "example.com"."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal holds colons
        return host[: host.find("]") + 1] if "]" in host else host
    return host.partition(":")[0].rstrip(".")


def allowed_hosts(settings) -> list[str] | None:
    """Return the host names this service answers (web.allowed_hosts, or its default), None for any."""
    configured = [h.strip() for h in settings.web.allowed_hosts if h.strip()]
    if not configured:
        return None if settings.web.api_token else list(LOOPBACK_HOSTS)
    return None if "*" in configured else [("." + host_name(h[1:])) if h.startswith(".") else host_name(h)
                                           for h in configured]


def host_allowed(host: str, allowed: list[str] | None) -> bool:
    """Return True when the Host value names an allowed host (an entry ".example.com" also allows its subdomains)."""
    if allowed is None:
        return True
    name = host_name(host)
    return bool(name) and any(name == a or (a.startswith(".") and (name == a[1:] or name.endswith(a)))
                              for a in allowed)


def _refuse_foreign_host(settings) -> None:
    """Raise BadRequest when the Host header names no allowed host (DNS rebinding)."""
    allowed = allowed_hosts(settings)
    host = request.headers.get("Host") or request.environ.get("SERVER_NAME", "")
    if request.endpoint in ANY_HOST_ENDPOINTS or host_allowed(host, allowed):
        return
    why = ("without web.api_token only the loopback names are answered" if not settings.web.allowed_hosts
           else "it is not in web.allowed_hosts")
    raise BadRequest(f"host {brief(host)} is not served here ({why}: {', '.join(allowed)}); reach the service "
                     "by an allowed name, or add this one to web.allowed_hosts (INSTABOOST_WEB_ALLOWED_HOSTS)",
                     field="Host")


def guard():
    """Check every request: the Host, the token (when set), then the cross-site rules for state-changing ones."""
    settings = _settings()
    _refuse_foreign_host(settings)
    token = settings.web.api_token
    bearer = _bearer(token) if token else None
    # endpoint None: no route matched; its 404/405 says nothing about jobs.
    if token and request.endpoint is not None and request.endpoint not in OPEN_ENDPOINTS:
        if not (bearer or (bearer is None and _logged_in(token))):
            return _refuse_anonymous()
    if request.method in STATE_CHANGING and request.endpoint is not None:
        _refuse_cross_site(settings.web.trusted_origins)
        if request.path.startswith(API_PREFIXES):
            _require_preflighted()
        elif not bearer and current_app.config.get("WTF_CSRF_ENABLED", True):
            # A browser's form carries Flask-WTF's token; a bearer header is no browser's ambient credential.
            csrf.protect()
    return None


def _safe_next(value: str | None) -> str:
    """Return value when it is a path on this service, else "/" (no open redirect through ?next=)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(c.isspace() or ord(c) < 0x20 for c in value):  # browsers drop tabs and newlines: "/\t/evil" -> "//evil"
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form; check the token (constant time) and start a signed session."""
    token = _settings().web.api_token
    target = _safe_next(request.values.get("next"))
    if not token:
        return redirect(target)  # open mode: nothing to log in to
    if request.method == "GET":
        if _logged_in(token):
            return redirect(target)
        return render_template("login.html", next=target, error=None)
    if not token_matches(request.form.get("token", ""), token):
        log.warning("failed login from %s", request.remote_addr)  # never the value typed
        return render_template("login.html", next=target,
                               error="That is not the API token (web.api_token). Try again."), 401
    session.clear()  # a fresh session (and CSRF token) at each login
    session.permanent = True  # the cookie outlives the browser, for web.session_hours from this login
    session[SESSION_KEY] = _fingerprint(token)
    session[SINCE_KEY] = int(time.time())
    log.info("login from %s", request.remote_addr)
    return redirect(target, code=303)


@bp.post("/logout")
def logout():
    """End the browser's session."""
    session.clear()
    return redirect(url_for("auth.login") if _settings().web.api_token else "/", code=303)


def template_context() -> dict:
    """Tell templates whether a login is in force (to show the logout button)."""
    token = _settings().web.api_token
    return {"login_required": bool(token), "logged_in": bool(token) and _logged_in(token)}


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, with Secure decided per request when web.session_cookie_secure is auto."""

    def get_cookie_secure(self, app) -> bool:
        mode = app.config["INSTABOOST_SESSION_COOKIE_SECURE"]
        return request.is_secure if mode == "auto" else mode == "true"


def configure(app, settings) -> None:
    """Install the session cookie settings, the guard, the login routes and the open-mode warning."""
    from datetime import timedelta

    mode = settings.web.session_cookie_secure.strip().lower()
    if mode not in COOKIE_SECURE_MODES:
        raise ValidationError(f"web.session_cookie_secure must be one of {', '.join(COOKIE_SECURE_MODES)}, "
                              f"got {brief(settings.web.session_cookie_secure)}", field="web.session_cookie_secure")
    if settings.web.session_hours <= 0:
        raise ValidationError("web.session_hours must be > 0", field="web.session_hours")
    for origin in settings.web.trusted_origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValidationError(f"web.trusted_origins: {brief(origin)} is not an origin like "
                                  "https://host[:port]", field="web.trusted_origins")
    for host in settings.web.allowed_hosts:
        if "/" in host or not host.strip() or any(c.isspace() for c in host.strip()):
            raise ValidationError(f"web.allowed_hosts: {brief(host)} is not a host name like boost.example.com, "
                                  ".example.com (with subdomains), 10.0.0.7 or *", field="web.allowed_hosts")
    app.config.update(
        INSTABOOST_SESSION_COOKIE_SECURE=mode,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.web.session_hours),
        WTF_CSRF_CHECK_DEFAULT=False,  # guard() calls csrf.protect() itself, after the token check
    )
    app.session_interface = SessionInterface()
    app.before_request(guard)
    app.context_processor(template_context)
    app.register_blueprint(bp)
    if not settings.web.api_token:
        log.warning("%s (set it to require a login or 'Authorization: Bearer')", OPEN_MODE_MESSAGE)
    elif not settings.web.secret_key:
        log.warning("web.api_token is set but web.secret_key is empty: logins hold only in this process and only "
                    "until it restarts; set web.secret_key when running several web processes")
