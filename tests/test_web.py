"""The HTTP side, served by a real uvicorn on a free port: probes, /metrics, the JSON API, the
bearer token, the Prometheus rules (promtool) and the `serve` command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from conftest import TestDB, wait_for
from monitoring import (
    BAD_NAME,
    CONSTRAINT,
    add_bad_constraint,
    bulk,
    free_port,
    receiver,
    signups,
    with_alerts,
)
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from profileguard import observe
from profileguard.config import Settings, load_settings
from profileguard.errors import ExitCode
from profileguard.install import set_enabled
from profileguard.web import create_app
from profileguard.web.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA_FILE = ROOT / "deploy" / "grafana" / "profileguard.json"
PROMTOOL = shutil.which("promtool") or (
    "/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None
)


@contextmanager
def serving(
    settings: Settings,
    *,
    token: str | None = None,
    alerts: bool = False,
    show_details: bool = False,
) -> Iterator[str]:
    """Run the app with uvicorn in a thread; yields its base URL."""
    port = free_port()
    app = create_app(settings, token=token, alerts=alerts, show_details=show_details)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, timeout=30), "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def fetch(url: str, *, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def get_json(url: str, **kwargs: Any) -> Any:
    code, body, _ = fetch(url, **kwargs)
    assert code == 200, (code, body)
    return json.loads(body)


def scrape(base: str, **kwargs: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics parsed by prometheus-client's parser: {sample name: {labels: value}}."""
    code, body, headers = fetch(f"{base}/metrics", **kwargs)
    assert code == 200, body
    assert headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_probes(installed: TestDB) -> None:
    with serving(installed.settings) as base:
        assert get_json(f"{base}/healthz") == {"status": "ok"}
        ready = get_json(f"{base}/readyz")
        assert ready["ready"] is True and ready["schema_version"] >= 4
        set_enabled(installed.settings, False)
        code, body, _ = fetch(f"{base}/readyz")
        assert code == 503 and "profileguard enable" in json.loads(body)["reason"]
    other = load_settings(
        env={}, database_url=make_conninfo(installed.url, dbname="pg_no_such_db_at_all")
    )
    with serving(other) as base:
        assert fetch(f"{base}/healthz")[0] == 200
        code, body, _ = fetch(f"{base}/readyz")
        assert code == 503 and json.loads(body)["ready"] is False
        metrics = scrape(base)
        assert metrics["profileguard_up"][()] == 0.0
        assert fetch(f"{base}/api/status")[0] == 503


def test_metrics_match_the_figures(installed: TestDB) -> None:
    installed.scalar("select profileguard.stats()")  # the sample the window starts from
    bulk(installed, 10)
    add_bad_constraint(installed)
    signups(installed, 2, name=BAD_NAME)
    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.backfill_runs (state, total_estimate, scanned)"
            " values ('running', 40, 10)"
        )
        conn.execute(
            "insert into profileguard.workers (worker_id, hostname, pid, stats)"
            " values ('w-1', 'host', 1, '{\"state\": \"running\"}')"
        )
        conn.execute("select profileguard.refresh_stats()")
    with serving(installed.settings) as base:
        m = scrape(base)
        status = get_json(f"{base}/api/status")
    s = status["stats"]
    assert m["profileguard_up"][()] == 1.0
    assert m["profileguard_users"][()] == s["users"] == 12
    assert m["profileguard_missing_profiles"][()] == s["missing"] == 2
    assert m["profileguard_profiles"][()] == 10
    assert m["profileguard_coverage_ratio"][()] == pytest.approx(10 / 12, abs=1e-4)
    assert m["profileguard_failures_total"][(("category", "constraint"),)] == 2
    assert m["profileguard_failures_total"][(("category", "permission"),)] == 0
    assert m["profileguard_live_workers"][()] == 1
    assert m["profileguard_worker_heartbeat_age_seconds"][(("worker_id", "w-1"),)] >= 0
    assert m["profileguard_backfill_progress_ratio"][()] == 0.25
    assert m["profileguard_alert_firing"][(("rule", "quarantine"), ("severity", "warning"))] == 0
    exported = set(m)
    for name in METRICS:
        assert name in exported, f"{name} is not exported"


