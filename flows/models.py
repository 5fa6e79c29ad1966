"""The `models` flow: the model registry, every model or those of one name, as a table artifact."""

from __future__ import annotations

from prefect import flow

from schemas.registry import ModelQuery, ModelRegistryView
from tasks.registry import publish_registry, read_registry


@flow(name="models", persist_result=True, result_serializer="json", log_prints=True)
def models(
    name: ModelQuery = None,
) -> ModelRegistryView:
    """Read the model registry: lineage, figures, deploys and where each model serves."""
    view = read_registry(name)
    print(publish_registry(change=f"read {name or 'every model'}"))
    return view


if __name__ == "__main__":
    import sys

    print(models(sys.argv[1] if len(sys.argv) > 1 else None).model_dump_json(indent=2))
