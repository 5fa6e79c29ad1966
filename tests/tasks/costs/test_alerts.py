"""Spend alerts: a crossing sends one notification (to a local webhook receiver, through a real
notification block), not one per check; the state that remembers it is in the ledger's database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from blocks.budget import BudgetPolicy
from flows.spend_alerts import spend_alerts
from tasks.costs.alerts import AlertKind, check_spend, send_spend_alerts
from tasks.costs.budget import LEDGER_URL_ENV
from tasks.costs.ledger import Ledger
from tests.doubles.webhook import webhook_receiver

BLOCK = "custom-webhook/lmft-spend-test"


@pytest.fixture
def webhook(prefect_server):
    """A local receiver behind a custom-webhook notification block; yields the posts."""
    with webhook_receiver() as (url, received):
        CustomWebhookNotificationBlock(
            name="spend",
            url=url,
            json_data={"text": "{{subject}}\n{{body}}"},
            allow_private_urls=True,
        ).save(BLOCK.split("/")[1], overwrite=True)
        yield received


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server) -> Ledger:
    """A fresh ledger, and a saved budget of $100 a month."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    monkeypatch.setenv(LEDGER_URL_ENV, url)
    BudgetPolicy(monthly_limit_usd=100, approval_threshold_usd=50, per_job_max_usd=50).save(
        "default", overwrite=True
    )
    return Ledger(url)


def paid_job(
    ledger: Ledger,
    key: str,
    *,
    at: datetime,
    actual: float | None,
    high: float = 45.0,
    price: float = 10.0,
) -> None:
    """A job that passed the gate at `at`, started then and, with `actual`, settled."""
    reservation = ledger.reserve(
        run_key=key,
        backend="hf-jobs",
        hardware="a10g-small",
        price_per_hour=price,
        expected_usd=high * 0.8,
        high_usd=high,
        monthly_limit_usd=100,
        per_job_max_usd=50,
        needs_approval=False,
        now=at,
    )
    ledger.mark_started(reservation.id, at)
    if actual is not None:
        ledger.settle(reservation.id, actual)


def check(now: datetime, **thresholds) -> int:
    """One scheduled check at `now`: evaluate, record, send what is due; the number sent."""
    return send_spend_alerts.fn(check_spend.fn(now=now, **thresholds), BLOCK)


def test_a_month_crossing_its_projection_notifies_once(ledger: Ledger, webhook: list[dict]) -> None:
    march = datetime(2026, 3, 1, tzinfo=UTC)
    paid_job(ledger, "a", at=march + timedelta(days=1), actual=20)
    day_10 = march + timedelta(days=9)
    assert check(day_10) == 0  # $20 in 9 days projects to $68.89: under $100

    paid_job(ledger, "b", at=march + timedelta(days=8), actual=20)
    assert check(day_10 + timedelta(minutes=1)) == 1  # $40 in 9 days projects to $137.78
    for hours in (1, 2, 24):  # later checks, the month still over: quiet
        assert check(day_10 + timedelta(hours=hours)) == 0
    [post] = webhook
    assert "2026-03 spend projects to $13" in post["text"] and "$100.00" in post["text"]


def test_projection_that_falls_back_is_rearmed(ledger: Ledger, webhook: list[dict]) -> None:
    march = datetime(2026, 3, 1, tzinfo=UTC)
    paid_job(ledger, "a", at=march + timedelta(days=1), actual=40)
    assert check(march + timedelta(days=9)) == 1
    assert check(march + timedelta(days=20)) == 0  # $40 in 20 days: $62, under again
    paid_job(ledger, "b", at=march + timedelta(days=20), actual=40)
    assert check(march + timedelta(days=20, hours=1)) == 1  # a second crossing
    assert len(webhook) == 2


def test_a_job_past_its_high_estimate_notifies_once(ledger: Ledger, webhook: list[dict]) -> None:
    now = datetime(2026, 3, 5, 12, tzinfo=UTC)
    paid_job(ledger, "slow", at=now - timedelta(hours=2), actual=None, high=1.5, price=1)
    assert check(now - timedelta(hours=1, minutes=1)) == 0  # $0.98 so far, under $1.50
    assert check(now) == 1  # $2 so far while still running
    assert check(now + timedelta(minutes=30)) == 0
    [post] = webhook
    assert "run slow" in post["text"] and "over its $1.50 high estimate" in post["text"]
    assert "cancel it" in post["text"]


def test_too_many_jobs_in_an_hour_notifies_once(ledger: Ledger, webhook: list[dict]) -> None:
    now = datetime(2026, 3, 5, 12, tzinfo=UTC)
    for minute in (5, 20, 40):
        paid_job(ledger, f"loop-{minute}", at=now - timedelta(minutes=60 - minute), actual=0.5)
    assert check(now, max_jobs_per_hour=3) == 0
    paid_job(ledger, "loop-55", at=now - timedelta(minutes=5), actual=0.5)
    assert check(now, max_jobs_per_hour=3) == 1
    assert check(now + timedelta(minutes=1), max_jobs_per_hour=3) == 0
    assert "4 jobs started in the last hour (limit 3)" in webhook[0]["text"]


def test_the_scheduled_flow_sends_one_notification_over_several_runs(
    ledger: Ledger, webhook: list[dict]
) -> None:
    BudgetPolicy(monthly_limit_usd=1_000_000, approval_threshold_usd=50, per_job_max_usd=50).save(
        "default", overwrite=True
    )  # today's date must not make the month project over
    now = datetime.now(UTC)
    paid_job(ledger, "runaway", at=now - timedelta(hours=3), actual=None, high=5, price=10)
    for _ in range(3):
        alerts = spend_alerts(max_jobs_per_hour=None, notify_block=BLOCK)
        assert [a.kind for a in alerts] in ([AlertKind.JOB_OVER_ESTIMATE], [])
    assert len(webhook) == 1 and "run runaway" in webhook[0]["text"]


def test_a_notification_that_fails_stays_due(ledger: Ledger, webhook: list[dict]) -> None:
    now = datetime(2026, 3, 5, 12, tzinfo=UTC)
    paid_job(ledger, "slow", at=now - timedelta(hours=3), actual=None, high=1, price=1)
    with pytest.raises(RuntimeError, match="no notification block"):
        send_spend_alerts.fn(check_spend.fn(now=now), "custom-webhook/not-saved")
    assert check(now + timedelta(minutes=5)) == 1  # still due: sent now, once
    assert len(webhook) == 1
