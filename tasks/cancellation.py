"""Cancellation of a flow run that runs in the process that started it (`lmft run`, a script).

Prefect cancels a run in two steps: whoever asks (the UI, `lmft cancel`) sets it CANCELLING;
then the runner or worker that started the run's process tells the engine inside it that the
coming SIGTERM means "cancel" (an intent sent over Prefect's attempt-control channel) and
sends the signal. The engine then runs the flow's `on_cancellation` hooks and ends the run
CANCELLED. A run started in-process has no runner, so nobody takes the second step and the
run stays CANCELLING forever.

`watch_for_cancellation` (an `on_running` flow hook) takes the runner's place for such a run:
a thread polls the run's state and, once it is CANCELLING, commits the same "cancel" intent
with Prefect's own helper and signals this process, so the engine's normal path runs (hooks,
then CANCELLED). Under a runner or worker (which sets
`PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS=false` in the run's process) it does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0
MAX_READ_FAILURES = 30  # the API gone for a minute: the run's process is going away too


def _engine_owns_cancellation() -> bool:
    # The switch Prefect's runner sets in the processes it supervises (flow_engine.py reads it).
    return (
        os.environ.get("PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS", "true").lower() == "true"
    )


def cancel_this_process_run() -> bool:
    """Do what a runner does to cancel the run executing here: commit the "cancel" intent, then
    SIGTERM this process. False when Prefect's SIGTERM bridge is not armed (a flow that is not
    running in the main thread), where a signal would kill the process instead."""
    # The runner's side of Prefect's attempt-control protocol, in-process; Prefect offers no
    # public call for it (prefect/_internal/control_listener.py, utilities/engine).
    from prefect._internal import control_listener
    from prefect.utilities.engine import commit_control_intent_and_ack

    return commit_control_intent_and_ack(
        commit_intent=lambda: control_listener._set_intent("cancel"),
        clear_intent=control_listener.clear_intent,
        send_ack=lambda: None,
        trigger_cancel=lambda: os.kill(os.getpid(), signal.SIGTERM),
    )


def watch_for_cancellation(flow, flow_run, state) -> None:
    """Flow-run hook (`on_running`): end this in-process run CANCELLED once someone cancels it."""
    if not _engine_owns_cancellation():
        return
    threading.Thread(
        target=_watch, args=(flow_run.id,), daemon=True, name=f"cancel-watch-{flow_run.id}"
    ).start()


def _watch(flow_run_id) -> None:
    from prefect.client.orchestration import get_client

    failures = 0
    with get_client(sync_client=True) as client:
        while failures < MAX_READ_FAILURES:
            time.sleep(POLL_SECONDS)
            try:
                run = client.read_flow_run(flow_run_id)
                failures = 0
            except Exception as exc:  # the API is briefly away: look again at the next tick
                failures += 1
                logger.debug("cancellation watch of %s: %s", flow_run_id, exc)
                continue
            if run.state is None or run.state.is_final():
                return
            if run.state.is_cancelling():
                if not cancel_this_process_run():
                    logger.error(
                        "flow run %s was cancelled, but it does not run in this process's main "
                        "thread, so it cannot be stopped here; its jobs are cancelled by "
                        "`lmft cancel`",
                        flow_run_id,
                    )
                return
