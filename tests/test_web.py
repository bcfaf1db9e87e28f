"""The HTTP side, served by a real uvicorn on a free port: probes, /metrics, the JSON API, the
bearer token, the Prometheus rules (promtool) and the `serve` command."""

from __future__ import annotations

import base64
import hashlib
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
from profileguard.errors import ConfigError, ExitCode
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
    allowed_hosts: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run the app with uvicorn in a thread; yields its base URL."""
    port = free_port()
    app = create_app(
        settings,
        token=token,
        alerts=alerts,
        show_details=show_details,
        allowed_hosts=allowed_hosts,
    )
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


def fetch(
    url: str, *, token: str | None = None, host: str | None = None
) -> tuple[int, str, dict[str, str]]:
    """GET `url`; `host` sends that Host header instead of the URL's."""
    request = urllib.request.Request(url)
    if host is not None:
        request.add_header("Host", host)
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
            "select profileguard.record_failure('u-1', '23502', %s, 'client', %s)",
            (
                'null value in column "username" violates not-null constraint\n'
                "Failing row contains (u-1, Grace Hopper, null)",
                '{"column_name": "username", "table_name": "profiles"}',
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


# --- what every request and response passes: the Host check, the headers, the token --------

FOREIGN = "rebind.attacker.example"
GOOD_TOKEN = "k" * 31 + "Q"  # 32 characters: the shortest accepted off loopback


def raw_get(base: str, request: bytes) -> tuple[int, bytes]:
    """Send `request` as it is (no Host added) and return the status and the body."""
    import socket

    address = base.removeprefix("http://").split(":")
    with socket.create_connection((address[0], int(address[1])), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_request_for_another_host_is_refused(installed: TestDB) -> None:
    """DNS rebinding: with no token on loopback (the default), a page on another name must not
    read the audit trail through the victim's browser."""
    uid = installed.signup({"full_name": "Rebound"}, email="rebound@example.com")
    with installed.connect() as conn:
        conn.execute(
            "select profileguard.record_failure(%s, '23514', 'bad', 'client')", (str(uid),)
        )
    with serving(installed.settings) as base:
        port = base.rsplit(":", 1)[1]
        for path in ("/api/events", "/api/status", "/metrics", "/", "/healthz", "/nowhere"):
            code, body, headers = fetch(base + path, host=f"{FOREIGN}:{port}")
            assert code == 421, (path, code, body)
            assert str(uid) not in body and "rebound" not in body
            assert "--allowed-host" in json.loads(body)["hint"]
            assert headers["x-content-type-options"] == "nosniff"
        for name in (FOREIGN, "127.0.0.1.attacker.example", "localhost.attacker.example", "0"):
            assert fetch(f"{base}/api/events", host=name)[0] == 421, name
        # The loopback names, with or without the port, in any case: served.
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
            code, body, _ = fetch(f"{base}/api/events", host=name)
            assert code == 200 and str(uid) in body, name
        # No Host at all (HTTP/1.0) is refused too.
        status, body_bytes = raw_get(base, b"GET /api/events HTTP/1.0\r\n\r\n")
        assert status == 400 and str(uid).encode() not in body_bytes
        status, _ = raw_get(
            base, f"GET /healthz HTTP/1.0\r\nHost: localhost:{port}\r\n\r\n".encode()
        )
        assert status == 200


def test_allowed_host_names_are_served(installed: TestDB) -> None:
    with serving(installed.settings, allowed_hosts=("Dash.Example.com.", "10.1.2.3")) as base:
        assert fetch(f"{base}/api/status", host="dash.example.com:443")[0] == 200
        assert fetch(f"{base}/api/status", host="DASH.EXAMPLE.COM")[0] == 200
        assert fetch(f"{base}/api/status", host="10.1.2.3")[0] == 200
        assert fetch(f"{base}/api/status", host="other.example.com")[0] == 421
        assert fetch(f"{base}/api/status", host="10.1.2.4")[0] == 421  # bound to loopback only
    with pytest.raises(ConfigError, match="not a host name"):
        create_app(installed.settings, allowed_hosts=["https://dash.example.com"])


def test_every_response_carries_the_security_headers(installed: TestDB) -> None:
    with serving(installed.settings, token="header-token") as base:
        for path, token, expected in (
            ("/", None, 200),
            ("/docs", None, 200),
            ("/healthz", None, 200),
            ("/readyz", None, 200),
            ("/openapi.json", None, 200),
            ("/api/status", "header-token", 200),
            ("/metrics", "header-token", 200),
            ("/api/events", None, 401),
            ("/api/events?limit=0", "header-token", 422),
            ("/nowhere", None, 404),
        ):
            code, body, headers = fetch(base + path, token=token)
            assert code == expected, (path, code, body)
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["x-frame-options"] == "DENY", path
            assert headers["referrer-policy"] == "no-referrer", path
            assert headers["cross-origin-resource-policy"] == "same-origin", path
            policy = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy, path
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, path
            if path in ("/", "/docs"):
                # The page's own inline script and style, by hash; requests to its own origin.
                for tag in ("script", "style"):
                    inline = re.search(rf"<{tag}>(.*?)</{tag}>", body, re.DOTALL)
                    assert inline is not None
                    digest = base64.b64encode(hashlib.sha256(inline[1].encode()).digest())
                    assert f"{tag}-src 'sha256-{digest.decode()}'" in policy, (path, tag)
                assert "connect-src 'self'" in policy
                assert " style=" not in body  # no inline style attribute the policy would block
            else:
                assert "script-src" not in policy, path


def test_serve_refuses_a_short_token_off_loopback(installed: TestDB) -> None:
    port = str(free_port())
    serve = ("--database-url", installed.url, "serve", "--port", port, "--no-alerts")
    for args, env in (
        (["--host", "0.0.0.0", "--token", "s3cret"], None),
        (["--host", "0.0.0.0"], {"PROFILEGUARD_API_TOKEN": GOOD_TOKEN[:-1]}),
        (["--host", "::", "--token", "x"], None),
    ):
        short = _serve_cli(*serve, *args, env=env)
        assert short.returncode == ExitCode.USAGE == 2, short.stderr
        text = " ".join(short.stderr.split())
        assert "needs at least 32" in text, text
        assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in text
        assert "Traceback" not in short.stderr
    bad_name = _serve_cli(*serve, "--allowed-host", "dash.example.com:8787")
    assert bad_name.returncode == 2 and "not a host name" in bad_name.stderr, bad_name.stderr


def _started(base: str, process: subprocess.Popen[bytes]) -> bool:
    def up() -> bool:
        try:
            return fetch(f"{base}/healthz")[0] == 200
        except OSError:
            return process.poll() is not None

    return wait_for(up, timeout=60) and process.poll() is None


def test_serve_off_loopback_with_a_long_token_and_allowed_names(installed: TestDB) -> None:
    """Bound to every interface: a 32-character token is taken; IP addresses and the loopback
    names are served, a name only when allowed (--allowed-host, PROFILEGUARD_ALLOWED_HOSTS)."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATABASE_URL", "PROFILEGUARD_", "SUPABASE_"))
    }
    env["PROFILEGUARD_API_TOKEN"] = GOOD_TOKEN
    env["PROFILEGUARD_ALLOWED_HOSTS"] = "a.example.com, b.example.com"
    command = [sys.executable, "-m", "profileguard", "--database-url", installed.url, "serve"]
    options = ["--host", "0.0.0.0", "--port", str(port), "--no-alerts"]
    for names in ([], ["--allowed-host", "c.example.com"]):
        process = subprocess.Popen(
            [*command, *options, *names],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            assert _started(base, process)
            status = f"{base}/api/status"
            assert fetch(status, host="192.0.2.7")[0] == 401  # served: the token is asked for
            assert fetch(status, token=GOOD_TOKEN, host="192.0.2.7")[0] == 200
            assert fetch(status, token=GOOD_TOKEN, host=f"localhost:{port}")[0] == 200
            assert fetch(status, token=GOOD_TOKEN, host=FOREIGN)[0] == 421
            # --allowed-host replaces the variable's names, as any option does its variable.
            for name in ("a.example.com", "b.example.com", "c.example.com"):
                expected = 200 if (name == "c.example.com") == bool(names) else 421
                assert fetch(status, token=GOOD_TOKEN, host=name)[0] == expected, (names, name)
        finally:
            process.terminate()
            process.wait(30)
