"""Slack notifications as Prefect automations: failed or crashed runs, and approval requests.

    SLACK_WEBHOOK_URL=https://hooks.slack.com/services/... python -m deployments.notifications

saves the webhook as the Slack Webhook block `lmft-slack` (when SLACK_WEBHOOK_URL is set)
and creates, or re-creates, two automations that post through that block:

- a flow run entered Failed or Crashed;
- a flow run paused: in this project a run pauses only to wait for a budget approval.

The Prefect server evaluates automations, so a run whose worker died is reported too, and
every flow is covered without a hook in its code. No block, no automations: nothing is sent.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import cast
from uuid import UUID

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.core import Block
from prefect.blocks.notifications import SlackWebhook
from pydantic import BaseModel, SecretStr

from blocks import load_block

SLACK_BLOCK = "slack-webhook/lmft-slack"
"""The notification block the automations post through, as `block-type-slug/name`."""


class NotificationRule(BaseModel):
    """One automation: which flow-run events trigger it and what it posts."""

    name: str
    events: list[str]
    subject: str
    body: str


RULES = [
    NotificationRule(
        name="lmft: flow run failed or crashed",
        events=["prefect.flow-run.Failed", "prefect.flow-run.Crashed"],
        subject="lm-fine-tuning: {{ flow.name }} run {{ flow_run.name }} is {{ flow_run.state.name }}",
        body=(
            "Flow run `{{ flow_run.name }}` of `{{ flow.name }}` ended {{ flow_run.state.name }}: "
            "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
        ),
    ),
    NotificationRule(
        name="lmft: approval requested",
        events=["prefect.flow-run.Paused", "prefect.flow-run.Suspended"],
        subject="lm-fine-tuning: {{ flow_run.name }} waits for approval",
        body=(
            "Flow run `{{ flow_run.name }}` of `{{ flow.name }}` waits for an approval "
            "(approve or reject it in the Prefect UI, or with the MCP adapter): {{ flow_run|ui_url }}"
        ),
    ),
]


def save_slack_webhook(url: SecretStr, *, name: str = SLACK_BLOCK.split("/")[1]) -> UUID:
    """Store a Slack incoming-webhook URL as a Slack Webhook block; return its id."""
    if not url.get_secret_value().startswith(
        ("https://hooks.slack.com/", "https://hooks.slack-gov.com/")
    ):
        raise ValueError(
            "SLACK_WEBHOOK_URL: not a Slack incoming-webhook URL (https://hooks.slack.com/services/...)"
        )
    # Prefect's async_dispatch types save/create/read as "value or coroutine"; called from sync code they return the value.
    return cast(UUID, SlackWebhook(url=url).save(name, overwrite=True))


def ensure_notification_automations(block: str = SLACK_BLOCK) -> list[Automation]:
    """(Re)create the notification automations posting through `block`; none when it is not configured."""
    try:
        notifier = load_block(Block, block)
    except ValueError:
        return []
    created: list[Automation] = []
    for rule in RULES:
        _delete_automations_named(rule.name)
        automation = Automation(
            name=rule.name,
            description=f"Posts to the {block} notification block.",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                expect=set(rule.events),
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                SendNotification(
                    block_document_id=notifier._block_document_id,
                    subject=rule.subject,
                    body=rule.body,
                )
            ],
        )
        created.append(cast(Automation, automation.create()))
    return created


def _delete_automations_named(name: str) -> None:
    while True:
        try:
            cast(Automation, Automation.read(name=name)).delete()
        except ValueError:  # none left with this name
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.notifications", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--block", default=SLACK_BLOCK, help="Notification block, as block-type-slug/name."
    )
    args = parser.parse_args(argv)
    if url := os.environ.get("SLACK_WEBHOOK_URL"):
        try:
            save_slack_webhook(SecretStr(url), name=args.block.split("/", 1)[1])
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    automations = ensure_notification_automations(args.block)
    if not automations:
        print(
            f"no notification block {args.block!r}: set SLACK_WEBHOOK_URL to create it; nothing will be sent"
        )
        return 1
    for automation in automations:
        print(f"automation {automation.name!r} ({automation.id}) posts to {args.block}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