def test_promtool_accepts_the_rules_and_they_use_exported_metrics() -> None:
    used = set(re.findall(r"\bprofileguard_[a-z_]+", RULES_FILE.read_text()))
    assert used, "no profileguard metric in alerts.yml"
    assert used <= set(METRICS), f"rules use metrics that are not exported: {used - set(METRICS)}"
    dashboard = json.loads(GRAFANA_FILE.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    in_grafana = set(re.findall(r"\bprofileguard_[a-z_]+", " ".join(exprs)))
    assert in_grafana <= set(METRICS), in_grafana - set(METRICS)
    if PROMTOOL is None:
        pytest.fail(
            "promtool is missing (Debian package 'prometheus'); run: .ci/install-deps",
            pytrace=False,
        )
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_bearer_token(installed: TestDB) -> None:
    with serving(installed.settings, token="s3cret") as base:
        for path in ("/metrics", "/api/status", "/api/events", "/api/history"):
            code, _, headers = fetch(base + path)
            assert code == 401 and headers.get("www-authenticate") == "Bearer", path
            assert fetch(base + path, token="wrong")[0] == 401
            assert fetch(base + path, token="s3cret")[0] == 200
        assert fetch(f"{base}/healthz")[0] == 200
        assert fetch(f"{base}/readyz")[0] == 200
        assert fetch(f"{base}/")[0] == 200  # the page is static; its data needs the token


def test_events_are_paginated(installed: TestDB) -> None:
    with installed.connect() as conn:
        for i in range(7):
            conn.execute(
                "select profileguard.record_failure(%s, '23514', 'bad', 'client')", (f"user-{i}",)
            )
    with serving(installed.settings) as base:
        seen: list[int] = []
        url = f"{base}/api/events?limit=3&kind=failure"
        pages = 0
        while True:
            page = get_json(url)
            pages += 1
            seen.extend(e["id"] for e in page["items"])
            assert all(
                e["kind"] == "failure" and e["category"] == "constraint" for e in page["items"]
            )
            if page["next_before"] is None:
                break
            url = f"{base}/api/events?limit=3&kind=failure&before={page['next_before']}"
        assert pages == 3 and len(seen) == 7 == len(set(seen))
        assert seen == sorted(seen, reverse=True)
        everything = get_json(f"{base}/api/events?limit=100")
        assert {e["kind"] for e in everything["items"]} == {"failure", "config"}
        assert fetch(f"{base}/api/events?kind=nonsense")[0] == 422
        assert fetch(f"{base}/api/events?limit=0")[0] == 422


def test_api_docs_and_dashboard_are_offline(installed: TestDB) -> None:
    with serving(installed.settings) as base:
        spec = get_json(f"{base}/openapi.json")
        for path in ("/healthz", "/readyz", "/metrics", "/api/status", "/api/events"):
            assert path in spec["paths"]
        assert all(set(ops) == {"get"} for ops in spec["paths"].values())  # read-only
        code, docs, _ = fetch(f"{base}/docs")
        assert code == 200 and "openapi.json" in docs
        code, page, _ = fetch(f"{base}/")
        assert code == 200 and "<svg" in page
        for html in (page, docs):
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "external asset"
        get_json(f"{base}/api/status")  # each read records a sample (at most one per 10 s)
        history = get_json(f"{base}/api/history")
        assert history["items"] and history["items"][-1]["users"] == 0


def test_serve_evaluates_alerts_in_the_background(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, quarantined_at) values ('q', now())"
        )
    with receiver() as hook:
        settings = with_alerts(
            installed.settings, webhook_url=hook.url, evaluate_interval_seconds=0.1
        )
        with serving(settings, alerts=True) as base:
            assert wait_for(lambda: len(hook.of("quarantine", "firing")) == 1)
            m = scrape(base)
            assert (
                m["profileguard_alert_firing"][(("rule", "quarantine"), ("severity", "warning"))]
                == 1
            )
            status = get_json(f"{base}/api/status")
            assert [a["state"] for a in status["alerts"] if a["rule"] == "quarantine"] == ["firing"]
    assert len(hook.messages) == 1


