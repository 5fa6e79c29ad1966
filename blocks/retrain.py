"""`RetrainSpec`: what the scheduled `retrain` flow trains, and what it trained last.

Create one per retraining job (the `retrain` deployment reads the one named by its
`spec_name` parameter):

    from blocks.retrain import RetrainSpec
    from schemas.request import DatasetSource, FineTuneRequest

    request = FineTuneRequest(dataset=DatasetSource(path="org/support-chats"))
    RetrainSpec(request=request.model_dump(mode="json")).save("default", overwrite=True)
"""

from __future__ import annotations

from datetime import datetime

from prefect.blocks.core import Block
from pydantic import Field

from schemas.registry import Promotion


class RetrainSpec(Block):
    """A stored fine-tune request, and the dataset fingerprint of its last successful training."""

    _block_type_name = "lmft Retrain Spec"
    _block_type_slug = "lmft-retrain-spec"
    _description = "The fine-tune request the `retrain` flow re-runs when its dataset changes."

    request: dict = Field(
        description="A `FineTuneRequest`, as JSON (`request.model_dump(mode='json')`)."
    )
    last_fingerprint: str | None = Field(
        default=None,
        description="Dataset revision or content hash of the last successful training.",
    )
    last_trained_at: datetime | None = Field(
        default=None, description="When that training finished (UTC)."
    )
    last_flow_run_id: str | None = Field(
        default=None, description="The `retrain` flow run that trained it."
    )
    last_model: str | None = Field(
        default=None, description="Model folder or Hub repo it produced."
    )
    last_final_loss: float | None = Field(
        default=None, description="Final training loss of that run."
    )
    promotion: Promotion = Field(
        default=Promotion.IF_BETTER,
        description="if_better: deploy a retrained model only when it beats the served one (and the "
        "base model) on the same held-out rows; always: deploy every retrained model; never: "
        "register only. Overrides the stored request's own setting.",
    )
    promotion_margin: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="How much lower (nats/token) its NLL must be than the served model's; empty: "
        "the request's `promotion_margin`.",
    )
