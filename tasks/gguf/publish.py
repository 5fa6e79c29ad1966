"""Upload GGUF files and a model card to `{namespace}/{name}-GGUF` on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import SecretStr

from schemas.gguf import GGUFArtifacts, HubTarget, QualityReport


class HubCredentialsMissing(RuntimeError):
    """Uploading was asked for but no Hugging Face token is configured."""


def resolve_token(token: SecretStr | None) -> SecretStr:
    """The given token, else this worker's `HuggingFaceCredentials`, else the one huggingface_hub
    finds (HF_TOKEN, `hf auth login`); refuse when there is none."""
    if token is not None and token.get_secret_value():
        return token
    from huggingface_hub import get_token

    from blocks.huggingface import load_hf_credentials

    try:
        return load_hf_credentials().token
    except RuntimeError:  # no credentials block and no environment: try huggingface_hub's own
        pass

    found = get_token()
    if not found:
        raise HubCredentialsMissing(
            "uploading GGUFs to the Hub needs a Hugging Face token with write access: set HF_TOKEN "
            "or run `hf auth login`, or leave out the hub target to keep the files local"
        )
    return SecretStr(found)


def model_card(artifacts: GGUFArtifacts, report: QualityReport, repo_id: str) -> str:
    """README.md for the GGUF repo: lineage, files, and the quality gate's table."""
    lineage = artifacts.lineage
    front = ["---", "library_name: gguf", "tags:", "- gguf", "- lm-fine-tuning", "- llama.cpp"]
    if "/" in lineage.base_model and not lineage.base_model.startswith((".", "/", "~")):
        front += ["base_model:", f"- {lineage.base_model}"]
    if (
        lineage.dataset
        and "/" in lineage.dataset
        and not lineage.dataset.startswith((".", "/", "~"))
    ):
        front += ["datasets:", f"- {lineage.dataset}"]
    front.append("---")
    rows = []
    for check in (report.reference, *report.variants):
        chosen = " (deployed)" if check.path == report.chosen else ""
        verdict = "pass" if check.passed else "fail: " + "; ".join(check.reasons)
        rows.append(
            f"| `{Path(check.path).name}`{chosen} | {check.quant_type.value} | {check.size_bytes / 1e6:.1f} MB | "
            f"{check.delta_nll:+.4f} | {check.tokens_per_second:.1f} | {verdict} |"
        )
    return (
        "\n".join(front)
        + f"""

# {repo_id}

GGUF files of a model fine-tuned with lm-fine-tuning, converted by llama.cpp's own converter
(llama-cpp-python {artifacts.converter_version}) and quantized with the llama.cpp library.

| | |
|---|---|
| base model | `{lineage.base_model}` |
| dataset | `{lineage.dataset or "n/a"}` (sha256 `{lineage.dataset_sha256 or "n/a"}`) |
| method | {lineage.method or "n/a"} |
| pipeline run | `{lineage.pipeline_run_id or "n/a"}` |
| model registry entry | `{lineage.registry_id or "n/a"}` (`lmft models show {lineage.name or lineage.registry_id or ""}`) |
| eval loss (held out) | {"n/a" if lineage.eval_loss is None else f"{lineage.eval_loss:.4f}"} |

## Files and quality gate
{report.decision}

| file | type | size | ΔNLL vs reference | tokens/s | verdict |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Each file carries its lineage in its metadata (`general.base_model.*`, `general.dataset.*`, `lmft.*`).
"""
    )


@task(
    name="upload-gguf",
    retries=2,
    retry_delay_seconds=[10, 30],
    timeout_seconds=4 * 3600,  # several GB to the Hub
)
def upload_gguf(
    artifacts: GGUFArtifacts, report: QualityReport, hub: HubTarget, token: SecretStr | None = None
) -> str:
    """Create `{namespace}/{name}-GGUF` if needed and upload every GGUF with a model card; return the repo URL."""
    from huggingface_hub import HfApi

    secret = resolve_token(token).get_secret_value()
    api = HfApi(endpoint=hub.endpoint, token=secret)
    url = api.create_repo(hub.repo_id, private=hub.private, exist_ok=True)
    folder = Path(artifacts.output_dir)
    (folder / "README.md").write_text(model_card(artifacts, report, hub.repo_id))
    names = [Path(v.path).name for v in artifacts.all_files]
    api.upload_folder(
        repo_id=hub.repo_id,
        folder_path=folder,
        allow_patterns=[*names, "README.md"],
        commit_message=f"GGUF files ({', '.join(v.quant_type.value for v in artifacts.all_files)})",
    )
    return str(url)


def gguf_hub_target(output_name: str, *, remote: bool) -> HubTarget | None:
    """Where a pipeline that runs against the Hub uploads its GGUFs (`{namespace}/{name}-GGUF`);
    None when the pipeline is local (the files stay on the worker)."""
    if not remote:
        return None
    from blocks.huggingface import load_hf_credentials

    credentials = load_hf_credentials()
    return HubTarget(
        namespace=credentials.namespace, name=output_name, endpoint=credentials.endpoint
    )
