"""`profileguard demo` end to end, as `make demo` runs it: its own embedded PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }


def test_demo_ends_with_every_user_having_a_profile_and_no_failed_signup() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "profileguard",
            "demo",
            "--users",
            "2000",
            "--signups",
            "200",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    figures: dict[str, dict[str, Any]] = json.loads(done.stdout)

    assert figures["failed sign-ups"]["before"] > 0  # the legacy trigger aborts some
    assert figures["failed sign-ups"]["after"] == 0
    assert figures["existing users without a profile"]["before"] > 0
    assert figures["users missing a profile at the end"]["after"] == 0
    # every injected failure was recorded and repaired
    recorded = figures["failures recorded (SQLSTATE)"]["after"]
    assert recorded == 200 // 20
    assert figures["profiles repaired by the worker"]["after"] == recorded
    assert (
        figures["profiles created by the backfill"]["after"]
        == (figures["existing users without a profile"]["before"])
    )
    for step in (
        "1. Sign-ups on the legacy trigger",
        "2. profileguard audit",
        "4. profileguard backfill",
        "6. Before and after",
    ):
        assert step in done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_serve_leaves_the_dashboard_up_until_ctrl_c() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "profileguard",
            "demo",
            "--users",
            "500",
            "--signups",
            "40",
            "--serve",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    try:
        status = None
        deadline = time.monotonic() + 120
        while status is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
                    status = json.load(r)
            except OSError:
                time.sleep(0.2)
        assert status is not None
        assert status["status"] == "healthy"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert page.status == 200
            assert "profileguard" in page.read().decode()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert f"http://127.0.0.1:{port}/" in stdout
    assert "Traceback" not in stderr
