"""Every task that waits on something outside this process has a timeout (issue 19).

A task without one that hangs on the Hub, GitHub, the ledger's database or the Prefect API holds
its flow run, and the run's concurrency slot, until the worker's runner is stopped (6 h on
Actions). The test reads the task objects themselves, so a timeout set anywhere counts.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from prefect import Task

import flows
import operations
import tasks

LOCAL_ONLY = {
    # Work done in this process on local files, bounded by its own size.
    "check-gguf-quality": "llama-cpp-python on the local GGUF files",
    "compute-importance-matrix": "llama.cpp on the local GGUF and a few hundred rows",
    "quantize-gguf": "llama.cpp on a local file",
    "sample-answers": "llama-cpp-python on the local GGUF files",
    "publish-summary": "Prefect artifacts: the engine's own API client, with its own timeouts",
    "publish-cost-report": "Prefect artifacts, from the ledger rows already read",
    # Timed by the flow, from the estimate: `monitor_training.with_options(timeout_seconds=...)`.
    "monitor-training": "timed per run by train_resuming (monitor_timeout of the estimate)",
}


def _all_tasks() -> dict[str, Task]:
    found: dict[str, Task] = {}
    for package in (tasks, flows, operations):
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            for value in vars(importlib.import_module(module.name)).values():
                if isinstance(value, Task):
                    found[value.name] = value
    return found


ALL_TASKS = _all_tasks()


def test_the_walk_finds_the_pipelines_tasks() -> None:
    assert {"submit-training", "deploy-gguf", "prepare-base-model", "validate-dataset"} <= set(
        ALL_TASKS
    )
    assert set(LOCAL_ONLY) <= set(ALL_TASKS), "a LOCAL_ONLY entry names no task: update it"


@pytest.mark.parametrize("name", sorted(set(ALL_TASKS) - set(LOCAL_ONLY)))
def test_a_task_that_waits_outside_has_a_timeout(name: str) -> None:
    timeout = ALL_TASKS[name].timeout_seconds
    assert timeout is not None and 0 < timeout <= 24 * 3600, (
        f"task {name!r} has no timeout_seconds: give it one (or list it in LOCAL_ONLY with why)"
    )
