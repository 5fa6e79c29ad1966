"""The names of the deployments the pipeline's entry points start (`flow name/deployment name`).

`prefect.yaml`, `deployments.serve` and the MCP adapter agree through this one list.
"""

from __future__ import annotations

from enum import Enum


class DeploymentName(str, Enum):
    """A deployment that a tool or a schedule starts, as `flow/deployment`."""

    FINETUNE = "finetune/finetune"
    VALIDATE = "validate/validate"
    ESTIMATE = "estimate/estimate"
    CONVERT = "convert/convert"
    DEPLOY = "deploy/deploy"
    RETRAIN = "retrain/retrain"
    COST_REPORT = "cost_report/cost_report"
    SPEND_ALERTS = "spend_alerts/spend_alerts"
    HEALTH_CHECK = "health_check/health_check"
    SETTLE_ENDED_RUNS = "settle_ended_runs/settle_ended_runs"
    MERGE_WATCH = "merge_watch/merge_watch"
    MODELS = "models/models"

    @property
    def flow_name(self) -> str:
        return self.value.split("/", 1)[0]

    @property
    def deployment_name(self) -> str:
        return self.value.split("/", 1)[1]
