"""The typed input a paused `finetune` run waits for before it spends money.

The Prefect UI renders it as a form; the MCP adapter and `lmft approve` resume the run with
the same model (`prefect.flow_runs.resume_flow_run(run_id, run_input=...)`).
"""

from __future__ import annotations

from prefect.input import RunInput
from pydantic import Field


class ApprovalDecision(RunInput):
    """Approve or reject a training run whose estimate is above the approval threshold."""

    approve: bool = Field(description="True to start the job, False to reject it.")
    note: str = Field(default="", max_length=2000, description="Why; recorded with the decision.")
    approver: str = Field(default="", max_length=200, description="Who decided (name or e-mail).")
