"""A real `prefect server start` and a worker serving the deployments that wait (approval, merge).

The test harness serves no UI and runs none of the server's services, and it is the
pause-expiration service that fails a suspended run nobody resumed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.objects import State
from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from tests.flows.approval_worker import SERVED
from tests.mcp_adapter.conftest import wait_for_deployments

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started, SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Server:
    def __init__(self, url: str, env: dict[str, str], logs: Path) -> None:
        self.url, self.env, self.logs = url, env, logs
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> subprocess.Popen:
        """A new worker process serving the approval deployments."""
        log = (self.logs / f"worker-{len(self.workers)}.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.flows.approval_worker"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(worker)
        wait_for_deployments(SERVED, worker, timeout=180)
        return worker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, lmft_home: Path) -> Iterator[Server]:
    """`prefect server start` on a free port with its own home; this module's client uses it."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "1",
        # Both workers and this process read the results the runs persist.
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": str(ROOT),
    }
    log = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    served = Server(url, env, home)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server start did not come up; see {home}/server.log")
            time.sleep(0.5)
        with temporary_settings(
            {PREFECT_API_URL: url, PREFECT_LOCAL_STORAGE_PATH: home / "results"}
        ):
            yield served
    finally:
        for worker in served.workers:
            stop(worker)
        stop(process)
        log.close()


def wait_for_state(run_id, done: Callable[[State], bool], timeout: float = 180) -> State:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if state is not None and done(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {run_id} is still {state.name if state else None}")
            time.sleep(0.5)
