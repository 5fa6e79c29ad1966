"""A paid estimate for budget tests: $1/h on a10g-small, `high_usd` at the high end."""

from __future__ import annotations

from schemas.costs import CostEstimate
from schemas.request import Backend


def paid_estimate(high_usd: float) -> CostEstimate:
    return CostEstimate(
        backend=Backend.HF_JOBS,
        hardware="a10g-small",
        price_per_hour=1.0,
        low_usd=high_usd / 3,
        expected_usd=high_usd / 2,
        high_usd=high_usd,
        expected_seconds=1800,
        timeout_seconds=7200,
        source="test prices",
    )
