"""The backfill's lease against the real server: a run is held by its heartbeat, never by a
session lock; a holder that is gone is recognised (its process ended on this host, or its
heartbeat older than the lease elsewhere); a run taken over stops at its next checkpoint without
recording over its new holder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from conftest import TestDB, wait_for
from test_backfill import run_row, without_trigger

from profileguard.backfill import BackfillStoppedError, Options, Report, lease, run_backfill
from profileguard.errors import ExitCode, NotInstalledError


def test_a_holder_is_gone_when_its_process_on_this_host_has_ended() -> None:
    host = socket.gethostname()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    assert ended.wait(timeout=30) == 0  # reaped: its pid names no process now
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert lease.gone(f"{host}:{ended.pid}:abcd1234")
        assert lease.gone(f"{host}:{ended.pid}")  # written by an older version
        assert not lease.gone(f"{host}:{alive.pid}:abcd1234")
    finally:
        alive.kill()
        alive.wait()
    # Elsewhere, or not a name this package writes: only the heartbeat can tell.
    assert not lease.gone(f"{host}-elsewhere:{ended.pid}:abcd1234")
    assert not lease.gone("gone")
    assert not lease.gone(f"{host}:x:abcd1234")
    assert not lease.gone(f"{host}:0:abcd1234")
    assert not lease.gone(None)
    # This process: alive while it holds that run, gone otherwise (a run of an earlier process
    # that had the same pid).
    mine = lease.holder()
    assert mine.startswith(f"{host}:{os.getpid()}:")
    assert lease.gone(mine)
    lease.hold(mine)
    try:
        assert not lease.gone(mine)
        assert lease.gone(lease.holder())
    finally:
        lease.release(mine)
    assert lease.gone(mine)


def test_a_run_taken_over_stops_at_its_next_checkpoint(installed: TestDB) -> None:
    without_trigger(installed, 6000)
    reports: list[Report] = []
    errors: list[BaseException] = []
    slow = Options(batch_size=200, min_batch_size=100, max_batch_size=200, max_rows_per_second=1000)

    def run() -> None:
        try:
            reports.append(run_backfill(installed.settings, slow))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert wait_for(
            lambda: bool(
                installed.scalar(
                    "select exists (select from profileguard.backfill_runs"
                    " where state = 'running' and batches > 0)"
                )
            ),
            timeout=60,
        )
        # What `backfill --resume` on another host does once the lease has run out.
        with installed.connect() as conn:
            conn.execute(
                "update profileguard.backfill_runs set owner = 'elsewhere:1:abcd1234',"
                " heartbeat_at = now() where state = 'running'"
            )
        scanned = run_row(installed)["scanned"]
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive() and reports == []
    [error] = errors
    assert isinstance(error, BackfillStoppedError)
    assert error.exit_code == ExitCode.BACKFILL_STOPPED
    assert "elsewhere:1:abcd1234 took it over" in str(error)
    # The new holder's run as it left it: the old holder recorded neither a checkpoint nor an end.
    row = run_row(installed)
    assert (row["state"], row["owner"], row["scanned"]) == (
        "running",
        "elsewhere:1:abcd1234",
        scanned,
    )


def test_a_schema_without_the_lease_asks_for_an_upgrade(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute("alter table profileguard.backfill_runs drop column heartbeat_at")
    with pytest.raises(NotInstalledError, match="lease") as info:
        run_backfill(installed.settings)
    assert "profileguard upgrade" in (info.value.hint or "")
    assert installed.scalar("select count(*) from profileguard.backfill_runs") == 0
