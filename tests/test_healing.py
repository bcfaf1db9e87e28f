"""Self-healing on the real server: a fault that fails everyone is held behind a breaker (never
charged, never quarantined) and released once it passes; a user's own failure is charged,
quarantined, retried on its cadence and repaired once its cause is gone; one engine, bounded
subtransactions."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from conftest import TestDB, wait_for
from test_worker import fast_worker, has_profile, missing_profiles, running

from profileguard.install import install, set_enabled, uninstall
from profileguard.repair import Worker

REJECT_ALL = "pg_test_reject_all"


def state_of(db: TestDB, user: uuid.UUID) -> dict[str, Any] | None:
    row = db.scalar(
        "select jsonb_build_object('attempts', attempts, 'quarantined', quarantined_at is not null,"
        " 'waiting_on', waiting_on, 'fingerprint', fingerprint)"
        " from profileguard.repair_state where user_id = %s",
        (str(user),),
    )
    return dict(row) if row is not None else None


def charged(db: TestDB) -> int:
    return int(
        db.scalar(
            "select count(*) from profileguard.repair_state"
            " where attempts > 0 or quarantined_at is not null"
        )
    )


def reject_everyone(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(
            f"alter table public.profiles add constraint {REJECT_ALL}"
            " check (full_name = 'nobody has this name') not valid"
        )


def accept_everyone(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute(f"alter table public.profiles drop constraint {REJECT_ALL}")


def probe_now(db: TestDB) -> None:
    with db.connect() as conn:
        conn.execute("update profileguard.breakers set next_probe_at = now()")


def repair(db: TestDB, ids: list[uuid.UUID], budget: int = 48) -> dict[str, Any]:
    return dict(
        db.scalar(
            "select profileguard.repair(%s::uuid[], 'test', 3, 0, 0, p_budget => %s)", (ids, budget)
        )
    )


def test_a_fault_that_rejects_everyone_is_held_not_charged(installed: TestDB) -> None:
    reject_everyone(installed)
    users = [installed.signup({"full_name": f"User {i}"}) for i in range(12)]
    assert missing_profiles(installed) == 12

    report = repair(installed, users)

    assert report["created"] == 0
    assert report["failed"] == 0 and report["quarantined"] == 0
    assert report["waiting"] == 12
    [fault] = report["systemic"]
    assert fault["sqlstate"] == "23514"
    assert fault["fingerprint"] == f"23514:public.profiles.{REJECT_ALL}"
    assert charged(installed) == 0
    assert installed.scalar("select state from profileguard.breakers") == "open"
    assert {state_of(installed, u)["waiting_on"] for u in users} == {fault["fingerprint"]}
    # Everyone keeps failing the same way: a probe keeps the breaker open, charging nobody.
    probe_now(installed)
    probe = installed.scalar("select profileguard.probe_breakers('test')")
    assert probe == {"probed": 1, "closed": 0, "released": 0}
    assert charged(installed) == 0

    accept_everyone(installed)
    probe_now(installed)
    probe = installed.scalar("select profileguard.probe_breakers('test')")
    assert probe["closed"] == 1 and probe["released"] == 11  # and the canary, created
    assert installed.scalar("select count(*) from profileguard.breakers") == 0
    assert Worker(installed.settings).run_incremental().repaired >= 11
    assert missing_profiles(installed) == 0
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0


def test_a_fault_that_names_each_user_is_one_fingerprint(installed: TestDB) -> None:
    """A BEFORE trigger raising 'signup <id> rejected by gate' names every user it rejects: one
    fingerprint for all of them, so the fault is seen to fail everyone and nobody is charged."""
    with installed.connect() as conn:
        conn.execute(
            "create function public.pg_test_gate() returns trigger language plpgsql"
            " set search_path = pg_catalog as"
            " $$ begin raise exception 'signup % rejected by gate', new.id; end $$"
        )
        conn.execute(
            "create trigger pg_test_gate before insert on public.profiles"
            " for each row execute function public.pg_test_gate()"
        )
    users = [installed.signup({"full_name": f"User {i}"}) for i in range(20)]
    # The sign-up trigger recorded each failure, with the id it names (ids are not values).
    with installed.connect() as conn:
        recorded = dict(
            conn.execute(
                "select user_id, message from profileguard.failures where source = 'trigger'"
            ).fetchall()
        )
    assert recorded == {str(u): f"signup {u} rejected by gate" for u in users}

    # The first user alone: its neutral row fails the same way (the gate names the canary too),
    # so the fault is everyone's from the first user on: held, not charged.
    first = repair(installed, users[:1])
    assert first["waiting"] == 1 and first["failed"] == 0, first
    [fault] = first["systemic"]
    assert fault["fingerprint"] == "P0001:signup # rejected by gate"
    assert fault["message"].startswith("signup ") and fault["message"].endswith(" rejected by gate")

    report = repair(installed, users[1:])

    assert report["created"] == 0 and report["failed"] == 0 and report["quarantined"] == 0
    assert report["waiting"] == 19
    # Held whole: the batch's one statement and one neutral row, no splitting.
    assert report["subtransactions"] == 2, report
    assert [f["fingerprint"] for f in report["systemic"]] == [fault["fingerprint"]]
    assert charged(installed) == 0
    assert {state_of(installed, u)["waiting_on"] for u in users} == {fault["fingerprint"]}

    with installed.connect() as conn:
        conn.execute("drop trigger pg_test_gate on public.profiles")
    probe_now(installed)
    probe = installed.scalar("select profileguard.probe_breakers('test')")
    assert probe["closed"] == 1 and probe["released"] == 19  # and the canary, created
    assert Worker(installed.settings).run_incremental().repaired >= 19
    assert missing_profiles(installed) == 0
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0


def test_a_fault_that_rejects_everyone_is_held_from_the_first_user(installed: TestDB) -> None:
    """No count of users decides: one user alone, whose neutral row fails the same CHECK, is
    held behind its breaker, not charged."""
    reject_everyone(installed)
    user = installed.signup({"full_name": "Alone"})

    report = repair(installed, [user])

    assert report["waiting"] == 1 and report["failed"] == 0, report
    assert charged(installed) == 0
    assert installed.scalar("select state from profileguard.breakers") == "open"


def test_users_charged_for_their_data_are_refunded_when_the_fault_turns_out_everyones(
    installed: TestDB,
) -> None:
    """A constraint rejecting some names is redefined under the same name to reject everyone:
    the catalog change forgets the verdict, the neutral row now fails, and the users charged
    under the old verdict are refunded and held."""
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint pg_test_names"
            " check (full_name not like 'Odd%') not valid"
        )
    odd = [installed.signup({"full_name": f"Odd {i}"}) for i in range(2)]
    installed.scalar("select profileguard.check_catalog()")  # the first look only remembers
    for user in odd:
        assert repair(installed, [user])["failed"] == 1
    assert charged(installed) == 2
    assert installed.scalar("select state from profileguard.breakers") == "user_specific"

    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles drop constraint pg_test_names;"
            " alter table public.profiles add constraint pg_test_names"
            " check (full_name = 'nobody has this name') not valid"
        )
    assert installed.scalar("select profileguard.check_catalog()") is True
    later = installed.signup({"full_name": "Third"})
    report = repair(installed, [later])

    assert report["waiting"] == 1 and report["failed"] == 0, report
    assert charged(installed) == 0
    assert (
        installed.scalar(
            "select count(*) from profileguard.repair_state where waiting_on is not null"
        )
        == 3
    )


def test_a_users_own_failure_is_charged_quarantined_retried_and_healed_without_a_command(
    installed: TestDB,
) -> None:
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint pg_test_no_bad"
            " check (full_name is distinct from 'Bad User') not valid"
        )
    bad = installed.signup({"full_name": "Bad User"})
    good = [installed.signup({"full_name": f"Good {i}"}) for i in range(3)]
    set_enabled(installed.settings, False)
    more = [installed.signup({"full_name": f"More {i}"}) for i in range(5)]

    worker = fast_worker(installed, worker_id="heal-own", quarantine_retry=1.0, max_attempts=3)
    with running(worker):
        assert wait_for(lambda: all(has_profile(installed, u) for u in good + more))
        assert wait_for(lambda: (state_of(installed, bad) or {}).get("quarantined") is True)
        state = state_of(installed, bad)
        assert state is not None and state["attempts"] == 3 and state["waiting_on"] is None
        assert (
            installed.scalar("select count(*) from profileguard.breakers where state = 'open'") == 0
        )
        # Quarantine is a label: still retried on its cadence (1 s here), still failing.
        history = int(
            installed.scalar(
                "select jsonb_array_length(history) from profileguard.repair_state"
                " where user_id = %s",
                (str(bad),),
            )
        )
        assert wait_for(
            lambda: (
                int(
                    installed.scalar(
                        "select jsonb_array_length(history) from profileguard.repair_state"
                        " where user_id = %s",
                        (str(bad),),
                    )
                )
                > history
            )
        )
        # The cause goes; nobody runs a command.
        with installed.connect() as conn:
            conn.execute("alter table public.profiles drop constraint pg_test_no_bad")
        assert wait_for(lambda: has_profile(installed, bad), timeout=5)
    assert installed.scalar("select count(*) from profileguard.repair_state") == 0


def test_a_catalog_change_releases_quarantined_users_at_once(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint pg_test_no_bad"
            " check (full_name is distinct from 'Bad User') not valid"
        )
    bad = installed.signup({"full_name": "Bad User"})
    worker = Worker(installed.settings, max_attempts=1, backoff_base=0.0)
    assert worker.heal()["catalog_changed"] is False  # the first look only remembers
    assert worker.run_once().quarantined == 1
    assert worker.run_once().scanned == 0  # quarantined: next try in an hour

    # A fix by CREATE OR REPLACE FUNCTION on the table's trigger changes no table catalog row;
    # it still counts. Here the fix is the constraint's removal.
    with installed.connect() as conn:
        conn.execute("alter table public.profiles drop constraint pg_test_no_bad")
    assert worker.heal()["catalog_changed"] is True
    assert worker.run_incremental().repaired == 1
    assert has_profile(installed, bad)


def test_replacing_a_trigger_function_on_the_profile_table_is_a_catalog_change(
    installed: TestDB,
) -> None:
    with installed.connect() as conn:
        conn.execute(
            "create function public.pg_test_guard() returns trigger language plpgsql as"
            " $$ begin if new.full_name = 'Bad User' then raise exception 'no'; end if;"
            " return new; end $$;"
            " create trigger pg_test_guard before insert on public.profiles"
            " for each row execute function public.pg_test_guard()"
        )
    worker = Worker(installed.settings)
    worker.heal()
    with installed.connect() as conn:
        conn.execute(
            "create or replace function public.pg_test_guard() returns trigger language plpgsql"
            " as $$ begin return new; end $$"
        )
    assert worker.heal()["catalog_changed"] is True
    assert worker.heal()["catalog_changed"] is False


@pytest.mark.parametrize("called_from", ["check", "trigger body"])
def test_a_fix_by_replacing_a_helper_function_releases_quarantined_users_at_once(
    installed: TestDB, called_from: str
) -> None:
    # The helper holds the fault; what calls it (a CHECK, or a trigger function's PL/pgSQL body,
    # which leaves no trace in pg_depend) stays as it is.
    with installed.connect() as conn:
        conn.execute(
            "create schema app_rules;"
            " create function app_rules.name_ok(n text) returns boolean language sql"
            " immutable as $$ select n is distinct from 'Bad User' $$"
        )
        if called_from == "check":
            conn.execute(
                "alter table public.profiles add constraint pg_test_rule"
                " check (app_rules.name_ok(full_name)) not valid"
            )
        else:
            conn.execute(
                "create function app_rules.gate() returns trigger language plpgsql as"
                " $$ begin if not app_rules.name_ok(new.full_name) then"
                " raise exception 'rejected'; end if; return new; end $$;"
                " create trigger pg_test_rule before insert on public.profiles"
                " for each row execute function app_rules.gate()"
            )
    bad = installed.signup({"full_name": "Bad User"})
    worker = Worker(installed.settings, max_attempts=1, backoff_base=0.0)
    assert worker.heal()["catalog_changed"] is False  # the first look only remembers
    assert worker.run_once().quarantined == 1
    assert worker.run_once().scanned == 0  # quarantined: next try in an hour

    with installed.connect() as conn:
        conn.execute(
            "create or replace function app_rules.name_ok(n text) returns boolean"
            " language sql immutable as $$ select true $$"
        )
    assert worker.heal()["catalog_changed"] is True
    assert worker.run_incremental().repaired == 1
    assert has_profile(installed, bad)
    assert worker.heal()["catalog_changed"] is False


def test_a_domain_constraint_on_a_profile_column_is_part_of_the_catalog(
    installed: TestDB,
) -> None:
    with installed.connect() as conn:
        conn.execute(
            "create domain public.pg_test_name as text;"
            " alter table public.profiles alter column full_name type public.pg_test_name"
        )
    worker = Worker(installed.settings)
    worker.heal()
    with installed.connect() as conn:
        conn.execute(
            "alter domain public.pg_test_name add constraint short check (length(value) < 500)"
        )
    assert worker.heal()["catalog_changed"] is True


def test_a_locked_profile_table_holds_users_and_they_are_repaired_after_the_lock(
    installed: TestDB,
) -> None:
    set_enabled(installed.settings, False)
    users = [installed.signup({"full_name": f"User {i}"}) for i in range(10)]
    worker = fast_worker(installed, worker_id="heal-lock")
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(installed.admin_url or installed.url) as conn:
            conn.execute("lock table public.profiles in access exclusive mode")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    assert locked.wait(10)
    with running(worker):
        time.sleep(2.0)  # the worker meets the lock: its statements give up after 1 s each
        assert charged(installed) == 0
        released_at = time.monotonic()
        release.set()
        holder.join(10)
        assert wait_for(lambda: all(has_profile(installed, u) for u in users), timeout=10)
        assert time.monotonic() - released_at < 5
    assert charged(installed) == 0
    assert installed.scalar("select count(*) from profileguard.breakers") == 0


def test_splitting_is_capped_per_transaction_and_the_rest_is_deferred(installed: TestDB) -> None:
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint pg_test_odd"
            " check (full_name not like 'Odd%') not valid"
        )
    set_enabled(installed.settings, False)
    users = [
        installed.signup({"full_name": ("Odd" if i % 2 else "Even") + f" {i}"}) for i in range(200)
    ]

    first = repair(installed, users, budget=48)
    assert first["subtransactions"] <= 48, first
    assert first["deferred"] > 0, first
    assert first["waiting"] == 0, first  # others succeeded beside them: their own data
    total_failed = first["failed"]
    rounds = 1
    while missing_profiles(installed) > 100 and rounds < 50:
        pending = [
            u for u in users if not has_profile(installed, u) and state_of(installed, u) is None
        ]
        report = repair(installed, pending, budget=48)
        assert report["subtransactions"] <= 48, report
        assert report["waiting"] == 0, report
        total_failed += report["failed"]
        rounds += 1
    assert missing_profiles(installed) == 100, rounds
    assert total_failed == 100, rounds
    assert installed.scalar("select state from profileguard.breakers") == "user_specific"


def test_issue_scenario_reject_all_with_worker_connections_terminated(installed: TestDB) -> None:
    """A CHECK rejecting every profile, sign-ups going on, the worker's connections terminated,
    the CHECK dropped: everyone has a profile within seconds, nobody quarantined."""
    worker = fast_worker(installed, worker_id="heal-scenario", max_attempts=5)
    with running(worker):
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select count(*) from profileguard.workers where worker_id = 'heal-scenario'"
                )
                == 1
            )
        )
        reject_everyone(installed)
        users = [installed.signup({"full_name": f"User {i}"}) for i in range(60)]
        time.sleep(1.0)
        assert (
            installed.scalar(
                "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity"
                " where application_name = 'profileguard-worker'"
            )
            >= 1
        )
        users += [installed.signup({"full_name": f"Late {i}"}) for i in range(20)]
        time.sleep(2.0)
        assert missing_profiles(installed) == 80
        assert charged(installed) == 0
        accept_everyone(installed)
        assert wait_for(lambda: missing_profiles(installed) == 0, timeout=5)
    assert (
        installed.scalar(
            "select count(*) from profileguard.repair_state where quarantined_at is not null"
        )
        == 0
    )


def test_users_who_signed_up_while_profileguard_was_uninstalled_are_repaired(
    installed: TestDB,
) -> None:
    worker = fast_worker(installed, worker_id="heal-reinstall")
    with running(worker):
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select count(*) from profileguard.workers where worker_id = 'heal-reinstall'"
                )
                == 1
            )
        )
        uninstall(installed.settings)
        users = [installed.signup({"full_name": f"User {i}"}) for i in range(10)]
        time.sleep(1.0)
        install(installed.settings)
        # No trigger saw them and no failure was recorded: the worker's full sweep after it
        # found profileguard back finds them (its periodic one is an hour away here).
        assert wait_for(lambda: all(has_profile(installed, u) for u in users), timeout=5)


def test_users_imported_with_replication_role_replica_are_repaired_by_the_worker(
    installed: TestDB,
) -> None:
    """Imports with `session_replication_role = replica` fire no trigger and leave no failure:
    the worker's bounded invariant check finds them."""
    worker = fast_worker(installed, worker_id="heal-replica")
    with running(worker):
        assert wait_for(
            lambda: (
                installed.scalar(
                    "select count(*) from profileguard.workers where worker_id = 'heal-replica'"
                )
                == 1
            )
        )
        # Its first full sweep is over (the next is an hour away): only the check can find them.
        assert wait_for(lambda: worker.stats["passes"] >= 1)
        with installed.connect_admin() as conn:
            conn.execute("set session_replication_role = replica")
            users = [
                conn.execute(
                    "insert into auth.users (id, aud, role, email, raw_user_meta_data)"
                    " values (gen_random_uuid(), 'authenticated', 'authenticated', %s,"
                    ' \'{"full_name": "Imported"}\') returning id',
                    (f"imported{i}@example.com",),
                ).fetchone()[0]
                for i in range(10)
            ]
        assert not any(has_profile(installed, u) for u in users)
        assert wait_for(lambda: all(has_profile(installed, u) for u in users), timeout=5)


