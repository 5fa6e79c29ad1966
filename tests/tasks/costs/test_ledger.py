"""The ledger under contention: concurrent gate calls in separate processes cannot overrun the
budget, and a worker killed inside a ledger transaction leaves books that still settle. Every
test runs on SQLite and on PostgreSQL (the `ledger_url` fixture)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import Connection

import pytest
from sqlalchemy import select, update

from tasks.costs.ledger import (
    LOCK_ROW,
    BudgetExceeded,
    Ledger,
    LedgerUnavailable,
    ReservationStatus,
    entries,
    lock,
)

HIGH = 1.25
FITS = 7
CALLS = 24
LIMIT = FITS * HIGH


def gate(ledger: Ledger, run_key: str):
    """One gate call of a $HIGH run against the LIMIT budget."""
    return ledger.reserve(
        run_key=run_key,
        backend="hf-jobs",
        hardware="a10g-small",
        price_per_hour=1.0,
        expected_usd=0.8,
        high_usd=HIGH,
        monthly_limit_usd=LIMIT,
        per_job_max_usd=LIMIT,
        needs_approval=False,
    )


def reserve_in_process(url: str, run_key: str, start, results) -> None:
    """One gate call, in its own process, released at the same time as the others."""
    ledger = Ledger(url)
    start.wait()
    try:
        reservation = gate(ledger, run_key)
        results.put((run_key, reservation.id))
    except BudgetExceeded:
        results.put((run_key, None))


def test_concurrent_gate_calls_let_exactly_the_budget_through(ledger_url):
    url = ledger_url  # empty: the racing processes create the schema too, as first workers would
    ctx = mp.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=reserve_in_process, args=(url, f"run-{i}", start, results))
        for i in range(CALLS)
    ]
    for p in procs:
        p.start()
    start.set()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    passed = [rid for rid in outcomes.values() if rid is not None]
    assert len(passed) == FITS
    ledger = Ledger(url)
    totals = ledger.totals(limit_usd=LIMIT)
    assert totals.reserved_usd == pytest.approx(FITS * HIGH) and totals.left_usd == pytest.approx(0)

    # Settle some at their real cost, release the others: the books balance.
    actual = [0.5, 0.75, 1.1]
    for rid, cost in zip(passed, actual, strict=False):
        assert ledger.settle(rid, cost).status is ReservationStatus.SETTLED
    for rid in passed[len(actual) :]:
        assert ledger.release(rid).status is ReservationStatus.RELEASED
    ledger.release(passed[0])  # a late hook on a settled run changes nothing
    totals = ledger.totals(limit_usd=LIMIT)
    assert totals.spent_usd == pytest.approx(sum(actual))
    assert totals.reserved_usd == 0 and totals.open_reservations == 0
    assert totals.left_usd == pytest.approx(LIMIT - sum(actual))
    assert len(ledger.entries()) == FITS


def test_a_retried_run_reuses_its_hold_and_the_per_job_maximum_is_enforced(ledger_url):
    ledger = Ledger(ledger_url)
    args = dict(
        backend="hf-jobs",
        hardware="l4x1",
        price_per_hour=0.8,
        expected_usd=1.0,
        high_usd=2.0,
        monthly_limit_usd=3.0,
        per_job_max_usd=2.5,
        needs_approval=True,
    )
    first = ledger.reserve(run_key="same", **args)
    assert ledger.reserve(run_key="same", **args).id == first.id
    assert first.status is ReservationStatus.AWAITING_APPROVAL
    with pytest.raises(BudgetExceeded, match=r"only \$1.00 is left of the \$3.00 monthly limit"):
        ledger.reserve(run_key="other", **args)
    with pytest.raises(BudgetExceeded, match=r"above the per-job maximum of \$2.50"):
        ledger.reserve(run_key="big", **{**args, "high_usd": 2.6})
    billed = ledger.release(first.id, billed_usd=0.4)
    assert billed.status is ReservationStatus.SETTLED and billed.actual_usd == pytest.approx(0.4)


def test_a_hold_that_needs_approval_notes_its_deadline(tmp_path):
    from datetime import UTC, datetime, timedelta

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    asked = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    args = dict(
        backend="hf-jobs",
        hardware="l4x1",
        price_per_hour=0.8,
        expected_usd=1.0,
        high_usd=2.0,
        monthly_limit_usd=30.0,
        per_job_max_usd=2.5,
        approval_timeout_seconds=600,
        now=asked,
    )
    waiting = ledger.reserve(run_key="waiting", needs_approval=True, **args)
    automatic = ledger.reserve(run_key="automatic", needs_approval=False, **args)
    assert ledger.get(waiting.id).approval_deadline == asked + timedelta(seconds=600)
    assert automatic.approval_deadline is None


def die_inside_a_transaction(url: str, run_key: str, holding: Connection) -> None:
    """A worker that reserved, then was killed in the middle of its next ledger write."""
    ledger = Ledger(url)
    reservation = gate(ledger, run_key)
    with ledger.engine.execution_options(ledger_write=True).begin() as conn:
        conn.execute(select(lock.c.name).where(lock.c.name == LOCK_ROW).with_for_update())
        conn.execute(
            update(entries).where(entries.c.id == reservation.id).values(note="half-written")
        )
        holding.send(reservation.id)  # a pipe of its own: a killed sender holds no shared lock
        time.sleep(600)  # killed here, holding the ledger lock


def test_workers_killed_inside_a_transaction_leave_books_that_settle_and_release(ledger_url):
    ctx = mp.get_context("fork")
    results, go = ctx.Queue(), ctx.Event()
    go.set()
    crashed = []
    for i in range(2):
        holding, child_end = ctx.Pipe(duplex=False)
        worker = ctx.Process(
            target=die_inside_a_transaction, args=(ledger_url, f"crash-{i}", child_end)
        )
        worker.start()
        assert holding.poll(120), "the worker never got the ledger lock"
        crashed.append(holding.recv())
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=60)

    # The lock died with its holder: the next gate call goes through (no waiting for a timeout).
    survivor = ctx.Process(target=reserve_in_process, args=(ledger_url, "survivor", go, results))
    survivor.start()
    run_key, survivor_id = results.get(timeout=60)
    survivor.join(timeout=60)
    assert run_key == "survivor" and survivor_id is not None

    ledger = Ledger(ledger_url)
    for reservation_id in crashed:  # committed before the crash; the killed write is gone
        reservation = ledger.get(reservation_id)
        assert reservation.is_open and reservation.note == ""
    totals = ledger.totals(limit_usd=LIMIT)
    assert totals.open_reservations == 3 and totals.reserved_usd == pytest.approx(3 * HIGH)

    # The crash hook of each run (or `lmft budget release`) closes what the dead worker held.
    assert (
        ledger.release(crashed[0], billed_usd=0.3, note="worker crashed").status
        is ReservationStatus.SETTLED
    )
    assert ledger.release(crashed[1], note="worker crashed").status is ReservationStatus.RELEASED
    ledger.settle(survivor_id, 0.9)
    totals = ledger.totals(limit_usd=LIMIT)
    assert totals.spent_usd == pytest.approx(1.2) and totals.reserved_usd == 0
    assert totals.open_reservations == 0 and totals.left_usd == pytest.approx(LIMIT - 1.2)


def test_a_ledger_url_that_cannot_be_used_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "ledger-is-a-folder").mkdir()
    with pytest.raises(LedgerUnavailable, match=r"not a SQLAlchemy database URL"):
        Ledger("db.example.com/ledger")
    with pytest.raises(LedgerUnavailable, match=r"cannot reach the database at sqlite:///"):
        Ledger(f"sqlite:///{tmp_path}/ledger-is-a-folder")


def hold(ledger: Ledger, run_key: str, *, now, hold_seconds=None, high=5.0, limit=10.0):
    return ledger.reserve(
        run_key=run_key,
        backend="hf-jobs",
        hardware="a10g-small",
        price_per_hour=1.0,
        expected_usd=high / 2,
        high_usd=high,
        monthly_limit_usd=limit,
        per_job_max_usd=limit,
        needs_approval=False,
        hold_seconds=hold_seconds,
        now=now,
    )


def test_holds_count_only_in_their_month_and_until_they_expire(tmp_path):
    from datetime import UTC, datetime, timedelta

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    november = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
    for key in ("a", "b"):  # two runs hold the whole $10 of November, and are never settled
        hold(ledger, key, now=november, hold_seconds=3600)
    with pytest.raises(BudgetExceeded, match=r"only \$0.00 is left"):
        hold(ledger, "c", now=november + timedelta(minutes=5), hold_seconds=3600)

    december = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)  # next month: untouched
    assert ledger.totals("2026-12", limit_usd=10, now=december).left_usd == 10
    assert hold(ledger, "d", now=december, hold_seconds=3600).month == "2026-12"

    expired = november + timedelta(hours=1, seconds=1)  # past the holds' expiry
    totals = ledger.totals("2026-11", limit_usd=10, now=expired)
    assert totals.reserved_usd == 0 and totals.open_reservations == 0
    assert hold(ledger, "e", now=expired, hold_seconds=3600).status is ReservationStatus.APPROVED
    assert all(h.is_expired(expired) for h in ledger.open_entries() if h.run_key in ("a", "b"))


def test_a_ledger_of_an_older_release_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # budget_entries as the previous release created it
        db.execute(
            "CREATE TABLE budget_entries (id VARCHAR(36) PRIMARY KEY, run_key VARCHAR(300) NOT NULL, "
            "flow_run_id VARCHAR(64), backend VARCHAR(32) NOT NULL, hardware VARCHAR(64) NOT NULL, "
            "price_micro_usd_per_hour BIGINT NOT NULL, expected_micro_usd BIGINT NOT NULL, "
            "high_micro_usd BIGINT NOT NULL, reserved_micro_usd BIGINT NOT NULL, "
            "actual_micro_usd BIGINT, status VARCHAR(32) NOT NULL, decision VARCHAR(32) NOT NULL, "
            "approver VARCHAR(200) NOT NULL, note TEXT NOT NULL, month VARCHAR(7) NOT NULL, "
            "created_at DATETIME NOT NULL, job_started_at DATETIME, closed_at DATETIME)"
        )
    from datetime import UTC, datetime

    ledger = Ledger(f"sqlite:///{path}")
    reservation = hold(ledger, "a", now=datetime.now(UTC), hold_seconds=60)
    released = ledger.release(reservation.id, note="test", closed_by="operator x")
    assert released.expires_at is not None and released.closed_by == "operator x"
