"""The MCP tests' worker: serves the pipeline's deployments plus an approval probe.

Started as a subprocess by the `flow_worker` fixture: `python -m tests.mcp_adapter.flow_worker`.
"""

from __future__ import annotations

from prefect import flow
from prefect.flow_runs import pause_flow_run

from deployments.serve import serve_flows
from schemas.approval import ApprovalDecision
from schemas.status import GateDecision
from tasks.reporting.status import STATUS_HOOKS, publish_gate

APPROVAL_PROBE = "approval-probe/approval-probe"


@flow(name="approval-probe", persist_result=True, result_serializer="json", **STATUS_HOOKS)
def approval_probe(timeout_seconds: int = 300) -> ApprovalDecision:
    """Pause for an `ApprovalDecision`, the way the finetune flow's budget gate does; return it."""
    publish_gate(GateDecision.AWAITING_APPROVAL, timeout_seconds=timeout_seconds)
    decision = pause_flow_run(wait_for_input=ApprovalDecision, timeout=timeout_seconds)
    verdict = GateDecision.APPROVED if decision.approve else GateDecision.REJECTED
    publish_gate(verdict, approver=decision.approver, note=decision.note)
    return decision


if __name__ == "__main__":
    serve_flows(approval_probe.to_deployment(name="approval-probe"))
