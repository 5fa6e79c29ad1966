"""Cost estimates: what a run is expected to take in time and money, and what it has cost so far."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from schemas.request import Backend


class MemoryBreakdown(BaseModel):
    """GPU memory one training process needs, by part, in GB."""

    weights_gb: float
    trainable_state_gb: float
    reference_model_gb: float
    activations_gb: float
    logits_gb: float
    kv_cache_gb: float
    overhead_gb: float
    total_gb: float


class FlavorQuote(BaseModel):
    """The expected cost of the run on one flavor that fits."""

    hardware: str
    price_per_hour: float
    expected_usd: float
    expected_seconds: float


class CostEstimate(BaseModel):
    """Time and money a run is expected to take, with a range."""

    backend: Backend
    hardware: str = Field(description="The flavor the job runs on ('local' for this machine).")
    price_per_hour: float = Field(ge=0, description="USD per hour of the hardware.")
    low_usd: float = Field(ge=0)
    expected_usd: float = Field(ge=0)
    high_usd: float = Field(ge=0)
    low_seconds: float | None = None
    expected_seconds: float | None = None
    high_seconds: float | None = None
    timeout_seconds: int | None = Field(
        default=None, description="Job timeout, from the high estimate."
    )
    source: str = Field(description="Where the prices came from, and their date.")
    catalog_as_of: datetime | None = None
    model: str | None = None
    parameters: int | None = None
    parameters_source: str | None = None
    trainable_parameters: int | None = None
    tokens: int | None = Field(default=None, description="Tokens processed, all epochs.")
    memory: MemoryBreakdown | None = None
    memory_available_gb: float | None = Field(
        default=None, description="Usable memory of one device of the flavor."
    )
    alternatives: list[FlavorQuote] = Field(
        default=[], description="Other flavors that fit, cheapest first."
    )
    assumptions: list[str] = []

    def markdown(self) -> str:
        """The estimate as a markdown table (artifact, approval form description)."""
        rows = [
            ("hardware", f"{self.hardware} at ${self.price_per_hour:.2f}/h ({self.backend.value})"),
            ("cost", f"${self.low_usd:.2f} – **${self.expected_usd:.2f}** – ${self.high_usd:.2f}"),
        ]
        if self.expected_seconds is not None:
            rows.append(
                (
                    "time",
                    f"{_hours(self.low_seconds)} – **{_hours(self.expected_seconds)}** – {_hours(self.high_seconds)}",
                )
            )
            rows.append(("job timeout", _hours(self.timeout_seconds)))
        if self.parameters:
            rows.append(
                (
                    "model",
                    f"{self.model}: {self.parameters / 1e9:.2f} B parameters ({self.parameters_source})",
                )
            )
            rows.append(
                (
                    "trained",
                    f"{(self.trainable_parameters or 0) / 1e6:.1f} M parameters, {self.tokens or 0:,} tokens",
                )
            )
        if self.memory:
            rows.append(
                (
                    "memory",
                    f"{self.memory.total_gb:.1f} GB needed of {self.memory_available_gb or 0:.0f} GB usable",
                )
            )
        rows.append(("prices", self.source))
        table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
        if self.alternatives:
            table += "\n\n| also fits | $/h | expected |\n|---|---|---|\n" + "\n".join(
                f"| {q.hardware} | {q.price_per_hour:.2f} | ${q.expected_usd:.2f} |"
                for q in self.alternatives[:5]
            )
        if self.assumptions:
            table += "\n\n" + "\n".join(f"- {a}" for a in self.assumptions)
        return table


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def cost_so_far(
    estimate_or_price: CostEstimate | float, started_at: datetime, now: datetime | None = None
) -> float:
    """USD spent by a job running since `started_at` (billed per started minute) at the estimate's price.

    Example:
        >>> cost_so_far(2.5, datetime(2026, 1, 1, 12, 0, tzinfo=UTC), datetime(2026, 1, 1, 12, 30, tzinfo=UTC))
        1.25
    """
    price = (
        estimate_or_price.price_per_hour
        if isinstance(estimate_or_price, CostEstimate)
        else float(estimate_or_price)
    )
    now = now or datetime.now(UTC)
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=UTC)
    return cost_of_running(price, (now - started_at).total_seconds())


def cost_of_running(estimate_or_price: CostEstimate | float, running_seconds: float) -> float:
    """USD billed for `running_seconds` of a job's running time (per started minute): what Hugging
    Face Jobs bills, from the moment the job is RUNNING to its end, scheduling not included.

    Example:
        >>> cost_of_running(2.5, 90)
        0.0833
    """
    price = (
        estimate_or_price.price_per_hour
        if isinstance(estimate_or_price, CostEstimate)
        else float(estimate_or_price)
    )
    minutes = math.ceil(max(0.0, running_seconds) / 60)
    return round(minutes / 60 * price, 4)
