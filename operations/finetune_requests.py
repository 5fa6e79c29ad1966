"""Ask for a fine-tune with a Prefect event; the `finetune` deployment's trigger starts the run.

    lmft request-finetune --dataset trl-lib/Capybara --model Qwen/Qwen2.5-0.5B-Instruct --backend hf-jobs

emits `lmft.finetune.requested` with the checked `FineTuneRequest` in its payload. The trigger
on the `finetune` deployment in `prefect.yaml` matches it and runs the deployment with
`request` and `idempotency_key` from the payload. This is the Prefect-native counterpart of
GitHub's `repository_dispatch` `trigger_training`: any process that can reach the Prefect API
(another flow, a webhook, a script) can ask, without a GitHub token.

The key labels the training job: an event sent twice with the same key starts a second flow
run, but that run finds the job the first one submitted (`list_jobs(labels=…)`) and the budget
reservation of the same key, so it never pays twice.
"""

from __future__ import annotations

import uuid

from prefect.events import Event, emit_event
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL

from schemas.request import FineTuneRequest

FINETUNE_REQUESTED = "lmft.finetune.requested"
RESOURCE_PREFIX = "lmft.finetune-request."
"""Resource id of a request: the prefix and its idempotency key."""
SEND_TIMEOUT_SECONDS = 30


class RequestNotSent(RuntimeError):
    """The event could not be sent; the message says what to set."""


def emit_finetune_request(
    request: FineTuneRequest, *, idempotency_key: str | None = None, source: str = "lmft"
) -> Event:
    """Emit `lmft.finetune.requested` for `request` and wait until it is sent."""
    if not PREFECT_API_URL.value():
        raise RequestNotSent(
            "PREFECT_API_URL is not set: the event must reach the Prefect server whose `finetune` "
            "deployment has the trigger (e.g. `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`)"
        )
    key = idempotency_key or uuid.uuid4().hex
    event = emit_event(
        event=FINETUNE_REQUESTED,
        resource={
            "prefect.resource.id": f"{RESOURCE_PREFIX}{key}",
            "prefect.resource.name": request.output_name or key,
            "lmft.source": source,
        },
        payload={"request": request.model_dump(mode="json"), "idempotency_key": key},
    )
    if event is None:
        raise RequestNotSent(
            f"Prefect did not emit the event (events are off, or the client for {PREFECT_API_URL.value()} "
            "cannot send them); see the log above"
        )
    EventsWorker.drain_all(timeout=SEND_TIMEOUT_SECONDS)
    return event
