"""The MCP tests' worker: serves the pipeline's deployments plus an approval probe.

Started as a subprocess by the `flow_worker` fixture: `python -m tests.mcp_adapter.flow_worker`.
"""

from __future__ import annotations

from prefect import flow
from prefect.flow_runs import pause_flow_run

from deployments.serve import serve_flows
from schemas.approval import ApprovalDecision

APPROVAL_PROBE = "approval-probe/approval-probe"


@flow(name="approval-probe", persist_result=True, result_serializer="json")
def approval_probe(timeout_seconds: int = 300) -> ApprovalDecision:
    """Pause for an `ApprovalDecision`, the way the finetune flow's budget gate does; return it."""
    return pause_flow_run(wait_for_input=ApprovalDecision, timeout=timeout_seconds)


if __name__ == "__main__":
    serve_flows(approval_probe.to_deployment(name="approval-probe"))
