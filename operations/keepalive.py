"""Keep a Prefect worker alive on GitHub Actions runners, which are stopped after 6 hours.

    python -m operations.keepalive --pool github-actions --runtime-seconds 19800 \\
        --successor-workflow prefect-worker.yml --successor-input slot=green

Timeline, counted from the start of this process:

1. Start `prefect worker start --pool POOL` and restart it if it dies.
2. At `runtime - drain_seconds` (the drain): dispatch the successor workflow run through
   GitHub's REST API (so a worker is online again soon), and freeze the worker (SIGSTOP):
   it takes no new flow runs, while the flow runs it started, each its own process that
   reports to the Prefect API itself, carry on. (An interrupted `prefect worker` would stop
   taking runs too, but it also kills the runs it started, so it cannot drain.)
3. When this worker's runs have all finished, stop it. At `runtime` (the hand-over), runs
   still going are long ones (a training job being monitored): freeze each run's process,
   stop its local training job with a checkpoint (SIGTERM), put the run back to
   `AwaitingRetry` (Scheduled) and kill the process. The next worker picks the run up: the
   task cache skips the finished steps, and training resumes from the job's checkpoint (a
   Hugging Face job, which runs elsewhere, is re-attached through its idempotency key).

The successor token (`GITHUB_TOKEN`, needs `actions: write`) is removed from the worker's
environment, so flow runs never see it.

The timeline itself is `run_until_hand_over`, which runs any `KeptAlive` service: the worker
here, and the MCP server behind its tunnel (`operations.mcp_keepalive`), which also waits for
its successor to answer before it drains.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import AwaitingRetry
from pydantic import BaseModel, Field, SecretStr, model_validator

from operations.github_workflows import WorkflowDispatchFailed, WorkflowTarget, dispatch_workflow
from operations.health import check_prefect_health
from tasks.jobs.local import checkpoint_and_stop_local_job, find_local_jobs, local_job_status

logger = logging.getLogger("lmft.keepalive")

GITHUB_JOB_LIMIT_SECONDS = 6 * 3600
WORKER_LABEL = "prefect.worker.name"
SECRET_ENV = ("GITHUB_TOKEN", "GH_TOKEN", "LMFT_DISPATCH_TOKEN")
"""Environment variables the worker (and so every flow run) must not inherit."""


class HandoverSettings(BaseModel):
    """The timeline every kept-alive service follows: when to drain, when to hand over, who succeeds it."""

    runtime_seconds: float = Field(
        default=GITHUB_JOB_LIMIT_SECONDS - 30 * 60,
        gt=0,
        description="Hand-over time, from start; keep it below the job's timeout with room for the steps after.",
    )
    drain_seconds: float = Field(
        default=45 * 60, ge=0, description="Stop taking new work this long before the hand-over."
    )
    poll_seconds: float = Field(default=5.0, gt=0)
    successor: WorkflowTarget | None = None
    successor_token: SecretStr | None = None
    max_restarts: int = Field(default=5, ge=0, description="Restarts of a crashed service.")

    @model_validator(mode="after")
    def _check_times(self) -> HandoverSettings:
        if self.drain_seconds >= self.runtime_seconds:
            raise ValueError(
                f"drain_seconds ({self.drain_seconds:g}) must be shorter than runtime_seconds ({self.runtime_seconds:g})"
            )
        if self.successor is not None and self.successor_token is None:
            raise ValueError(
                "successor_token: a successor workflow is set but no token to dispatch it (GITHUB_TOKEN)"
            )
        return self


class KeepaliveSettings(HandoverSettings):
    """The Prefect worker's settings: which pool to serve, under which name."""

    pool: str = Field(default="github-actions", min_length=1)
    worker_name: str = Field(default_factory=lambda: f"gha-{socket.gethostname()}-{os.getpid()}")
    limit: int | None = Field(default=None, ge=1, description="Flow runs this worker runs at once.")
    skip_if_online: bool = Field(
        default=False,
        description="Start no worker when one is already online for the pool (scheduled backstop runs).",
    )


class KeepaliveReport(BaseModel):
    """What the keep-alive did before it ended."""

    worker_name: str = Field(description="The kept-alive worker (or MCP server instance).")
    worker_starts: int
    successor_dispatched: bool
    dispatch_error: str | None = None
    successor_serving: bool = Field(
        default=True, description="The successor answered before this one drained."
    )
    drained_cleanly: bool = Field(
        description="The service finished all its work before the hand-over."
    )
    handed_over: list[str] = Field(default=[], description="Work put back for the successor.")
    skipped_because: str | None = None


class KeptAlive(Protocol):
    """A service the keep-alive runs until its hand-over: the Prefect worker, the MCP server."""

    starts: int

    @property
    def name(self) -> str: ...

    def start(self) -> None:
        """Start (or restart) the service; raise when it has crashed too often."""

    def alive(self) -> bool: ...

    def successor_serving(self) -> bool:
        """Whether the successor already serves, so this one may stop taking work."""

    def drain(self) -> None:
        """Take no new work; work in flight goes on."""

    def busy(self) -> list[Any]:
        """Work still in flight."""

    def stop(self) -> None: ...

    def hand_over(self, unfinished: list[Any]) -> list[str]:
        """Give work still going at the hand-over to the successor; return what was handed over."""


