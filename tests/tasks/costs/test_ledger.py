"""The ledger under contention: concurrent gate calls in separate processes cannot overrun the budget."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from tasks.costs.ledger import BudgetExceeded, Ledger, ReservationStatus

HIGH = 1.25
FITS = 7
CALLS = 24
LIMIT = FITS * HIGH


def reserve_in_process(url: str, run_key: str, start, results) -> None:
    """One gate call, in its own process, released at the same time as the others."""
    ledger = Ledger(url)
    start.wait()
    try:
        reservation = ledger.reserve(
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
        results.put((run_key, reservation.id))
    except BudgetExceeded:
        results.put((run_key, None))


def test_concurrent_gate_calls_let_exactly_the_budget_through(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger(url)  # create the schema once, as the first worker would
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


def test_a_retried_run_reuses_its_hold_and_the_per_job_maximum_is_enforced(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
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
