"""The `health_check` flow: Prefect API healthy and a worker online for the pool.

Deployed on a schedule by `prefect.yaml`; a failed run is what the Slack automation
reports. The GitHub Actions health check (`lmft health-check`) runs the same check without
a worker, so it still works when no worker is online.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from operations.health import HealthReport, check_health


class ServiceUnhealthy(RuntimeError):
    """The health check found problems; the message lists them."""


@flow(name="health_check")
def health_check(pool: str = "github-actions") -> HealthReport:
    """Check the Prefect API and the workers of `pool`; fail with the problems when unhealthy."""
    report = check_health(pool)
    rows = "\n".join(
        f"| {w.name} | {'online' if w.online else 'offline'} | {w.last_heartbeat} |"
        for w in report.workers
    )
    create_markdown_artifact(
        f"# Health of pool `{pool}`\n\n| worker | status | last heartbeat |\n|---|---|---|\n{rows}\n\n"
        + ("\n".join(f"- {problem}" for problem in report.problems) or "All good."),
        key="health-check",
        description=f"Health of work pool {pool}",
    )
    if not report.healthy:
        raise ServiceUnhealthy("; ".join(report.problems))
    return report


if __name__ == "__main__":
    import sys

    print(
        health_check(sys.argv[1] if len(sys.argv) > 1 else "github-actions").model_dump_json(
            indent=2
        )
    )
