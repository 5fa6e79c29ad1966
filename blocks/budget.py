"""`BudgetPolicy`: how much paid training may spend, and when a human must approve it.

Create it once, from the CLI, Python or the Prefect UI (Blocks → Budget Policy):

    lmft budget set --monthly-limit 200 --approval-threshold 20 --per-job-max 80
    lmft budget set --monthly-limit 200 --approval-threshold 20 --per-job-max 80 --require-approval-for-all-runs
    python -c "from blocks.budget import BudgetPolicy; BudgetPolicy(monthly_limit_usd=200, \
        approval_threshold_usd=20, per_job_max_usd=80).save('default')"
"""

from __future__ import annotations

from typing import Annotated

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from blocks import load_block

BUDGET_BLOCK_NAME = "default"
"""The block document the `finetune` flow loads."""


class BudgetPolicyMissing(RuntimeError):
    """A paid run needs a saved `BudgetPolicy`; the message says how to create one."""


class BudgetPolicyUnavailable(RuntimeError):
    """The Prefect API that holds the blocks could not be reached."""


class BudgetPolicy(Block):
    """Monthly limit, per-job maximum and approval rules for training jobs (paid ones, or every one)."""

    _block_type_name = "Budget Policy"
    _block_type_slug = "budget-policy"
    _description = (
        "Spending rules for paid training: a monthly limit and a per-job maximum that runs cannot "
        "exceed, and a threshold above which a run waits for a human approval."
    )

    monthly_limit_usd: Annotated[
        float,
        Field(
            gt=0, le=1_000_000, description="USD per calendar month (UTC), reservations included."
        ),
    ]
    approval_threshold_usd: Annotated[
        float,
        Field(
            ge=0,
            le=1_000_000,
            description="Runs whose high estimate is above this wait for approval.",
        ),
    ]
    per_job_max_usd: Annotated[
        float,
        Field(
            gt=0, le=1_000_000, description="No single run may be estimated above this (high end)."
        ),
    ]
    approval_timeout_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=30 * 24 * 3600,
            description="How long a run waits for approval; no answer means rejected.",
        ),
    ] = 24 * 3600
    require_approval_for_all_runs: Annotated[
        bool,
        Field(
            description="Every run waits for a human approval before it starts, whatever it costs: free local "
            "runs and paid runs below the threshold too. Off: only runs above the threshold wait.",
        ),
    ] = False
    ledger_url: Annotated[
        SecretStr | None,
        Field(
            description="SQLAlchemy URL of the spend ledger. Empty: SQLite in $LMFT_HOME/ledger.sqlite "
            "(one machine). Several workers: postgresql+psycopg://user:pass@host/db.",
        ),
    ] = None

    @model_validator(mode="after")
    def _check_limits(self) -> BudgetPolicy:
        if self.per_job_max_usd > self.monthly_limit_usd:
            raise ValueError(
                f"per_job_max_usd ({self.per_job_max_usd}) is above monthly_limit_usd ({self.monthly_limit_usd}); "
                "lower it or raise the monthly limit"
            )
        return self


def load_budget_policy(name: str = BUDGET_BLOCK_NAME) -> BudgetPolicy:
    """The saved `BudgetPolicy` named `name`, or `BudgetPolicyMissing` saying how to create it."""
    try:
        return load_block(BudgetPolicy, name)
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        raise BudgetPolicyMissing(
            f"no BudgetPolicy block named {name!r} ({exc}). Paid backends need one: run "
            "`lmft budget set --monthly-limit 200 --approval-threshold 20 --per-job-max 80`, or create a "
            "'Budget Policy' block in the Prefect UI, or `BudgetPolicy(...).save("
            f"{name!r})` from Python"
        ) from None
    except RuntimeError as exc:  # the API (or the ephemeral server) could not be reached
        raise BudgetPolicyUnavailable(
            f"cannot read the BudgetPolicy block {name!r} from the Prefect API ({exc}); start a server "
            "(`prefect server start`) and set PREFECT_API_URL, then retry"
        ) from None
