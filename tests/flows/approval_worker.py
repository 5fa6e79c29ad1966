"""The worker of the tests of long waits: serves `finetune`, `deploy` and a budget-gate probe.

Started as a subprocess by `tests/flows/conftest.py`: `python -m tests.flows.approval_worker`.
Both deployments take one run at a time, and so does the worker (`limit=1`): a run that kept its
process or its slot while it waits would block the next one.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, serve, task

from flows.deploy import deploy
from flows.finetune import finetune
from tasks.costs.budget import gate_budget
from tests.estimates import paid_estimate

GATE_PROBE = "gate-probe/gate-probe"
FINETUNE = "finetune/finetune"
DEPLOY = "deploy/deploy"
SERVED = [GATE_PROBE, FINETUNE, DEPLOY]


@task
def prepare(marker: str) -> str:
    """Stand-in for the work before the gate (validation, estimate): notes each time it runs."""
    with Path(marker).open("a") as log:
        log.write(f"{os.getpid()}\n")
    return marker


@flow(name="gate-probe", persist_result=True)
def gate_probe(high_usd: float, run_key: str, policy_name: str, marker: str) -> dict:
    """The finetune flow's budget gate on a paid estimate; returns the reservation's status and
    the process id of the worker that finished the run."""
    prepare(marker)
    reservation = gate_budget(paid_estimate(high_usd), run_key=run_key, policy_name=policy_name)
    return {"status": reservation.status.value if reservation else "free", "worker": os.getppid()}


if __name__ == "__main__":
    serve(
        finetune.to_deployment(name="finetune", concurrency_limit=1),
        gate_probe.to_deployment(name="gate-probe", concurrency_limit=1),
        deploy.to_deployment(name="deploy", concurrency_limit=1),
        limit=1,
    )
