"""One verdict: SQL `profileguard.health()`, `profileguard status --json`, /api/status, /metrics'
health gauge and the alert evaluation give the same status and the same failing checks in every
state, judged by the [alerts] thresholds that install stored (real sign-ups, real waiting)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import TestDB, wait_for
from monitoring import configure_alerts
from test_monitor import cli
from test_web import get_json, scrape, serving

from profileguard import observe
from profileguard.config import AlertSettings, Settings
from profileguard.errors import ExitCode, NotInstalledError
from profileguard.installation import TRIGGER_NAME

LEVEL = {0: "healthy", 1: "degraded", 2: "unhealthy"}
# Checks only the Python side can make (they never change the status).
PROCESS_CHECKS = {"thresholds"}


def health(db: TestDB) -> dict[str, Any]:
    return dict(db.scalar("select profileguard.health()"))


def wait_until(db: TestDB, holds: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """SQL health() until `holds` is true of it (the bounded check runs every ~2 s)."""
    assert wait_for(lambda: holds(health(db)), timeout=60, interval=0.2), health(db)
    return health(db)


def views(db: TestDB, settings: Settings, base: str) -> dict[str, tuple[str, frozenset[str]]]:
    """The status and the failing checks (without the process's own) as each view gives them.
    The command line runs with no profileguard.toml: the [alerts] defaults, whatever is
    installed."""
    sql = health(db)
    done = cli(db, "status", "--json")
    status = json.loads(done.stdout)
    assert done.returncode == status["exit_code"], done.stderr
    assert done.returncode == observe.EXIT_CODES[status["status"]]
    api = get_json(f"{base}/api/status")
    metrics = scrape(base)
    failing = {
        dict(labels)["check"]
        for labels, value in metrics["profileguard_check_failing"].items()
        if value == 1
    }
    evaluation = observe.AlertManager(settings, sinks=[]).evaluate()
    firing = db.scalar(
        "select coalesce(array_agg(rule), '{}') from profileguard.alert_state"
        " where state = 'firing'"
    )

    def own(names: Any) -> frozenset[str]:
        return frozenset(names) - PROCESS_CHECKS

    return {
        "sql": (sql["status"], own(c["name"] for c in sql["checks"] if c["status"] != "ok")),
        "cli": (status["status"], own(status["firing"])),
        "api": (api["status"], own(api["firing"])),
        "metrics": (LEVEL[int(metrics["profileguard_health_status"][()])], own(failing)),
        "alerts": (evaluation.status, own(evaluation.active)),
        "alert state": (evaluation.status, own(firing)),
    }


def agree(
    db: TestDB, settings: Settings, base: str, status: str, failing: set[str]
) -> dict[str, tuple[str, frozenset[str]]]:
    shown = views(db, settings, base)
    assert set(shown.values()) == {(status, frozenset(failing))}, shown
    return shown


def test_every_view_gives_the_installed_verdict(installed: TestDB) -> None:
    db = installed
    # Thresholds that are not the defaults: a grace of a second, an SLO of an hour.
    settings = configure_alerts(db, missing_grace_seconds=1, repair_slo_seconds=3600)
    with serving(settings) as base:
        # No user without a profile.
        db.signup({"full_name": "Has One"})
        agree(db, settings, base, "healthy", set())

        # One user without a profile (signed up while profileguard was disabled), missing for
        # longer than the grace: degraded.
        assert cli(db, "disable").returncode == 0
        uid = db.signup({"full_name": "Lost"})
        assert cli(db, "enable").returncode == 0
        wait_until(db, lambda h: h["missing"] == 1)
        wait_until(db, lambda h: h["status"] == "degraded")
        agree(db, settings, base, "degraded", {"missing_profiles"})

        # A grace of an hour: the same user is within it, healthy (the installed thresholds,
        # not the defaults the command line was started with).
        settings = configure_alerts(db, missing_grace_seconds=3600, repair_slo_seconds=7200)
        agree(db, settings, base, "healthy", set())
        assert health(db)["missing"] == 1

        # An SLO of two seconds: missing for longer than the SLO, unhealthy.
        settings = configure_alerts(db, missing_grace_seconds=1, repair_slo_seconds=2)
        wait_until(db, lambda h: h["status"] == "unhealthy")
        agree(db, settings, base, "unhealthy", {"missing_profiles", "repair_slo"})
        # Arguments replace the installed grace and SLO, for that call only.
        assert db.scalar("select profileguard.health(null, interval '1 hour') ->> 'status'") == (
            "degraded"
        )

        # Repaired: healthy again.
        with db.connect() as conn:
            conn.execute("select profileguard.ensure_profile(%s)", (uid,))
        wait_until(db, lambda h: h["missing"] == 0)
        agree(db, settings, base, "healthy", set())

        # profileguard disabled: unhealthy with every user having a profile.
        assert cli(db, "disable").returncode == 0
        agree(db, settings, base, "unhealthy", {"enabled"})
        assert cli(db, "enable").returncode == 0

        # The sign-up trigger disabled on the table by its owner: unhealthy.
        with db.connect_admin() as conn:
            conn.execute(f"alter table auth.users disable trigger {TRIGGER_NAME}")
        agree(db, settings, base, "unhealthy", {"trigger"})
        with db.connect_admin() as conn:
            conn.execute(f"alter table auth.users enable trigger {TRIGGER_NAME}")
        agree(db, settings, base, "healthy", set())


def test_warnings_agree_and_do_not_change_the_status(installed: TestDB) -> None:
    """A warning (here quarantine, with a configured threshold) is the same failing check in
    every view, and the status stays healthy."""
    db = installed
    settings = configure_alerts(db, quarantine_threshold=1)
    with db.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, attempts, quarantined_at)"
            " values ('q-1', 5, now())"
        )
    with serving(settings) as base:
        agree(db, settings, base, "healthy", set())  # one quarantined: not above the threshold
        with db.connect() as conn:
            conn.execute(
                "insert into profileguard.repair_state (user_id, attempts, quarantined_at)"
                " values ('q-2', 5, now())"
            )
        agree(db, settings, base, "healthy", {"quarantine"})


def test_the_process_own_check_names_thresholds_that_are_not_installed(
    installed: TestDB,
) -> None:
    """A process started with other [alerts] thresholds than the installed ones says so (a
    warning of its own), and still gives the installed verdict."""
    db = installed
    assert health(db)["thresholds"] == AlertSettings().thresholds()
    other = configure_alerts(db, missing_grace_seconds=0)
    shown = observe.status(db.settings)  # started with the defaults
    assert shown["status"] == "healthy" and shown["warnings"] == ["thresholds"]
    message = {c["name"]: c["message"] for c in shown["checks"]}["thresholds"]
    assert "missing_grace_seconds 10 here, 0 installed" in message
    assert "profileguard upgrade" in message
    assert observe.status(other)["warnings"] == []
    assert shown["thresholds"] == health(db)["thresholds"] == other.alerts.thresholds()


def test_health_without_installed_thresholds_names_the_upgrade(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute("update profileguard.settings set config = config - 'alerts'")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as caught:
        installed.scalar("select profileguard.health()")
    assert "profileguard upgrade" in str(caught.value.diag.message_hint)


def test_an_older_health_function_names_the_upgrade(installed: TestDB) -> None:
    """A package newer than the installed functions (upgrade not run yet) says so instead of
    showing a verdict it cannot read."""
    with installed.connect() as conn:
        conn.execute(
            "create or replace function profileguard.health(p_grace interval default null,"
            " p_slo interval default null) returns jsonb language sql"
            " set search_path = pg_catalog, pg_temp"
            " as $$ select jsonb_build_object('status', 'healthy') $$"
        )
    with pytest.raises(NotInstalledError) as caught:
        observe.status(installed.settings)
    assert caught.value.hint == "run: profileguard upgrade"
    done = cli(installed, "status", "--json")
    assert done.returncode == ExitCode.NOT_INSTALLED and "profileguard upgrade" in done.stderr
    assert cli(installed, "upgrade").returncode == 0
    assert cli(installed, "status", "--json").returncode == ExitCode.OK