def restart_limit_reached(service: KeptAlive, settings: HandoverSettings) -> None:
    if service.starts > settings.max_restarts:
        raise RuntimeError(f"{service.name} exited {service.starts} times; see its output above")


@dataclass
class PrefectWorker:
    """`prefect worker start`, frozen (SIGSTOP) to drain: its flow-run processes go on."""

    settings: KeepaliveSettings
    process: subprocess.Popen | None = None
    starts: int = 0
    env: dict[str, str] = field(
        default_factory=lambda: {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    )

    @property
    def name(self) -> str:
        return self.settings.worker_name

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            self.settings.pool,
            "--type",
            "process",
            "--name",
            self.settings.worker_name,
        ]
        if self.settings.limit:
            command += ["--limit", str(self.settings.limit)]
        return command

    def start(self) -> None:
        restart_limit_reached(self, self.settings)
        self.starts += 1
        logger.info("starting worker %s for pool %s", self.settings.worker_name, self.settings.pool)
        self.process = subprocess.Popen(self.command(), env=self.env, stdin=subprocess.DEVNULL)

    def running(self) -> subprocess.Popen | None:
        """The worker's process while it runs."""
        if self.process is not None and self.process.poll() is None:
            return self.process
        return None

    def alive(self) -> bool:
        return self.running() is not None

    def successor_serving(self) -> bool:
        return True  # runs wait in the queue for the successor; nothing is refused meanwhile

    def drain(self) -> None:
        """Stop the worker polling for new runs; the flow-run processes it started go on."""
        if process := self.running():
            process.send_signal(signal.SIGSTOP)

    def busy(self) -> list[FlowRun]:
        return runs_of_worker(self.settings.pool, self.settings.worker_name)

    def stop(self) -> None:
        """SIGKILL: a frozen worker cannot report its runs Crashed on the way out."""
        if process := self.running():
            process.kill()
            process.wait()

    def hand_over(self, unfinished: list[FlowRun]) -> list[str]:
        for run in unfinished:
            hand_over_run(run)
            logger.info("handed over flow run %s (%s)", run.name, run.id)
        return [str(run.id) for run in unfinished]


