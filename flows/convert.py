"""The `convert` flow: a Hugging Face model → f16 GGUF → quantized GGUFs → quality gate (→ Hub)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from schemas.gguf import HeldOutSplit, ModelSource
from schemas.request import DatasetSource
from schemas.status import Stage
from tasks.gguf import (
    ConversionResult,
    GGUFArtifacts,
    GGUFLineage,
    GGUFSettings,
    HubTarget,
    check_gguf_quality,
    compute_imatrix,
    convert_to_gguf,
    preflight_gguf,
    quantize_gguf,
    resolve_token,
    select_held_out,
    upload_gguf,
)
from tasks.reporting.status import STATUS_HOOKS, publish_gguf, publish_stage


@flow(name="convert", log_prints=True, **STATUS_HOOKS)  # type: ignore[call-overload]  # hooks given as a dict
def convert(
    model: ModelSource,
    lineage: GGUFLineage | None = None,
    settings: GGUFSettings | None = None,
    adapter: str | None = None,
    output_dir: str | None = None,
    held_out: list[str] | None = None,
    dataset: DatasetSource | None = None,
    hub: HubTarget | None = None,
    held_out_split: HeldOutSplit | None = None,
) -> ConversionResult:
    """Convert `model` (folder or Hub id, plus an optional LoRA `adapter`) to GGUF and keep what answers well."""
    logger = get_run_logger()
    publish_stage(Stage.CONVERTING)
    lineage = lineage or GGUFLineage(base_model=model)
    settings = settings or GGUFSettings()
    token = resolve_token(None) if hub else None  # refuse before converting, not after
    texts = list(held_out or [])
    plan = preflight_gguf(
        model,
        lineage,
        settings,
        adapter=adapter,
        output_dir=output_dir,
        has_training_text=bool(texts or dataset),
    )
    if dataset is not None and not texts:
        texts = select_held_out(dataset, plan.model_dir, split=held_out_split)
    reference = convert_to_gguf(plan, lineage, settings)
    needs_imatrix = any(q.needs_importance_matrix for q in settings.quant_types)
    imatrix = compute_imatrix(plan, reference, texts) if needs_imatrix else None
    variants = [
        quantize_gguf(plan, reference, q, lineage, settings, imatrix) for q in settings.quant_types
    ]
    quality = check_gguf_quality(reference, variants, texts, settings)
    artifacts = GGUFArtifacts(
        model=model,
        output_dir=plan.output_dir,
        reference=reference,
        variants=variants,
        converter_version=plan.converter.version,
        lineage=lineage,
    )
    hub_url = upload_gguf(artifacts, quality, hub, token) if hub else None
    logger.info(quality.decision)
    result = ConversionResult(artifacts=artifacts, quality=quality, hub_url=hub_url)
    publish_gguf(result)
    return result


if __name__ == "__main__":
    import sys

    from tasks.jobs.base_model import materialize_embedded_model

    print(
        convert(
            sys.argv[1] if len(sys.argv) > 1 else str(materialize_embedded_model())
        ).quality.decision
    )
