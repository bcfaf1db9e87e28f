"""Connections, and the one boundary where driver errors become profileguard errors.

Transient SQLSTATEs (worth a retry): serialization failure, deadlock, lock timeout, the admin
shutdown family, connection exceptions and too many connections. Everything else is permanent.
"""

from __future__ import annotations

from typing import Any

import psycopg

from profileguard.config import Settings
from profileguard.errors import (
    ConnectionFailedError,
    DatabaseError,
    NotInstalledError,
    ProfileGuardError,
    UserNotFoundError,
)

TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})
NOT_INSTALLED_SQLSTATES = frozenset({"3F000", "42883", "42P01"})
USER_NOT_FOUND_SQLSTATE = "P0002"
APPLICATION_NAME = "profileguard"


def is_transient_sqlstate(sqlstate: str | None) -> bool:
    """True for SQLSTATEs where the same work may succeed if tried again."""
    if sqlstate is None:
        return False
    return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith("08")


def connection_lost(exc: BaseException) -> bool:
    """True when `exc` says the connection itself can no longer be trusted: no SQLSTATE, and the
    server gone, the socket closed, or the protocol out of step (a pooler whose server connection
    was terminated mid-transaction can answer one command with two results)."""
    return (
        isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.InternalError)
        and exc.sqlstate is None
    )


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (driver or profileguard error) is worth retrying."""
    if isinstance(exc, DatabaseError):
        return exc.transient
    if isinstance(exc, ConnectionFailedError):
        return True
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate is None:
            return connection_lost(exc)
        return is_transient_sqlstate(exc.sqlstate)
    return False


def translate(exc: BaseException, *, context: str = "") -> ProfileGuardError:
    """Turn a driver error into the matching ProfileGuardError (other errors pass through)."""
    if isinstance(exc, ProfileGuardError):
        return exc
    prefix = f"{context}: " if context else ""
    if not isinstance(exc, psycopg.Error):
        return ProfileGuardError(f"{prefix}{exc}")
    sqlstate = exc.sqlstate
    diag_hint = exc.diag.message_hint if sqlstate else None
    message = (exc.diag.message_primary if sqlstate else None) or str(exc).strip()
    if sqlstate is None and isinstance(exc, psycopg.OperationalError):
        return ConnectionFailedError(
            f"{prefix}cannot reach the database: {message}",
            hint="check DATABASE_URL and that the server is running",
        )
    if sqlstate == USER_NOT_FOUND_SQLSTATE:
        return UserNotFoundError(f"{prefix}{message}", sqlstate=sqlstate, hint=diag_hint)
    if sqlstate in NOT_INSTALLED_SQLSTATES and "profileguard" in message:
        return NotInstalledError(
            f"{prefix}profileguard is not installed in this database ({message})",
            sqlstate=sqlstate,
            hint="run: profileguard install",
        )
    if sqlstate == "42501":
        diag_hint = diag_hint or (
            "connect as the role that installed profileguard: on hosted Supabase `postgres` "
            "(not the owner of auth.users; profileguard does not need the owner), on a "
            "self-hosted server the owner of the tables"
        )
    return DatabaseError(
        f"{prefix}{message}",
        sqlstate=sqlstate,
        hint=diag_hint,
        transient=is_transient(exc),
    )


def connect_options(settings: Settings) -> dict[str, Any]:
    """Connection options every profileguard connection uses. Nothing is prepared, whatever the
    pooler setting says: behind a transaction-mode pooler a prepared statement stays on one server
    connection, where another client's statement of the same name (psycopg names them _pg3_0,
    _pg3_1, …) runs instead of it (PgBouncer before 1.21 does not track them)."""
    return {"connect_timeout": settings.connect_timeout, "prepare_threshold": None}


def through_pooler(conn: psycopg.Connection) -> bool:
    """True when a pooler answered `conn`: the cancel key it was given names another process
    than the server backend its queries reach (PgBouncer and Supavisor hand each client a key
    of their own, in every pool mode; PostgreSQL gives its backend's pid). Runs one query: in a
    connection that is not autocommit, it opens a transaction."""
    row = conn.execute("select pg_catalog.pg_backend_pid()").fetchone()
    return row is None or int(row[0]) != conn.info.backend_pid


def keeps_session(settings: Settings, conn: psycopg.Connection) -> bool:
    """True when session state (LISTEN, a session setting) lasts on `conn`: `pooler =
    "session"`, or no pooler setting and `conn` reaches PostgreSQL directly. Through a pooler
    whose mode is not set, nothing may outlive a transaction: the mode cannot be told from the
    client, and transaction mode is the one both modes survive."""
    if settings.pooler is not None:
        return settings.pooler == "session"
    return not through_pooler(conn)


def connect(
    settings: Settings,
    *,
    autocommit: bool = False,
    application_name: str = APPLICATION_NAME,
    **kwargs: Any,
) -> psycopg.Connection:
    """Open one connection for `settings`; failures come back as ConnectionFailedError."""
    try:
        return psycopg.connect(
            settings.conninfo(),
            autocommit=autocommit,
            application_name=application_name,
            **{**connect_options(settings), **kwargs},
        )
    except psycopg.Error as exc:
        raise translate(exc) from exc


__all__ = [
    "connect",
    "connect_options",
    "is_transient",
    "is_transient_sqlstate",
    "keeps_session",
    "through_pooler",
    "translate",
]