def runs_of_worker(pool: str, worker_name: str) -> list[FlowRun]:
    """Pending or running flow runs that `worker_name` submitted (Prefect labels each run with its worker)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                )
            ),
        )
    return [run for run in runs if (run.labels or {}).get(WORKER_LABEL) == worker_name]


def hand_over_run(run: FlowRun) -> None:
    """Stop a flow run on this machine so that the next worker finishes it, and queue it again.

    1. Freeze the flow run's process (SIGSTOP): it must not see its training job stop and
       react (resume the job itself, or report the run Failed).
    2. Stop its running local training jobs the resumable way: SIGTERM makes `train.py` save
       a checkpoint and exit (`checkpoint_and_stop_local_job`). A job dies with its owner (the
       parent-death signal), so without this step the successor would find a job killed
       mid-step with no recent checkpoint. Hugging Face jobs run elsewhere and go on.
    3. Put the run back to `AwaitingRetry` (Scheduled), then SIGKILL the frozen process (no
       grace: the engine must not propose Crashed first). The successor's run finds the job
       ended resumable and continues from its checkpoint (`train_resuming`); the finished
       steps come from the task cache.
    """
    pid = _local_pid(run.infrastructure_pid)
    if pid is not None:
        _signal(pid, signal.SIGSTOP)
    try:
        for handle in find_local_jobs({"flow_run_id": str(run.id)}):
            if not local_job_status(handle).is_terminal:
                status = checkpoint_and_stop_local_job(handle)
                logger.info(
                    "stopped training job %s of flow run %s for the hand-over: %s",
                    handle.job_id,
                    run.id,
                    status.state.value,
                )
        message = "Worker runner reached its time limit; the next worker resumes this run."
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, AwaitingRetry(message=message), force=True)
    finally:
        if pid is not None:
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _local_pid(infrastructure_pid: str | None) -> int | None:
    # The process worker records the flow run's PID, sometimes as "hostname:pid".
    if not infrastructure_pid:
        return None
    host, _, pid = infrastructure_pid.rpartition(":")
    if host and host != socket.gethostname():
        return None
    return int(pid) if pid.isdigit() else None


def run_until_hand_over(
    service: KeptAlive, settings: HandoverSettings, *, clock: Callable[[], float] = time.monotonic
) -> KeepaliveReport:
    """Run `service` until the hand-over time; start its successor and drain it on the way.

    1. Start the service and restart it if it dies.
    2. At `runtime - drain_seconds`: dispatch the successor workflow, wait (until the hand-over
       at most) for the successor to serve, then drain: no new work, work in flight goes on.
    3. When nothing is in flight, or at the hand-over, stop the service; work still going is
       handed to the successor.
    """
    started = clock()
    drain_at = started + settings.runtime_seconds - settings.drain_seconds
    hand_over_at = started + settings.runtime_seconds
    service.start()
    dispatched, dispatch_error, serving = False, None, True
    try:
        while clock() < drain_at:
            if not service.alive():
                logger.warning("%s exited; restarting it", service.name)
                service.start()
            time.sleep(min(settings.poll_seconds, max(0.0, drain_at - clock())))

        if settings.successor is not None:
            try:
                # The settings refuse a successor without a token.
                assert settings.successor_token is not None
                dispatch_workflow(settings.successor, token=settings.successor_token)
                dispatched = True
                logger.info(
                    "dispatched successor %s on %s",
                    settings.successor.workflow,
                    settings.successor.ref,
                )
            except (
                WorkflowDispatchFailed
            ) as exc:  # drain all the same; the health check dispatches later
                dispatch_error = str(exc)
                logger.error("%s", exc)
        serving = service.successor_serving()
        while not serving and dispatched and clock() < hand_over_at:
            time.sleep(min(settings.poll_seconds, max(0.0, hand_over_at - clock())))
            serving = service.successor_serving()
        logger.info("draining %s: it takes no new work", service.name)
        service.drain()
        remaining = service.busy()
        while remaining and clock() < hand_over_at:
            time.sleep(min(settings.poll_seconds, max(0.0, hand_over_at - clock())))
            remaining = service.busy()
        service.stop()
        handed_over = service.hand_over(remaining)
    finally:
        service.stop()
    return KeepaliveReport(
        worker_name=service.name,
        worker_starts=service.starts,
        successor_dispatched=dispatched,
        dispatch_error=dispatch_error,
        successor_serving=serving,
        drained_cleanly=not remaining,
        handed_over=handed_over,
    )


def keep_alive(
    settings: KeepaliveSettings, *, clock: Callable[[], float] = time.monotonic
) -> KeepaliveReport:
    """Run a worker until the hand-over time; drain it and dispatch a successor on the way."""
    if settings.skip_if_online and (online := check_prefect_health(settings.pool).workers_online):
        return KeepaliveReport(
            worker_name=settings.worker_name,
            worker_starts=0,
            successor_dispatched=False,
            drained_cleanly=True,
            skipped_because=f"workers already online for pool {settings.pool!r}: {', '.join(online)}",
        )
    return run_until_hand_over(PrefectWorker(settings), settings, clock=clock)


def add_hand_over_arguments(parser: argparse.ArgumentParser, *, drain_seconds: float) -> None:
    """The command-line options of the hand-over timeline, shared by every keep-alive."""
    parser.add_argument("--runtime-seconds", type=float, default=GITHUB_JOB_LIMIT_SECONDS - 30 * 60)
    parser.add_argument("--drain-seconds", type=float, default=drain_seconds)
    parser.add_argument(
        "--successor-workflow", help="Workflow file to dispatch at the drain (needs GITHUB_TOKEN)."
    )
    parser.add_argument("--successor-input", action="append", default=[], metavar="KEY=VALUE")


def hand_over_values(args: argparse.Namespace) -> dict[str, Any]:
    """`HandoverSettings` fields from those options and the GitHub Actions environment."""
    successor = None
    if args.successor_workflow:
        inputs = dict(item.split("=", 1) for item in args.successor_input)
        successor = WorkflowTarget.from_actions_env(workflow=args.successor_workflow, inputs=inputs)
    token = os.environ.get("GITHUB_TOKEN")
    return {
        "runtime_seconds": args.runtime_seconds,
        "drain_seconds": args.drain_seconds,
        "successor": successor,
        "successor_token": SecretStr(token) if token else None,
    }


def parse_settings(argv: list[str] | None = None) -> KeepaliveSettings:
    """Settings from the command line and the GitHub Actions environment."""
    parser = argparse.ArgumentParser(
        prog="python -m operations.keepalive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pool", default="github-actions")
    parser.add_argument("--worker-name")
    parser.add_argument("--limit", type=int)
    add_hand_over_arguments(parser, drain_seconds=45 * 60)
    parser.add_argument(
        "--skip-if-online",
        action="store_true",
        help="Exit at once if a worker already serves the pool.",
    )
    args = parser.parse_args(argv)
    values = {
        **hand_over_values(args),
        "pool": args.pool,
        "limit": args.limit,
        "skip_if_online": args.skip_if_online,
    }
    if args.worker_name:
        values["worker_name"] = args.worker_name
    return KeepaliveSettings(**values)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = parse_settings(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = keep_alive(settings)
    print(report.model_dump_json(indent=2))
    return 1 if report.dispatch_error else 0


if __name__ == "__main__":
    sys.exit(main())
