"""A Prefect set-up as a team runs it: `prefect server start` on a database of your choice, a
process work pool, the `finetune` deployment as prefect.yaml declares it (run from this
checkout), and process workers started on demand. Used by tests/deployments/test_team.py and
bench/scale.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from bench.mcp_latency import free_port, start_prefect_server
from tests.deployments.test_prefect_yaml import local_prefect_yaml

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


@dataclass
class Team:
    """The server's API, the pool and its `finetune` deployment, and the workers started so far."""

    env: dict[str, str]
    pool: str
    deployment_id: UUID
    logs: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    ledger_url: str | None = None

    def run(self, *args: str) -> str:
        """`python ARGS` against this team's server (a CLI command); its output, or fail with it."""
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def start_worker(self, name: str) -> None:
        """`prefect worker start --pool POOL --type process --name NAME`, logging to `logs/NAME.log`."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the worker writes it until stopped
        try:
            self.workers[name] = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool]
                + ["--type", "process", "--name", name],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    def stop_workers(self) -> None:
        for process in self.workers.values():
            process.terminate()
        for process in self.workers.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workers.clear()

    def submit(self, name: str, model: Path, dataset: Path, steps: int) -> UUID:
        """A `finetune` run of `model` on `dataset` for `steps` steps, no GGUF, no deployment."""
        request = {
            "base_model": str(model),
            "dataset": {"path": str(dataset)},
            "hyperparameters": {"max_steps": steps, "batch_size": 2, "max_length": 64},
            "output_name": name,
            "gguf": None,
            "deploy": None,
        }
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(
                self.deployment_id, parameters={"request": request}
            )
        return run.id

    def diagnostics(self) -> str:
        """The tail of every worker's log, for a failure message."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in sorted(self.logs.glob("*.log"))
        )


def read_runs(ids: list[UUID]) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))


def all_terminal(runs: list[FlowRun]) -> bool:
    return all(r.state is not None and r.state.type in TERMINAL for r in runs)


def task_run_states(
    flow_run_id: UUID, until: Callable[[dict[str, list[str]]], bool], timeout: float = 180
) -> dict[str, list[str]]:
    """The states of a flow run's task runs by task name, once `until(states)` holds (task run
    states reach the API through its event pipeline, a little after the flow run has ended)."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])
                )
            )
        states: dict[str, list[str]] = {}
        for task_run in task_runs:
            name = task_run.name.rsplit("-", 1)[0]
            states.setdefault(name, []).append(task_run.state.name if task_run.state else "")
        if until(states) or time.monotonic() > deadline:
            return {name: sorted(found) for name, found in states.items()}
        time.sleep(1)


def write_chats(path: Path, rows: int = 12) -> Path:
    """A small valid chat dataset."""
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": f"ahoy {i}"},
            ]
        }
        for i in range(rows)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@contextmanager
def team_server(
    work: Path, *, database_url: str | None = None, pool: str = "team"
) -> Iterator[Team]:
    """Start the server (SQLite in `work`, or `database_url`), the pool and the deployment; this
    process's Prefect client points at the server inside the block. Workers start on demand
    (`Team.start_worker`) and stop with the block."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_prefect_server(
        work / "server-home", port, timeout=600, database_url=database_url
    )
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        # One result storage for every worker: a handed-over run finds what the first one persisted.
        "PREFECT_HOME": str(work / "worker-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    team = None
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            prefect_file, _ = local_prefect_yaml(work, pool)
            team = Team(env=env, pool=pool, deployment_id=UUID(int=0), logs=logs)
            team.run(
                "-m", "prefect", "--no-prompt", "deploy", "--name", "finetune",
                "--prefect-file", str(prefect_file),
            )  # fmt: skip
            with get_client(sync_client=True) as client:
                team.deployment_id = client.read_deployment_by_name("finetune/finetune").id
            yield team
    finally:
        if team is not None:
            team.stop_workers()
        server.terminate()
        server.wait(timeout=60)
