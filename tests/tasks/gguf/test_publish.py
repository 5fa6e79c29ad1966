"""Uploading GGUFs + model card with the real `HfApi` against a local server speaking the Hub's HTTP protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi
from pydantic import SecretStr

from schemas.gguf import Answer, QualityReport, VariantCheck
from tasks.gguf import (
    GGUFArtifacts,
    GGUFLineage,
    GGUFVariant,
    HubCredentialsMissing,
    HubTarget,
    QuantType,
)
from tasks.gguf.publish import resolve_token, upload_gguf


@pytest.fixture
def hub(hf_server):
    """The Hub double (tests/doubles): repositories with LFS files going up through Xet, as the
    real Hub takes them from `upload_folder`; it answers only the server's token."""
    return hf_server


def _check(variant: GGUFVariant, passed: bool) -> VariantCheck:
    return VariantCheck(
        quant_type=variant.quant_type,
        path=variant.path,
        size_bytes=variant.size_bytes,
        load_seconds=0.1,
        tokens_per_second=50.0,
        mean_nll=3.0,
        delta_nll=0.0 if passed else 0.2,
        answers=[Answer(prompt="Hi", text="Hello!", finish_reason="stop", tokens=3)],
        passed=passed,
        reasons=[] if passed else ["mean NLL rose by 0.2000 nats/token (> 0.05)"],
    )


def test_upload_gguf_sends_every_file_and_a_model_card(hub, tmp_path):
    files = {}
    for quant in (QuantType.F16, QuantType.Q4_K_M):
        path = tmp_path / f"pirate-{quant.value}.gguf"
        path.write_bytes(b"GGUF" + quant.value.encode())
        files[quant] = GGUFVariant(
            quant_type=quant, path=str(path), size_bytes=path.stat().st_size, seconds=0.1
        )
    (tmp_path / "converter.log").write_text("not uploaded")
    lineage = GGUFLineage(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", method="sft", pipeline_run_id="run-9"
    )
    artifacts = GGUFArtifacts(
        model="m",
        output_dir=str(tmp_path),
        reference=files[QuantType.F16],
        variants=[files[QuantType.Q4_K_M]],
        converter_version="0.3.36",
        lineage=lineage,
    )
    report = QualityReport(
        reference=_check(files[QuantType.F16], True),
        variants=[_check(files[QuantType.Q4_K_M], False)],
        max_nll_increase=0.05,
        held_out_texts=1,
        held_out_tokens=10,
        chosen=files[QuantType.F16].path,
        chosen_type=QuantType.F16,
        decision="Deploying the F16 reference: no quantized variant passed.",
    )
    target = HubTarget(namespace="captain", name="pirate", endpoint=hub.url)

    url = upload_gguf.fn(artifacts, report, target, SecretStr(hub.token))

    assert url.endswith("/captain/pirate-GGUF")
    api = HfApi(endpoint=hub.url, token=hub.token)
    assert set(api.list_repo_files("captain/pirate-GGUF")) == {
        ".gitattributes", "pirate-F16.gguf", "pirate-Q4_K_M.gguf", "README.md"
    }  # fmt: skip
    quantized = api.hf_hub_download("captain/pirate-GGUF", "pirate-Q4_K_M.gguf", cache_dir=tmp_path)
    assert Path(quantized).read_bytes() == b"GGUFQ4_K_M"
    card = Path(api.hf_hub_download("captain/pirate-GGUF", "README.md", cache_dir=tmp_path))
    card_text = card.read_text()
    assert "base_model:\n- HuggingFaceTB/SmolLM2-135M-Instruct" in card_text
    assert "`pirate-F16.gguf` (deployed)" in card_text and "run-9" in card_text
    # The double answers 401 to any other token: every request carried the one given.
    assert hub.requests and all(status != 401 for *_, status in hub.requests)


def test_upload_with_a_wrong_token_fails_and_names_the_repository(hub, tmp_path):
    variant = tmp_path / "m-F16.gguf"
    variant.write_bytes(b"GGUF")
    f16 = GGUFVariant(quant_type=QuantType.F16, path=str(variant), size_bytes=4, seconds=0.1)
    artifacts = GGUFArtifacts(
        model="m",
        output_dir=str(tmp_path),
        reference=f16,
        variants=[],
        converter_version="x",
        lineage=GGUFLineage(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", method="sft"),
    )
    report = QualityReport(
        reference=_check(f16, True), variants=[], max_nll_increase=0.05, held_out_texts=1,
        held_out_tokens=10, chosen=f16.path, chosen_type=QuantType.F16, decision="F16",
    )  # fmt: skip
    target = HubTarget(namespace="captain", name="m", endpoint=hub.url)
    with pytest.raises(Exception, match="401|Invalid credentials"):
        upload_gguf.fn(artifacts, report, target, SecretStr("hf_not_the_token"))
    assert hub.repos.get("captain/m-GGUF") is None  # nothing was created


def test_upload_refused_without_a_token(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("LMFT_HF_NAMESPACE", raising=False)
    # no credentials Block (whatever other tests saved on the session's Prefect server) ...
    monkeypatch.setenv("LMFT_HF_CREDENTIALS_BLOCK", f"absent-{tmp_path.name}")
    # ... and no stored `hf auth login` token either
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    with pytest.raises(HubCredentialsMissing, match="needs a Hugging Face token"):
        resolve_token(None)
