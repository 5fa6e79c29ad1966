"""What a training run will cost, before it starts."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, Field

from tasks.request import Backend, FineTuneRequest
from tasks.validation import ValidationReport


class CostEstimate(BaseModel):
    """Time and money a run is expected to take, with a range."""

    backend: Backend
    hardware: str = Field(description="The flavor the job runs on ('local' for this machine).")
    price_per_hour: float = Field(ge=0, description="USD per hour of the hardware.")
    low_usd: float = Field(ge=0)
    expected_usd: float = Field(ge=0)
    high_usd: float = Field(ge=0)
    expected_seconds: float | None = None
    timeout_seconds: int | None = None
    source: str = Field(description="Where the prices came from, and their date.")


@task(name="estimate-cost")
def estimate_cost(request: FineTuneRequest, report: ValidationReport) -> CostEstimate:
    """Estimate the run's cost; the local backend runs on this machine and costs nothing."""
    if request.backend is Backend.LOCAL:
        return CostEstimate(
            backend=Backend.LOCAL, hardware="local", price_per_hour=0.0,
            low_usd=0.0, expected_usd=0.0, high_usd=0.0, source="local backend: no charge",
        )
    raise RuntimeError(f"no cost model for backend {request.backend.value!r} yet; use backend 'local'")
