"""The FastAPI application behind `profileguard serve`: read-only, localhost by default.

Routes: `/` (the dashboard: one static page, inline JS/SVG, no CDN), `/healthz` (the process is
alive), `/readyz` (database reachable, schema installed with monitoring, trigger enabled),
`/metrics` (Prometheus text format), `/api/status`, `/api/events` (paginated audit trail),
`/api/history`, `/api/quarantine`, `/openapi.json` and `/docs` (rendered offline). With a token,
`/metrics` and `/api/*` need `Authorization: Bearer TOKEN`; the probes and the static pages don't.
Every request passes middleware.py first: a Host the server does not serve is refused, and every
response carries the security headers.
"""

from __future__ import annotations

import errno
import hmac
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from importlib import resources
from typing import Annotated, Any

import psycopg
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg import Connection
from psycopg_pool import ConnectionPool, PoolTimeout

from profileguard import __version__, observe
from profileguard import sql as sqlfiles
from profileguard.config import Settings
from profileguard.db import translate
from profileguard.errors import (
    ConfigError,
    ConnectionFailedError,
    ProfileGuardError,
    ServeFailedError,
)
from profileguard.installation import TRIGGER_NAME
from profileguard.redaction import redact_row
from profileguard.web import metrics
from profileguard.web.middleware import HostRule, SecurityMiddleware, is_loopback, page_policy

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger(__name__)

EVENT_KINDS = ("failure", "repair", "backfill", "config", "quarantine")
# Seconds a request waits for a pooled connection before answering 503.
POOL_TIMEOUT = 3.0
POOL_SIZE = 4
# The shortest token accepted off loopback: 32 characters of secrets.token_urlsafe carry 192 bits.
MIN_TOKEN_LENGTH = 32
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _static(name: str) -> str:
    return resources.files("profileguard.web").joinpath("static", name).read_text("utf-8")


def _bearer(token: str | None) -> Callable[..., None]:
    def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def _unavailable(exc: ProfileGuardError) -> HTTPException:
    return HTTPException(
        status_code=503,
        detail={"error": exc.message, "hint": exc.hint, "sqlstate": exc.sqlstate},
    )


Connect = Callable[[], AbstractContextManager[Connection[Any]]]
Shown = Callable[[dict[str, Any]], dict[str, Any]]


