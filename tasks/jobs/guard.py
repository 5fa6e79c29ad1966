"""The run guard: ends a flow run whose process vanished, as Prefect's runner does for its own runs.

When the process executing a served or worker flow run dies, Prefect's runner marks the run
Crashed and runs its `on_crashed` hooks. A run executed in-process (`lmft run`, a script calling
`finetune(...)`) has no runner: killed with `kill -9`, it would stay Running for ever, its
Hugging Face job would keep billing and its budget hold would keep blocking the budget. So the
`finetune` flow starts this guard first: a small process in its own session that watches the
run's process (by pid and start time, so a reused pid is not mistaken for it) and the run's
state. When the run reaches a final state the guard exits; when the process is gone first, the
guard marks the run Crashed and runs the flow's crash hooks itself: cancel the run's jobs on
every backend, release its budget hold.

    python -m tasks.jobs.guard --flow-run-id ID --owner-pid PID --owner-start TICKS

Local training jobs also die with their owner on their own (`PR_SET_PDEATHSIG`, see
`tasks.jobs.local`), so they stop within a second even if the guard itself was killed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from tasks.paths import lmft_home

OWNER_POLL_SECONDS = 0.5
STATE_POLL_SECONDS = 5.0
CANCEL_GRACE_SECONDS = 20.0
"""How long a run killed to cancel it may take to record Cancelled before the guard does."""
PROJECT_ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger("lmft.guard")


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, /proc/PID/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie has ended
        return None
    return int(fields[19])


def owner_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether the process `pid` that started at `start_ticks` still runs (not a reused pid)."""
    ticks = process_start_ticks(pid)
    return ticks is not None and (start_ticks is None or ticks == start_ticks)


def guards_dir() -> Path:
    path = lmft_home() / "guards"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ephemeral_server_pid() -> int | None:
    """The pid of the temporary Prefect server this process started (no PREFECT_API_URL), if any.

    Prefect stops it at exit, which a killed process never reaches: the guard stops it then.
    """
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        if server.server_process is not None and server.server_process.poll() is None:
            return server.server_process.pid
    return None


def start_run_guard(flow_run_id: str, api_url: str | None, server_pid: int | None = None) -> int:
    """Start the guard of `flow_run_id`, watching this process; return the guard's pid.

    `api_url` is the Prefect API the run reports to (the guard reads and sets the run's state
    there); its log is `$LMFT_HOME/guards/<flow_run_id>.log`.
    """
    owner = os.getpid()
    env = dict(os.environ)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    command = [
        sys.executable,
        "-m",
        "tasks.jobs.guard",
        "--flow-run-id",
        flow_run_id,
        "--owner-pid",
        str(owner),
        "--owner-start",
        str(process_start_ticks(owner)),
    ]
    if server_pid is not None:
        command += [
            "--server-pid",
            str(server_pid),
            "--server-start",
            str(process_start_ticks(server_pid)),
        ]
    with open(guards_dir() / f"{flow_run_id}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=PROJECT_ROOT,
            start_new_session=True,  # Ctrl-C and kill of the owner's group do not reach it
        )
    # Reap it when it exits, so a long-lived owner collects no zombies.
    threading.Thread(target=process.wait, daemon=True).start()
    return process.pid


