"""Alert rules against a real local HTTP receiver: each fires once and resolves once, several
evaluators send one message, a webhook that is down or failing breaks nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import TestDB, wait_for
from monitoring import (
    BAD_NAME,
    Receiver,
    add_bad_constraint,
    configure_alerts,
    free_port,
    receiver,
    signups,
    with_alerts,
)

from profileguard import observe
from profileguard.config import Settings
from profileguard.install import set_enabled


@dataclass
class Scenario:
    """How to make one rule's condition true, and false again."""

    settings: Callable[[TestDB, str], Settings]
    trigger: Callable[[TestDB], None]
    clear: Callable[[TestDB], None]


def sweep(db: TestDB) -> None:
    with observe.open_connection(db.settings) as conn:
        observe.refresh(conn)


def _missing_on(db: TestDB) -> None:
    set_enabled(db.settings, False)
    db.signup({"full_name": "Lost"})
    set_enabled(db.settings, True)
    sweep(db)  # no failure event when the trigger is off: only a sweep sees this user


def _missing_off(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute("select profileguard.ensure_profile(id) from auth.users")


def _rate_on(db: TestDB) -> None:
    add_bad_constraint(db)
    signups(db, 3, name=BAD_NAME)


def _rate_off(db: TestDB) -> None:
    signups(db, 40)  # 3 failures in 43 signups: 93% >= 90%


def _quarantine_on(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "insert into profileguard.repair_state (user_id, attempts, last_sqlstate,"
            " quarantined_at) values ('q-1', 5, '23514', now())"
        )


def _quarantine_off(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute("delete from profileguard.repair_state")


def _worker_on(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "insert into profileguard.workers (worker_id, hostname, pid, heartbeat_at,"
            " stats) values ('w-1', 'host', 1, now() - interval '1 hour',"
            ' \'{"state": "running"}\')'
        )


def _worker_off(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute("update profileguard.workers set heartbeat_at = now()")


def _backfill_on(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "insert into profileguard.backfill_runs (state, total_estimate, scanned,"
            " updated_at) values ('running', 100, 10, now() - interval '2 hours')"
        )


def _backfill_off(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            "update profileguard.backfill_runs set state = 'completed',"
            " finished_at = now(), updated_at = now()"
        )


SCENARIOS = {
    "missing_profiles": Scenario(
        lambda db, url: configure_alerts(db, webhook_url=url, missing_grace_seconds=0),
        _missing_on,
        _missing_off,
    ),
    "success_rate": Scenario(
        lambda db, url: configure_alerts(
            db,
            webhook_url=url,
            success_rate_min_pct=90,
            success_rate_min_signups=3,
            success_rate_window_seconds=600,
            missing_grace_seconds=3600,
            repair_slo_seconds=3600,
        ),
        _rate_on,
        _rate_off,
    ),
    "quarantine": Scenario(
        lambda db, url: with_alerts(db.settings, webhook_url=url),
        _quarantine_on,
        _quarantine_off,
    ),
    "no_live_worker": Scenario(
        lambda db, url: with_alerts(db.settings, webhook_url=url),
        _worker_on,
        _worker_off,
    ),
    "backfill_stalled": Scenario(
        lambda db, url: configure_alerts(db, webhook_url=url, backfill_stall_seconds=60),
        _backfill_on,
        _backfill_off,
    ),
}


@pytest.mark.parametrize("rule", list(SCENARIOS))
def test_rule_fires_once_and_resolves_once(installed: TestDB, rule: str) -> None:
    scenario = SCENARIOS[rule]
    with receiver() as hook:
        settings = scenario.settings(installed, hook.url)
        manager = observe.AlertManager(settings)
        first = manager.evaluate()  # the first read also takes the window's first sample
        assert rule not in first.fired and hook.of(rule) == []

        scenario.trigger(installed)
        fired = manager.evaluate()
        assert rule in fired.fired, fired
        assert f"{rule}:firing" in fired.delivered
        for _ in range(3):  # still true: nothing new, also from a fresh manager (a restart)
            again = observe.AlertManager(settings).evaluate()
            assert rule in again.active and rule not in again.fired
        messages = hook.of(rule, "firing")
        assert len(messages) == 1
        assert messages[0]["text"].startswith(":rotating_light: profileguard FIRING")
        assert messages[0]["attachments"][0]["fields"][0] == {
            "title": "rule",
            "value": rule,
            "short": True,
        }

        scenario.clear(installed)
        resolved = manager.evaluate()
        assert rule in resolved.resolved, resolved
        for _ in range(2):
            assert rule not in observe.AlertManager(settings).evaluate().resolved
        assert len(hook.of(rule, "resolved")) == 1
        assert len(hook.of(rule)) == 2
        # Every other rule stayed quiet.
        assert {m["profileguard"]["rule"] for m in hook.messages} == {rule}
    state = installed.scalar(
        "select jsonb_build_object('state', state, 'fire_count', fire_count, 'pending',"
        " pending_delivery) from profileguard.alert_state where rule = %s",
        (rule,),
    )
    assert state == {"state": "ok", "fire_count": 1, "pending": None}


def test_several_evaluators_send_each_message_once(installed: TestDB) -> None:
    with receiver() as hook:
        settings = with_alerts(installed.settings, webhook_url=hook.url)
        _quarantine_on(installed)

        def race() -> None:
            barrier = threading.Barrier(4)
            errors: list[BaseException] = []

            def run() -> None:
                try:
                    manager = observe.AlertManager(settings)
                    barrier.wait()
                    manager.evaluate()
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=run) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []

        race()
        assert len(hook.of("quarantine", "firing")) == 1
        _quarantine_off(installed)
        race()
        assert len(hook.of("quarantine", "resolved")) == 1
        assert len(hook.messages) == 2


def test_webhook_down_breaks_nothing_and_is_retried_later(installed: TestDB) -> None:
    port = free_port()  # nothing listens here
    settings = with_alerts(
        installed.settings,
        webhook_url=f"http://127.0.0.1:{port}/hook",
        webhook_attempts=2,
        webhook_timeout_seconds=2,
    )
    _quarantine_on(installed)
    result = observe.AlertManager(settings, retry_base_seconds=0.01).evaluate()
    assert result.fired == ["quarantine"]
    assert result.delivered == [] and len(result.delivery_errors) == 1
    assert "webhook unreachable" in result.delivery_errors[0]
    row = installed.scalar(
        "select jsonb_build_object('state', state, 'pending', pending_delivery, 'attempts',"
        " delivery_attempts) from profileguard.alert_state where rule = 'quarantine'"
    )
    assert row == {"state": "firing", "pending": "firing", "attempts": 1}

    # The receiver comes back (answering 500 once more first): the message goes out once.
    with receiver(fail_first=1) as hook:
        settings = with_alerts(installed.settings, webhook_url=hook.url, webhook_attempts=2)
        manager = observe.AlertManager(settings, retry_base_seconds=0.01)
        retried = manager.evaluate()
        assert retried.fired == [] and retried.delivered == ["quarantine:firing"]
        assert hook.requests == 2 and len(hook.of("quarantine", "firing")) == 1
        manager.evaluate()
        assert len(hook.messages) == 1


def test_resolved_before_delivery_sends_nothing(installed: TestDB) -> None:
    port = free_port()
    down = with_alerts(
        installed.settings, webhook_url=f"http://127.0.0.1:{port}/hook", webhook_attempts=1
    )
    _quarantine_on(installed)
    observe.AlertManager(down).evaluate()
    _quarantine_off(installed)
    with receiver() as hook:
        result = observe.AlertManager(
            with_alerts(installed.settings, webhook_url=hook.url)
        ).evaluate()
        assert result.resolved == ["quarantine"]
        assert hook.messages == []  # no "resolved" for a "firing" nobody heard


def test_monitor_loop_survives_a_dead_webhook(installed: TestDB) -> None:
    port = free_port()
    settings = with_alerts(
        installed.settings,
        webhook_url=f"http://127.0.0.1:{port}/hook",
        webhook_attempts=1,
        evaluate_interval_seconds=0.05,
    )
    _quarantine_on(installed)
    loop = observe.MonitorLoop(settings).start()
    try:
        assert wait_for(lambda: loop.evaluations >= 3)
        assert loop.last_error is None
        evaluation = loop.last_evaluation
        assert evaluation is not None and evaluation.delivery_errors
    finally:
        loop.stop()
    assert installed.scalar(
        "select delivery_attempts >= 3 from profileguard.alert_state where rule = 'quarantine'"
    )


def test_log_sink_records_both_transitions(
    installed: TestDB, caplog: pytest.LogCaptureFixture
) -> None:
    settings = with_alerts(installed.settings)
    _quarantine_on(installed)
    with caplog.at_level("INFO", logger="profileguard.alerts"):
        observe.evaluate_once(settings)
        observe.evaluate_once(settings)
        _quarantine_off(installed)
        observe.evaluate_once(settings)
    lines = [r.getMessage() for r in caplog.records if r.name == "profileguard.alerts"]
    assert len(lines) == 2
    assert "FIRING" in lines[0] and "RESOLVED" in lines[1]


def test_receiver_helper_is_real(installed: TestDB) -> None:
    """The receiver answers real HTTP (guards the other tests against a silent helper)."""
    import json
    import urllib.request

    with receiver() as hook:
        assert isinstance(hook, Receiver)
        req = urllib.request.Request(
            hook.url,
            data=json.dumps({"profileguard": {"rule": "x", "status": "firing"}}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as response:
            assert response.status == 200
        assert len(hook.of("x")) == 1