def create_app(
    settings: Settings,
    *,
    token: str | None = None,
    alerts: bool = True,
    loop: observe.MonitorLoop | None = None,
    show_details: bool = False,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
) -> FastAPI:
    """The application; with `alerts`, a background loop refreshes the counts and evaluates
    the alert rules while it runs. Failure messages are reduced to SQLSTATE, constraint and
    column names unless `show_details`. Requests are served for the names of `host` (the
    address it is bound to) and `allowed_hosts` only (middleware.HostRule)."""
    if token is not None and not token.strip():
        raise ConfigError("the API token is empty", hint="pass a non-empty token or None")

    def shown(row: dict[str, Any]) -> dict[str, Any]:
        return row if show_details else redact_row(row)

    pool = _pool(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        background = loop or (observe.MonitorLoop(settings) if alerts else None)
        if background is not None:
            background.start()
        try:
            yield
        finally:
            if background is not None:
                background.stop()
            pool.close()

    app = FastAPI(
        title="profileguard",
        version=__version__,
        description="Every user has a profile: status, metrics and the audit trail (read-only).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(SecurityMiddleware, rule=HostRule.of(host, allowed_hosts))
    connection = _connector(pool)
    auth = [Depends(_bearer(token))]
    _pages(app)
    _probes(app, connection)
    _status_routes(app, settings, connection, auth, shown)
    _list_routes(app, connection, auth, shown)
    return app


def _pool(settings: Settings) -> ConnectionPool[Connection[Any]]:
    """Kept sessions: stats() and its plans are compiled once per connection, not per request."""
    return ConnectionPool(
        settings.conninfo(),
        min_size=1,
        max_size=POOL_SIZE,
        open=False,
        check=ConnectionPool.check_connection,
        kwargs={
            "autocommit": True,
            "application_name": "profileguard-serve",
            "connect_timeout": settings.connect_timeout,
        },
    )


def _connector(pool: ConnectionPool[Connection[Any]]) -> Connect:
    """A pooled connection, or ConnectionFailedError after POOL_TIMEOUT seconds."""

    @contextmanager
    def connection() -> Iterator[Connection[Any]]:
        try:
            with pool.connection(timeout=POOL_TIMEOUT) as conn:
                yield conn
        except PoolTimeout as exc:
            raise ConnectionFailedError(
                f"cannot reach the database: no connection within {POOL_TIMEOUT:.0f} s",
                hint="check DATABASE_URL and that the server is running",
            ) from exc
        except psycopg.Error as exc:
            raise translate(exc) from exc

    return connection


def _page(name: str) -> Callable[[], HTMLResponse]:
    """A static page served with a Content-Security-Policy that allows its own inline code."""
    html = _static(name)
    headers = {"Content-Security-Policy": page_policy(html)}
    return lambda: HTMLResponse(html, headers=headers)


def _pages(app: FastAPI) -> None:
    """The dashboard, the API docs and the liveness probe: no database, no token."""
    dashboard_page, docs_page = _page("dashboard.html"), _page("docs.html")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return dashboard_page()

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return docs_page()

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}


def _probes(app: FastAPI, connection: Connect) -> None:
    """/readyz: database reachable, schema installed with monitoring, trigger enabled."""

    @app.get("/readyz", summary="Database reachable, schema installed and enabled")
    def readyz() -> JSONResponse:
        try:
            with connection() as conn:
                version = observe.require_monitoring(conn)
                row = conn.execute(
                    "select s.enabled, exists (select from pg_catalog.pg_trigger g"
                    " where g.tgrelid = (select t.identity from profileguard._monitored_tables() t)"
                    " and g.tgname = %(trigger)s and g.tgenabled <> 'D')"
                    " from profileguard.settings s",
                    {"trigger": TRIGGER_NAME},
                ).fetchone()
        except ProfileGuardError as exc:
            return JSONResponse(
                {"ready": False, "reason": exc.message, "hint": exc.hint}, status_code=503
            )
        enabled, trigger = (bool(row[0]), bool(row[1])) if row else (False, False)
        ready = enabled and trigger
        body: dict[str, Any] = {
            "ready": ready,
            "schema_version": version,
            "latest_schema_version": sqlfiles.latest_version(),
            "enabled": enabled,
            "trigger_installed": trigger,
        }
        if not ready:
            body["reason"] = (
                "profileguard is disabled (run: profileguard enable)"
                if not enabled
                else "the signup trigger is missing or disabled (run: profileguard install)"
            )
        return JSONResponse(body, status_code=200 if ready else 503)


def _status_routes(
    app: FastAPI, settings: Settings, connection: Connect, auth: list[Any], shown: Shown
) -> None:
    """/metrics and /api/status: one evaluation of the same figures as `profileguard status`."""

    @app.get(
        "/metrics", dependencies=auth, summary="Prometheus text format", response_class=Response
    )
    def prometheus() -> Response:
        return Response(metrics.render(settings, connection), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/status", dependencies=auth, summary="Figures, verdict, alerts, quarantine")
    def api_status() -> dict[str, Any]:
        try:
            with connection() as conn:
                result = observe.status(settings, refresh_if_older_than=float("inf"), conn=conn)
                result["quarantine"] = [shown(q) for q in result.get("quarantine", [])]
                return result
        except ProfileGuardError as exc:
            raise _unavailable(exc) from exc


def _list_routes(app: FastAPI, connection: Connect, auth: list[Any], shown: Shown) -> None:
    """/api/events, /api/history and /api/quarantine."""

    @app.get("/api/events", dependencies=auth, summary="The audit trail, newest first")
    def api_events(
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[int | None, Query(description="Events with a smaller id")] = None,
        kind: Annotated[str | None, Query(description=", ".join(EVENT_KINDS))] = None,
    ) -> dict[str, Any]:
        if kind is not None and kind not in EVENT_KINDS:
            raise HTTPException(status_code=422, detail=f"kind must be one of {EVENT_KINDS}")
        try:
            with connection() as conn:
                page = observe.events(conn, limit=limit, before=before, kind=kind)
                page["items"] = [shown(e) for e in page["items"]]
                return page
        except ProfileGuardError as exc:
            raise _unavailable(exc) from exc

    @app.get("/api/history", dependencies=auth, summary="Users, missing, failures over time")
    def api_history(
        hours: Annotated[float, Query(gt=0, le=192)] = 24.0,
        points: Annotated[int, Query(ge=2, le=2000)] = 240,
    ) -> dict[str, Any]:
        try:
            with connection() as conn:
                return {"items": observe.history(conn, hours=hours, points=points)}
        except ProfileGuardError as exc:
            raise _unavailable(exc) from exc

    @app.get("/api/quarantine", dependencies=auth, summary="Quarantined users")
    def api_quarantine(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        try:
            with connection() as conn:
                return {"items": [shown(q) for q in observe.quarantine(conn, limit=limit)]}
        except ProfileGuardError as exc:
            raise _unavailable(exc) from exc


def check_exposure(host: str, token: str | None, *, allow_no_token: bool) -> None:
    """Refuse an empty token, a short one off loopback, and a non-loopback bind without one
    unless explicitly allowed."""
    if token is not None and not token.strip():
        raise ConfigError(
            "the API token is empty",
            hint=f"set PROFILEGUARD_API_TOKEN (or --token) to a secret made with: {MAKE_TOKEN}; "
            "or leave it unset on localhost",
        )
    if token is not None and len(token) < MIN_TOKEN_LENGTH and not is_loopback(host):
        raise ConfigError(
            f"the API token has {len(token)} characters: serving on {host} needs at least "
            f"{MIN_TOKEN_LENGTH}, or anyone who can reach it could guess it",
            hint=f"make one with: {MAKE_TOKEN} and set it as PROFILEGUARD_API_TOKEN (or --token)",
        )
    if token is None and not is_loopback(host):
        if not allow_no_token:
            raise ConfigError(
                f"refusing to serve on {host} without a token: anyone who can reach it could "
                "read the figures and the audit trail",
                hint="set PROFILEGUARD_API_TOKEN (or --token), bind to 127.0.0.1, or pass "
                "--insecure-no-token if a proxy in front checks access",
            )
        log.warning(
            "SERVING ON %s WITHOUT A TOKEN (--insecure-no-token): anyone who can reach "
            "it can read the figures and the audit trail",
            host,
        )


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a busy port is a clear error, not uvicorn's log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host!r} cannot be resolved: {exc.strerror}",
            hint="pass an address such as 127.0.0.1 or 0.0.0.0",
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeFailedError(
                f"port {port} on {host} is already in use ({host}:{port})",
                hint=f"stop what listens there (e.g. 'ss -ltnp sport = :{port}') or pass "
                "another --port",
            ) from None
        raise ServeFailedError(
            f"cannot listen on {host}:{port}: {exc.strerror}", hint="pass another --host or --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    token: str | None = None,
    alerts: bool = True,
    allow_no_token: bool = False,
    show_details: bool = False,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Run the application with uvicorn until SIGINT/SIGTERM."""
    check_exposure(host, token, allow_no_token=allow_no_token)
    HostRule.of(host, allowed_hosts)  # a bad --allowed-host is refused before anything starts
    settings.conninfo()  # fail early, with the hint, when no database is configured
    sock = _bind(host, port)
    try:
        config = uvicorn.Config(
            create_app(
                settings,
                token=token,
                alerts=alerts,
                show_details=show_details,
                host=host,
                allowed_hosts=allowed_hosts,
            ),
            host=host,
            port=port,
            log_level="info",
        )
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn's server, returning cleanly on SIGINT/SIGTERM: plain uvicorn re-raises the signal
    after its graceful shutdown, which cancels the lifespan mid-way and logs a traceback."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)
