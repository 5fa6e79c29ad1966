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
   still going are long ones (a training job being monitored): kill their processes and
   put each run back to `AwaitingRetry` (Scheduled). The next worker picks it up, and the
   flow's idempotency key makes it reattach to its training job instead of starting another.

The successor token (`GITHUB_TOKEN`, needs `actions: write`) is removed from the worker's
environment, so flow runs never see it.
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

logger = logging.getLogger("lmft.keepalive")

GITHUB_JOB_LIMIT_SECONDS = 6 * 3600
WORKER_LABEL = "prefect.worker.name"
SECRET_ENV = ("GITHUB_TOKEN", "GH_TOKEN", "LMFT_DISPATCH_TOKEN")
"""Environment variables the worker (and so every flow run) must not inherit."""


class KeepaliveSettings(BaseModel):
    """When to drain and hand over, which pool to serve, and which workflow succeeds this one."""

    pool: str = Field(default="github-actions", min_length=1)
    worker_name: str = Field(default_factory=lambda: f"gha-{socket.gethostname()}-{os.getpid()}")
    runtime_seconds: float = Field(
        default=GITHUB_JOB_LIMIT_SECONDS - 30 * 60,
        gt=0,
        description="Hand-over time, from start; keep it below the job's timeout with room for the steps after.",
    )
    drain_seconds: float = Field(
        default=45 * 60, ge=0, description="Stop taking new runs this long before the hand-over."
    )
    limit: int | None = Field(default=None, ge=1, description="Flow runs this worker runs at once.")
    poll_seconds: float = Field(default=5.0, gt=0)
    successor: WorkflowTarget | None = None
    successor_token: SecretStr | None = None
    max_worker_restarts: int = Field(default=5, ge=0)
    skip_if_online: bool = Field(
        default=False,
        description="Start no worker when one is already online for the pool (scheduled backstop runs).",
    )

    @model_validator(mode="after")
    def _check_times(self) -> KeepaliveSettings:
        if self.drain_seconds >= self.runtime_seconds:
            raise ValueError(
                f"drain_seconds ({self.drain_seconds:g}) must be shorter than runtime_seconds ({self.runtime_seconds:g})"
            )
        if self.successor is not None and self.successor_token is None:
            raise ValueError(
                "successor_token: a successor workflow is set but no token to dispatch it (GITHUB_TOKEN)"
            )
        return self


class KeepaliveReport(BaseModel):
    """What the keep-alive did before it ended."""

    worker_name: str
    worker_starts: int
    successor_dispatched: bool
    dispatch_error: str | None = None
    drained_cleanly: bool = Field(
        description="The worker finished all its runs before the hand-over."
    )
    handed_over: list[str] = Field(default=[], description="Flow runs put back to AwaitingRetry.")
    skipped_because: str | None = None


@dataclass
class _Worker:
    settings: KeepaliveSettings
    process: subprocess.Popen | None = None
    starts: int = 0
    env: dict[str, str] = field(
        default_factory=lambda: {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    )

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
        if self.starts > self.settings.max_worker_restarts:
            raise RuntimeError(
                f"the Prefect worker exited {self.starts} times; see its output above (is PREFECT_API_URL reachable?)"
            )
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

    def freeze(self) -> None:
        """Stop the worker polling for new runs; the flow-run processes it started go on."""
        if process := self.running():
            process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: a frozen worker cannot report its runs Crashed on the way out."""
        if process := self.running():
            process.kill()
            process.wait()


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
    """Stop a flow run's process on this machine and put the run back in the queue for the next worker."""
    pid = _local_pid(run.infrastructure_pid)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)  # no grace: the engine must not propose Crashed first
        except ProcessLookupError:
            pass
    message = "Worker runner reached its time limit; the next worker resumes this run."
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, AwaitingRetry(message=message), force=True)


def _local_pid(infrastructure_pid: str | None) -> int | None:
    # The process worker records the flow run's PID, sometimes as "hostname:pid".
    if not infrastructure_pid:
        return None
    host, _, pid = infrastructure_pid.rpartition(":")
    if host and host != socket.gethostname():
        return None
    return int(pid) if pid.isdigit() else None


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
    started = clock()
    drain_at = started + settings.runtime_seconds - settings.drain_seconds
    hand_over_at = started + settings.runtime_seconds
    worker = _Worker(settings)
    worker.start()
    try:
        while clock() < drain_at:
            if not worker.alive():
                logger.warning(
                    "worker exited with code %s; restarting it",
                    worker.process.returncode if worker.process else None,
                )
                worker.start()
            time.sleep(min(settings.poll_seconds, max(0.0, drain_at - clock())))

        logger.info("draining: worker %s takes no new flow runs", settings.worker_name)
        worker.freeze()
        dispatched, dispatch_error = False, None
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
        remaining = runs_of_worker(settings.pool, settings.worker_name)
        while remaining and clock() < hand_over_at:
            time.sleep(min(settings.poll_seconds, max(0.0, hand_over_at - clock())))
            remaining = runs_of_worker(settings.pool, settings.worker_name)
        worker.kill()

        drained_cleanly = not remaining
        handed_over: list[str] = []
        for run in remaining:
            hand_over_run(run)
            handed_over.append(str(run.id))
            logger.info("handed over flow run %s (%s)", run.name, run.id)
    finally:
        worker.kill()
    return KeepaliveReport(
        worker_name=settings.worker_name,
        worker_starts=worker.starts,
        successor_dispatched=dispatched,
        dispatch_error=dispatch_error,
        drained_cleanly=drained_cleanly,
        handed_over=handed_over,
    )


def parse_settings(argv: list[str] | None = None) -> KeepaliveSettings:
    """Settings from the command line and the GitHub Actions environment."""
    parser = argparse.ArgumentParser(
        prog="python -m operations.keepalive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pool", default="github-actions")
    parser.add_argument("--worker-name")
    parser.add_argument("--runtime-seconds", type=float, default=GITHUB_JOB_LIMIT_SECONDS - 30 * 60)
    parser.add_argument("--drain-seconds", type=float, default=45 * 60)
    parser.add_argument("--limit", type=int)
    parser.add_argument(
        "--successor-workflow", help="Workflow file to dispatch at the drain (needs GITHUB_TOKEN)."
    )
    parser.add_argument("--successor-input", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--skip-if-online",
        action="store_true",
        help="Exit at once if a worker already serves the pool.",
    )
    args = parser.parse_args(argv)
    successor = None
    if args.successor_workflow:
        inputs = dict(item.split("=", 1) for item in args.successor_input)
        successor = WorkflowTarget.from_actions_env(workflow=args.successor_workflow, inputs=inputs)
    token = os.environ.get("GITHUB_TOKEN")
    values = {
        "pool": args.pool,
        "runtime_seconds": args.runtime_seconds,
        "drain_seconds": args.drain_seconds,
        "limit": args.limit,
        "successor": successor,
        "successor_token": SecretStr(token) if token else None,
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
