"""Deploying to serverless-llm: edit `config/models.py`, git, GitHub, health and smoke checks."""

from tasks.serving.serverless_llm.deploy import DeploymentFailed, deploy_to_serverless_llm
from tasks.serving.serverless_llm.models_file import ModelEntry, ModelsFileError, upsert_model_entry
from tasks.serving.serverless_llm.names import check_model_name

__all__ = [
    "DeploymentFailed",
    "ModelEntry",
    "ModelsFileError",
    "check_model_name",
    "deploy_to_serverless_llm",
    "upsert_model_entry",
]
