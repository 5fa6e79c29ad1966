"""Notification automations: a failed flow run posts through the configured block.

The Prefect server evaluates the automation and calls the block; the block here is a
custom webhook pointed at a local HTTP server (a Slack webhook block posts to Slack's
host only), so the whole path, event → trigger → action → HTTP POST, runs for real.
"""

from __future__ import annotations

import time

import pytest
from prefect import flow
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from prefect.client.orchestration import get_client
from prefect.flow_runs import pause_flow_run
from pydantic import SecretStr

from deployments.notifications import RULES, ensure_notification_automations, save_slack_webhook
from tests.doubles.webhook import webhook_receiver


@pytest.fixture
def webhook():
    with webhook_receiver() as hook:
        yield hook


@flow(name="doomed")
def doomed() -> None:
    raise RuntimeError("the dataset vanished")


@flow(name="awaits-approval")
def awaits_approval() -> None:
    pause_flow_run(timeout=2)


def wait_for_post(received: list[dict], count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(received) >= count, f"the automation posted {len(received)} messages, wanted {count}"


def test_failed_run_and_approval_request_are_posted_through_the_block(
    prefect_server, webhook
) -> None:
    url, received = webhook
    CustomWebhookNotificationBlock(
        name="test", url=url, json_data={"text": "{{subject}}\n{{body}}"}
    ).save("lmft-test-hook", overwrite=True)
    automations = ensure_notification_automations("custom-webhook/lmft-test-hook")
    assert sorted(a.name for a in automations) == sorted(rule.name for rule in RULES)
    assert (
        len(ensure_notification_automations("custom-webhook/lmft-test-hook")) == 2
    )  # re-created, not doubled
    with get_client(sync_client=True) as client:
        assert all(len(client.read_automations_by_name(rule.name)) == 1 for rule in RULES)

    with pytest.raises(RuntimeError):
        doomed()
    wait_for_post(received, 1)
    text = received[0]["text"]
    assert "doomed" in text and "Failed" in text and "the dataset vanished" in text

    awaits_approval(return_state=True)  # nobody approves: the pause times out
    wait_for_post(received, 2)
    assert any(
        "waits for an approval" in post["text"] and "awaits-approval" in post["text"]
        for post in received
    )


def test_no_block_no_automations(prefect_server) -> None:
    assert ensure_notification_automations("slack-webhook/not-configured") == []


def test_slack_block_holds_the_webhook_secret(prefect_server) -> None:
    with pytest.raises(ValueError, match="not a Slack incoming-webhook URL"):
        save_slack_webhook(SecretStr("http://example.com/hook"))
    save_slack_webhook(
        SecretStr("https://hooks.slack.com/services/T0/B0/secret"), name="lmft-slack-test"
    )
    block = SlackWebhook.load("lmft-slack-test")
    assert "secret" not in repr(block) and block.url.get_secret_value().endswith("/secret")