def test_a_batch_failing_on_an_open_breakers_fingerprint_is_split_when_the_neutral_row_passes(
    installed: TestDB,
) -> None:
    """A breaker left open on a CHECK only crafted names break (as judging by counting users
    left it): a batch of ordinary and crafted users failing on it is split, not held — the
    neutral row passes, so the fault is the crafted users' data. The ordinary users get profiles
    in this call, the crafted ones are charged, and the breaker closes."""
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint pg_test_name_len"
            " check (char_length(full_name) <= 100) not valid"
        )
    set_enabled(installed.settings, False)
    crafted = [installed.signup({"full_name": "x" * 200 + str(i)}) for i in range(6)]
    ordinary = [installed.signup({"full_name": f"User {i}"}) for i in range(20)]
    fingerprint = "23514:public.profiles.pg_test_name_len"
    with installed.connect() as conn:
        conn.execute(
            "select profileguard.open_breaker(%s::text[], %s, '23514',"
            " 'public.profiles.pg_test_name_len', 'new row violates check constraint', 'test')",
            ([str(u) for u in crafted], fingerprint),
        )

    report = repair(installed, ordinary + crafted)

    assert report["created"] == 20 and report["waiting"] == 0 and report["systemic"] == [], report
    assert report["failed"] + report["deferred"] == 6, report
    assert report["subtransactions"] <= 48, report
    assert not any(state_of(installed, u) for u in ordinary)
    assert installed.scalar("select state from profileguard.breakers") == "user_specific"
    for user in crafted:
        state = state_of(installed, user)
        assert state is not None and state["waiting_on"] is None
        assert state["fingerprint"] == fingerprint