def test_serve_command(installed: TestDB) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }
    env["PROFILEGUARD_API_TOKEN"] = "tok"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "profileguard",
            "--database-url",
            installed.url,
            "serve",
            "--port",
            str(port),
            "--no-alerts",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return fetch(f"{base}/healthz")[0] == 200
            except OSError:
                return process.poll() is not None

        assert wait_for(up, timeout=60)
        assert process.poll() is None
        assert fetch(f"{base}/api/status")[0] == 401
        status = get_json(f"{base}/api/status", token="tok")
        assert status["status"] == "healthy"
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def test_serve_on_a_busy_port_exits_with_its_own_code(installed: TestDB) -> None:
    import socket

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_"))
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "profileguard",
                "--database-url",
                installed.url,
                "serve",
                "--port",
                str(port),
                "--no-alerts",
            ],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    assert result.returncode == ExitCode.SERVE_FAILED != ExitCode.NOT_INSTALLED, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "--port" in result.stderr


def test_status_endpoint_matches_the_library(installed: TestDB) -> None:
    signups(installed, 3)
    with serving(installed.settings) as base:
        api = get_json(f"{base}/api/status")
    lib = observe.status(installed.settings, refresh_if_older_than=float("inf"))
    for key in ("users", "profiles", "missing", "coverage_pct", "quarantined", "repairs_total"):
        assert api["stats"][key] == lib["stats"][key], key
    assert api["status"] == lib["status"] == "healthy"


def _serve_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_"))
    }
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "profileguard", *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_serve_refuses_public_bind_without_token_and_empty_token(installed: TestDB) -> None:
    port = str(free_port())
    public = _serve_cli(
        "--database-url", installed.url, "serve", "--host", "0.0.0.0", "--port", port, "--no-alerts"
    )
    assert public.returncode == 2, public.stderr
    assert "without a token" in public.stderr and "PROFILEGUARD_API_TOKEN" in public.stderr
    for args, env in (
        (["--token", ""], None),
        ([], {"PROFILEGUARD_API_TOKEN": ""}),
        (["--token", "  "], None),
    ):
        empty = _serve_cli(
            "--database-url", installed.url, "serve", "--port", port, "--no-alerts", *args, env=env
        )
        assert empty.returncode == 2, empty.stderr
        assert "token is empty" in empty.stderr
    with pytest.raises(Exception, match="token is empty"):
        create_app(installed.settings, token="")


def test_serve_on_a_busy_port_says_so(installed: TestDB) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = _serve_cli("--database-url", installed.url, "serve", "--port", port, "--no-alerts")
    assert busy.returncode == ExitCode.SERVE_FAILED, busy.stderr
    assert f"port {port}" in busy.stderr and "already in use" in busy.stderr
    assert "Traceback" not in busy.stderr


def test_events_show_no_row_values_by_default(installed: TestDB) -> None:
    add_bad_constraint(installed)
    signups(installed, 1, name=BAD_NAME)
    with installed.connect() as conn:
        conn.execute(
            "select profileguard.record_failure('u-1', '23502', %s, 'client')",
            (
                'null value in column "username" violates not-null constraint\n'
                "Failing row contains (u-1, Grace Hopper, null)",
            ),
        )
        conn.execute(
            "select profileguard.note_repair_failure('u-2', '23505', %s, 'worker', 1, 1, 1)",
            ("Key (username)=(grace) already exists.",),
        )
    with serving(installed.settings) as base:
        events = get_json(f"{base}/api/events?kind=failure")["items"]
        quarantined = get_json(f"{base}/api/quarantine")["items"]
        status = get_json(f"{base}/api/status")
    text = json.dumps([events, quarantined, status["quarantine"]])
    for value in (BAD_NAME, "Grace Hopper", "grace", "Failing row"):
        assert value not in text
    assert all(e["redacted"] for e in events)
    assert {e.get("constraint_name") for e in events} >= {CONSTRAINT}
    assert {e.get("column_name") for e in events} >= {"username"}
    with serving(installed.settings, show_details=True) as base:
        full = get_json(f"{base}/api/events?kind=failure")["items"]
    assert any("violates check constraint" in (e["message"] or "") for e in full)
    assert not any("redacted" in e and e["redacted"] is True for e in full)
