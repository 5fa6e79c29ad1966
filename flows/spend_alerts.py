"""The `spend_alerts` flow: notify when spending crosses a line, once per crossing."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.costs.alerts import DEFAULT_NOTIFY_BLOCK, SpendAlert, check_spend, send_spend_alerts


@flow(name="spend_alerts", log_prints=True)
def spend_alerts(
    max_jobs_per_hour: Annotated[
        int | None, Field(ge=1, description="Alert when more jobs started in the last hour.")
    ] = 5,
    projection_ratio: Annotated[
        float,
        Field(
            gt=0, le=10, description="Alert when the month projects above this share of the limit."
        ),
    ] = 1.0,
    notify_block: Annotated[
        str, Field(description="Notification block, as block-type-slug/name.")
    ] = DEFAULT_NOTIFY_BLOCK,
) -> list[SpendAlert]:
    """Check the month's projection, each job against its high estimate, and jobs per hour."""
    alerts = check_spend(max_jobs_per_hour=max_jobs_per_hour, projection_ratio=projection_ratio)
    sent = send_spend_alerts(alerts, notify_block)
    print(f"{sent} alert(s) sent" + "".join(f"\n- {a.subject}" for a in alerts))
    return alerts


if __name__ == "__main__":
    spend_alerts()
