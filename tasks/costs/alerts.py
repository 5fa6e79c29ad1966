"""Spend alerts: the month projected over its budget, a job past its high estimate, too many
jobs started in an hour.

Each condition has a key (`month-projection:2026-12`, `job-over-estimate:<reservation id>`,
`jobs-per-hour`). A notification is due when a condition turns true — a crossing — not at
every check while it stays true; a condition that turns false again is re-armed. Which
conditions are active, and whether their notification went out, is kept in the ledger's own
database (table `spend_alerts`, written under the ledger lock), so a restarted worker or two
checks at once never notify twice, and a notification that failed to send is retried at the
next check.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import Enum

from prefect import task
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from pydantic import BaseModel, Field
from sqlalchemy import Boolean, Column, DateTime, MetaData, String, Table, Text, select, update

from blocks import load_block
from blocks.budget import BUDGET_BLOCK_NAME, BudgetPolicyMissing, load_budget_policy
from schemas.costs import cost_so_far
from tasks.costs.budget import ledger_for
from tasks.costs.ledger import LOCK_ROW, Ledger, ReservationStatus, current_month, lock

DEFAULT_NOTIFY_BLOCK = "slack-webhook/lmft-slack"
"""The Slack Webhook block `python -m deployments.notifications` saves."""

metadata = MetaData()
alert_states = Table(
    "spend_alerts",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("body", Text, nullable=False, default=""),
    Column("notified_at", DateTime(timezone=True)),
)


class AlertKind(str, Enum):
    """What an alert is about."""

    MONTH_PROJECTION = "month-projection"
    JOB_OVER_ESTIMATE = "job-over-estimate"
    JOBS_PER_HOUR = "jobs-per-hour"


class SpendAlert(BaseModel):
    """One condition that holds now, and the message that says so."""

    kind: AlertKind
    key: str
    subject: str
    body: str


class SpendThresholds(BaseModel):
    """When to alert."""

    monthly_limit_usd: float | None = Field(
        default=None,
        gt=0,
        description="The BudgetPolicy's monthly limit; no limit, no projection alert.",
    )
    projection_ratio: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="Alert when the projection passes this share of the limit.",
    )
    projection_after_hours: float = Field(
        default=24,
        ge=0,
        description="No projection in a month's first hours (one job would project huge).",
    )
    max_jobs_per_hour: int | None = Field(
        default=5, ge=1, description="Alert when more jobs started in the last hour; None: off."
    )


def _month_bounds(now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def evaluate_spend(
    ledger: Ledger, thresholds: SpendThresholds, now: datetime | None = None
) -> list[SpendAlert]:
    """The alert conditions that hold at `now`, read from the ledger."""
    now = now or datetime.now(UTC)
    month = current_month(now)
    entries = ledger.entries(month=month)
    alerts: list[SpendAlert] = []

    running = [(e, e.job_started_at) for e in entries if e.is_open and e.job_started_at is not None]
    spent = sum(e.actual_usd or 0.0 for e in entries if e.status is ReservationStatus.SETTLED)
    spent += sum(cost_so_far(e.price_per_hour, started, now) for e, started in running)

    start, end = _month_bounds(now)
    elapsed = (now - start).total_seconds()
    limit = thresholds.monthly_limit_usd
    if limit and elapsed >= thresholds.projection_after_hours * 3600 and elapsed > 0:
        projected = spent * (end - start).total_seconds() / elapsed
        if projected > limit * thresholds.projection_ratio:
            alerts.append(
                SpendAlert(
                    kind=AlertKind.MONTH_PROJECTION,
                    key=f"{AlertKind.MONTH_PROJECTION.value}:{month}",
                    subject=f"lm-fine-tuning: {month} spend projects to ${projected:.2f}, over the ${limit:.2f} budget",
                    body=(
                        f"Spent ${spent:.2f} in {elapsed / 86400:.1f} days of {month}; at this rate the month ends at "
                        f"${projected:.2f}, above {thresholds.projection_ratio:.0%} of the ${limit:.2f} monthly limit. "
                        "See `lmft costs` or the cost_report flow."
                    ),
                )
            )

    for entry in entries:
        if entry.high_usd <= 0:
            continue
        if entry.status is ReservationStatus.SETTLED and entry.actual_usd is not None:
            cost = entry.actual_usd
        elif entry.is_open and entry.job_started_at is not None:
            cost = cost_so_far(entry.price_per_hour, entry.job_started_at, now)
        else:
            continue
        if cost > entry.high_usd:
            alerts.append(
                SpendAlert(
                    kind=AlertKind.JOB_OVER_ESTIMATE,
                    key=f"{AlertKind.JOB_OVER_ESTIMATE.value}:{entry.id}",
                    subject=f"lm-fine-tuning: run {entry.run_key} cost ${cost:.2f}, over its ${entry.high_usd:.2f} high estimate",
                    body=(
                        f"Run {entry.run_key} (flow run {entry.flow_run_id or '?'}) on {entry.hardware} at "
                        f"${entry.price_per_hour:.2f}/h has cost ${cost:.2f}, above the high estimate "
                        f"${entry.high_usd:.2f} (expected ${entry.expected_usd:.2f}). "
                        + (
                            "It is still running: cancel it with `lmft cancel` if it is stuck."
                            if entry.is_open
                            else ""
                        )
                    ).strip(),
                )
            )

    if thresholds.max_jobs_per_hour is not None:
        hour_ago = now - timedelta(hours=1)
        started = [
            e for e in ledger.entries() if e.job_started_at and hour_ago < e.job_started_at <= now
        ]
        if len(started) > thresholds.max_jobs_per_hour:
            alerts.append(
                SpendAlert(
                    kind=AlertKind.JOBS_PER_HOUR,
                    key=AlertKind.JOBS_PER_HOUR.value,
                    subject=f"lm-fine-tuning: {len(started)} jobs started in the last hour (limit {thresholds.max_jobs_per_hour})",
                    body=(
                        f"{len(started)} training jobs started between {hour_ago:%H:%M} and {now:%H:%M} UTC: "
                        + ", ".join(e.run_key for e in started[:10])
                        + ". Check that no loop is starting runs (`lmft costs`, the Prefect UI)."
                    ),
                )
            )
    return alerts


def record_crossings(
    ledger: Ledger, holding: list[SpendAlert], now: datetime | None = None
) -> list[SpendAlert]:
    """Mark `holding` active, re-arm the rest; return the alerts whose notification is due."""
    now = now or datetime.now(UTC)
    writer = ledger.engine.execution_options(ledger_write=True)
    metadata.create_all(ledger.engine)
    holding_keys = {alert.key for alert in holding}
    with writer.begin() as conn:
        conn.execute(select(lock.c.name).where(lock.c.name == LOCK_ROW).with_for_update())
        rows = {row.key: row for row in conn.execute(select(alert_states))}
        for key, row in rows.items():
            if (
                row.active and key not in holding_keys
            ):  # fell back below: the next crossing notifies again
                conn.execute(
                    update(alert_states).where(alert_states.c.key == key).values(active=False)
                )
        for alert in holding:
            known = rows.get(alert.key)
            values = dict(
                kind=alert.kind.value,
                active=True,
                since=now,
                subject=alert.subject,
                body=alert.body,
                notified_at=None,
            )
            if known is None:
                conn.execute(alert_states.insert().values(key=alert.key, **values))
            elif not known.active:
                conn.execute(
                    update(alert_states).where(alert_states.c.key == alert.key).values(**values)
                )
        due = conn.execute(
            select(alert_states).where(
                alert_states.c.active.is_(True), alert_states.c.notified_at.is_(None)
            )
        ).all()
    return [
        SpendAlert(kind=row.kind, key=row.key, subject=row.subject, body=row.body) for row in due
    ]


def mark_notified(ledger: Ledger, alert: SpendAlert, now: datetime | None = None) -> None:
    """The notification of `alert` went out; the next checks stay quiet until it re-arms."""
    writer = ledger.engine.execution_options(ledger_write=True)
    with writer.begin() as conn:
        conn.execute(
            update(alert_states)
            .where(alert_states.c.key == alert.key)
            .values(notified_at=now or datetime.now(UTC))
        )


def load_thresholds(
    *, max_jobs_per_hour: int | None, projection_ratio: float, policy_name: str = BUDGET_BLOCK_NAME
) -> tuple[SpendThresholds, Ledger]:
    """The thresholds (the month's limit from the saved BudgetPolicy) and the ledger it names."""
    try:
        policy = load_budget_policy(policy_name)
    except BudgetPolicyMissing:
        policy = None  # no limit: only the per-job and per-hour alerts apply
    thresholds = SpendThresholds(
        monthly_limit_usd=policy.monthly_limit_usd if policy else None,
        projection_ratio=projection_ratio,
        max_jobs_per_hour=max_jobs_per_hour,
    )
    return thresholds, ledger_for(policy)


@task(name="check-spend", timeout_seconds=300)  # the ledger and the Jobs API
def check_spend(
    *,
    max_jobs_per_hour: int | None = 5,
    projection_ratio: float = 1.0,
    now: datetime | None = None,
) -> list[SpendAlert]:
    """Evaluate the alert conditions and record the crossings; return the alerts due."""
    thresholds, ledger = load_thresholds(
        max_jobs_per_hour=max_jobs_per_hour, projection_ratio=projection_ratio
    )
    return record_crossings(ledger, evaluate_spend(ledger, thresholds, now), now)


@task(name="send-spend-alerts", retries=2, retry_delay_seconds=[10, 60], timeout_seconds=120)
def send_spend_alerts(alerts: list[SpendAlert], block: str = DEFAULT_NOTIFY_BLOCK) -> int:
    """Post each alert through the notification block; each one sent is marked, never sent twice."""
    if not alerts:
        return 0
    try:
        notifier = load_block(Block, block)
    except ValueError:
        raise RuntimeError(
            f"no notification block {block!r}: save one with `SLACK_WEBHOOK_URL=... python -m "
            "deployments.notifications`; the alerts stay due until one is sent"
        ) from None
    if not isinstance(notifier, NotificationBlock):
        raise RuntimeError(
            f"block {block!r} is a {type(notifier).__name__}, not a notification block "
            "(e.g. a Slack Webhook)"
        )
    _, ledger = load_thresholds(max_jobs_per_hour=None, projection_ratio=1.0)
    for alert in alerts:
        # notify is sync_compatible: called from sync code it sends and returns None.
        notifier.notify(body=alert.body, subject=alert.subject)  # type: ignore[unused-coroutine]
        mark_notified(ledger, alert)
    return len(alerts)