def long_name(i: int) -> str:
    """A name too long for a btree index entry even compressed (random hex: no repeats)."""
    return "".join(uuid.uuid4().hex for _ in range(250)) + str(i)


CRAFTED = {
    # fault, crafted users, their name, ordinary users signing up during the lock, lock seconds
    "check": (
        "alter table public.profiles add constraint pg_test_name_len"
        " check (char_length(full_name) <= 100) not valid",
        30,
        lambda i: "x" * 200 + str(i),
        20,
        3.0,
    ),
    "index": (
        "create index pg_test_name_idx on public.profiles (full_name)",
        5,
        long_name,
        10,
        2.0,
    ),
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_data_then_a_lock_holds_no_ordinary_user(installed: TestDB, kind: str) -> None:
    """Crafted sign-ups whose own metadata breaks a CHECK (or an index), then a lock on the
    profile table while ordinary users sign up: after the release every ordinary user gets a
    profile without waiting behind the crafted users' fingerprint — never held on it, never
    charged, never quarantined — and the crafted users are charged to their own data."""
    fault, crafted_count, crafted_name, ordinary_count, hold = CRAFTED[kind]
    with installed.connect() as conn:
        conn.execute(fault)
    worker = fast_worker(installed, worker_id=f"crafted-{kind}", max_attempts=5)
    seen: list[tuple[Any, ...]] = []  # every repair_state row of an ordinary user ever seen
    ordinary: list[uuid.UUID] = []
    watching = threading.Event()

    def watch() -> None:
        with installed.connect() as conn:  # profileguard's tables: never locked here
            while not watching.is_set():
                seen.extend(
                    conn.execute(
                        "select user_id, waiting_on, attempts, quarantined_at is not null"
                        " from profileguard.repair_state where user_id = any(%s::text[])",
                        ([str(u) for u in ordinary],),
                    ).fetchall()
                )
                watching.wait(0.02)

    with running(worker):
        crafted = [installed.signup({"full_name": crafted_name(i)}) for i in range(crafted_count)]
        # Their own data: each charged, none held, no breaker open on it.
        assert wait_for(
            lambda: all(
                (s := state_of(installed, u)) is not None and s["attempts"] >= 1 for u in crafted
            ),
            timeout=20,
        ), [(has_profile(installed, u), state_of(installed, u)) for u in crafted]
        fingerprint = state_of(installed, crafted[0])["fingerprint"]
        assert (
            installed.scalar(
                "select count(*) from profileguard.breakers where state = 'open'"
                " and fingerprint = %s",
                (fingerprint,),
            )
            == 0
        )

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        locked = threading.Event()
        release = threading.Event()

        def hold_lock() -> None:
            with psycopg.connect(installed.admin_url or installed.url) as conn:
                conn.execute("lock table public.profiles in access exclusive mode")
                locked.set()
                release.wait(30)

        holder = threading.Thread(target=hold_lock, daemon=True)
        holder.start()
        assert locked.wait(10)
        started = time.monotonic()
        with installed.connect() as conn:
            for i in range(ordinary_count):
                ordinary.append(installed.signup({"full_name": f"Ordinary {i}"}, conn=conn))
        time.sleep(max(0.0, hold - (time.monotonic() - started)))
        release.set()
        holder.join(10)
        assert wait_for(lambda: all(has_profile(installed, u) for u in ordinary), timeout=15)
        watching.set()
        watcher.join(10)

    # Ordinary users were held only by the lock their own attempt met: never on the crafted
    # users' fingerprint, never charged, never quarantined.
    # The lock met every ordinary sign-up (the trigger recorded it), and nothing else did.
    assert installed.scalar(
        "select count(distinct user_id) from profileguard.failures"
        " where user_id = any(%s::text[]) and sqlstate = '55P03'",
        ([str(u) for u in ordinary],),
    ) == len(ordinary)
    wrong = [row for row in seen if row[1] == fingerprint or row[2] > 0 or row[3]]
    assert wrong == []
    assert {row[1].split(":")[0] for row in seen if row[1]} <= {"55P03"}
    # The crafted users: still without a profile, charged to their own data.
    assert not any(has_profile(installed, u) for u in crafted)
    states = [state_of(installed, u) for u in crafted]
    assert all(s is not None and s["attempts"] >= 1 for s in states), states
    assert (
        installed.scalar(
            "select count(*) from profileguard.breakers where state = 'open' and fingerprint = %s",
            (fingerprint,),
        )
        == 0
    )


def test_the_neutral_row_carries_no_user_data_and_leaves_nothing_behind(installed: TestDB) -> None:
    """The neutral row is accepted by the plain table and rolled back, the table's own triggers
    with it; a CHECK no name passes fails it with that CHECK's fingerprint; a NOT NULL column the
    mapping does not fill fails it, while a mapped one gets a neutral value of its type."""
    with installed.connect() as conn:
        conn.execute(
            "create table public.pg_test_seen (id uuid, full_name text);"
            " create function public.pg_test_seen() returns trigger language plpgsql"
            " set search_path = pg_catalog as $$ begin"
            " insert into public.pg_test_seen values (new.id, new.full_name); return new; end $$;"
            " create trigger pg_test_seen before insert on public.profiles"
            " for each row execute function public.pg_test_seen()"
        )
    set_enabled(installed.settings, False)
    user = installed.signup({"full_name": "Private Name"})

    assert installed.scalar("select profileguard.neutral_probe(%s)", (str(user),)) is None
    assert not has_profile(installed, user)
    assert installed.scalar("select count(*) from public.pg_test_seen") == 0

    # The mapped full_name (NOT NULL now, no default) gets a neutral value, never the user's own.
    with installed.connect() as conn:
        conn.execute("alter table public.profiles alter column full_name set not null")
        conn.execute(
            "create or replace function public.pg_test_seen() returns trigger language plpgsql"
            " set search_path = pg_catalog as $$ begin"
            " raise exception using errcode = 'P0001', message = 'seen ' || new.full_name;"
            " end $$"
        )
    fingerprint = installed.scalar("select profileguard.neutral_probe(%s)", (str(user),))
    assert fingerprint.startswith("P0001:seen ")
    assert "Private" not in fingerprint
    with installed.connect() as conn:
        conn.execute("drop trigger pg_test_seen on public.profiles")

    # A format CHECK that ordinary names pass (no digits, as in `right(name, 2) <> '00'`) passes
    # the neutral text too: it is letters only, whatever the key's hash.
    with installed.connect() as conn:
        conn.execute(
            "alter table public.profiles add constraint pg_test_letters"
            " check (full_name !~ '[^a-z]') not valid"
        )
    for key in [user, *(installed.signup({}) for _ in range(5))]:
        assert installed.scalar("select profileguard.neutral_probe(%s)", (str(key),)) is None
    with installed.connect() as conn:
        conn.execute("alter table public.profiles drop constraint pg_test_letters")

    reject_everyone(installed)
    assert (
        installed.scalar("select profileguard.neutral_probe(%s)", (str(user),))
        == f"23514:public.profiles.{REJECT_ALL}"
    )
    accept_everyone(installed)
    with installed.connect() as conn:
        conn.execute("alter table public.profiles add column pg_test_required text not null")
    assert (
        installed.scalar("select profileguard.neutral_probe(%s)", (str(user),))
        == "23502:public.profiles.pg_test_required"
    )
