"""The typed input a waiting `finetune` run needs before it spends money.

The Prefect UI renders it as a form whose first field is a required choice between
`approve` and `reject`, with nothing chosen: Submit without a choice is refused, so a note
such as "looks fine" can no longer reject a run by accident. The MCP adapter and
`lmft approve` / `lmft reject` resume the run with the same model
(`prefect.flow_runs.resume_flow_run(run_id, run_input=...)`).
"""

from __future__ import annotations

from typing import Literal

from prefect.input import RunInput
from pydantic import Field

Verdict = Literal["approve", "reject"]


class ApprovalDecision(RunInput):
    """Approve or reject a training run whose estimate is above the approval threshold."""

    decision: Verdict = Field(
        description="approve: start the job (it may spend up to the held amount); "
        "reject: stop the run, nothing is spent."
    )
    note: str = Field(default="", max_length=2000, description="Why; recorded with the decision.")
    approver: str = Field(default="", max_length=200, description="Who decided (name or e-mail).")

    @property
    def approved(self) -> bool:
        return self.decision == "approve"