def guard_this_flow_run() -> int | None:
    """Start the guard of the current flow run (called first in the flow body); its pid, or None outside a run."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    pid = start_run_guard(str(flow_run.id), api_url, ephemeral_server_pid())
    get_run_logger().info(
        "run guard %s watches this process (pid %s): if it dies, the run is marked Crashed, "
        "its jobs cancelled and its budget hold released",
        pid,
        os.getpid(),
    )
    return pid


def _state_of(client, flow_run_id):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_flow_run(flow_run_id).state
    except ObjectNotFound:
        return None


def end_vanished_run(flow_run_id: str, owner_pid: int) -> str:
    """The run's process is gone: mark the run Crashed unless it ended, then run its crash hooks.

    Returns what was done, for the guard's log.
    """
    from uuid import UUID

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Crashed, State

    run_id = UUID(flow_run_id)
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
    except httpx.TransportError as exc:
        # An ephemeral API ends with its owner. The process is gone, so the run cannot go on:
        # the hooks are safe whatever its state (ended jobs and settled holds are left as they are).
        stand_in = SimpleNamespace(id=run_id)
        gone: State = Crashed(message=f"the process running this flow run (pid {owner_pid}) ended")
        _run_hooks(stand_in, gone)
        return f"Prefect API unreachable ({exc}); ran the crash hooks of {flow_run_id} anyway"
    with get_client(sync_client=True) as client:
        state = run.state
        if state is not None and state.is_completed():
            return f"flow run {flow_run_id} completed; nothing to do"
        if state is not None and (state.is_paused() or state.is_scheduled() or state.is_pending()):
            # Suspended at a wait (its process exits on purpose and a worker resumes it later),
            # or handed back to the queue (a worker's keep-alive): another process goes on with
            # it, with a guard of its own. Its jobs and its hold belong to that process.
            return (
                f"flow run {flow_run_id} is {state.name}: another process resumes it; nothing to do"
            )
        if state is not None and state.is_cancelling():
            # Killed on purpose to cancel it (a runner stops the process, then records
            # Cancelled): give the runner time to finish, else record the cancellation ourselves.
            state = _await_final(client, run_id, seconds=CANCEL_GRACE_SECONDS) or state
            if not state.is_final():
                client.set_flow_run_state(
                    run_id,
                    Cancelled(message=f"cancelled; its process (pid {owner_pid}) has ended"),
                    force=True,
                )
            run = client.read_flow_run(run_id)
            state = run.state
        if state is None or not state.is_final():
            crashed: State = Crashed(
                message=(
                    f"the process running this flow run (pid {owner_pid}) ended without reporting "
                    "a final state (killed?); the run guard cancelled its training jobs and released "
                    "its budget hold"
                )
            )
            client.set_flow_run_state(run_id, crashed, force=True)
            run = client.read_flow_run(run_id)
            state = run.state
    _run_hooks(run, state)
    return f"flow run {flow_run_id} is {state.name if state else 'unknown'}; its jobs were cancelled and its holds released"


def _await_final(client, run_id, *, seconds: float):
    """The run's state once final, or None after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state is not None and state.is_final():
            return state
        time.sleep(0.5)
    return None


def _run_hooks(run, state) -> None:
    """The hooks the flow declares for a crash; both are idempotent, each runs whatever the other does."""
    from tasks.costs.budget import release_budget_of_flow_run
    from tasks.jobs.hooks import cancel_job_of_flow_run

    for hook in (cancel_job_of_flow_run, release_budget_of_flow_run):
        try:
            hook(None, run, state)
        except Exception:
            logger.exception("hook %s failed for flow run %s", hook.__name__, run.id)


def watch(flow_run_id: str, owner_pid: int, owner_start: int | None) -> str:
    """Wait until the run ends (return) or its process vanishes (end the run, return)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    run_id = UUID(flow_run_id)
    next_state_poll = 0.0
    while owner_alive(owner_pid, owner_start):
        if time.monotonic() >= next_state_poll:
            next_state_poll = time.monotonic() + STATE_POLL_SECONDS
            try:
                with get_client(sync_client=True) as client:
                    state = _state_of(client, run_id)
            except Exception as exc:  # the API may be restarting: keep watching the process
                logger.warning("could not read flow run %s: %s", flow_run_id, exc)
                state = None
            if state is not None and state.is_final():
                return f"flow run {flow_run_id} ended {state.name} with its process alive"
        time.sleep(OWNER_POLL_SECONDS)
    return end_vanished_run(flow_run_id, owner_pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.jobs.guard", description=__doc__)
    parser.add_argument("--flow-run-id", required=True)
    parser.add_argument("--owner-pid", type=int, required=True)
    parser.add_argument("--owner-start", default="None")
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--server-start", default="None")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per state poll otherwise
    owner_start = _ticks(args.owner_start)
    logger.info("guarding flow run %s (process %s)", args.flow_run_id, args.owner_pid)
    logger.info(watch(args.flow_run_id, args.owner_pid, owner_start))
    vanished = not owner_alive(args.owner_pid, owner_start)
    if vanished and args.server_pid and owner_alive(args.server_pid, _ticks(args.server_start)):
        os.kill(args.server_pid, signal.SIGTERM)  # the owner's temporary server outlived it
        logger.info(
            "stopped the temporary Prefect server %s of the vanished process", args.server_pid
        )
    return 0


def _ticks(value: str) -> int | None:
    return None if value == "None" else int(value)


if __name__ == "__main__":
    sys.exit(main())
