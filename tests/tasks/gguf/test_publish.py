"""Uploading GGUFs + model card with the real `HfApi` against a local server speaking the Hub's HTTP protocol."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
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


class HubDouble(BaseHTTPRequestHandler):
    """The endpoints `create_repo` + `upload_folder` use for small files (regular, non-LFS uploads)."""

    repos: dict[str, dict[str, bytes]] = {}
    tokens: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.tokens.append(self.headers.get("Authorization", ""))
        base = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            request = json.loads(body)
            repo_id = (
                f"{request['organization']}/{request['name']}"
                if request.get("organization")
                else request["name"]
            )
            self.repos.setdefault(repo_id, {})
            return self._reply({"url": f"{base}/{repo_id}", "name": repo_id, "id": repo_id})
        if (
            self.path == "/api/validate-yaml"
        ):  # the client checks README.md front matter before committing
            return self._reply({"errors": [], "warnings": []})
        parts = self.path.split("/")  # /api/models/{ns}/{name}/{preupload|commit}/{revision}
        repo_id, action = f"{parts[3]}/{parts[4]}", parts[5]
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._reply(
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                }
            )
        if action == "commit":
            for line in body.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    self.repos[repo_id][entry["value"]["path"]] = base64.b64decode(
                        entry["value"]["content"]
                    )
            return self._reply(
                {"commitUrl": f"{base}/{repo_id}/commit/{'0' * 40}", "commitOid": "0" * 40}
            )
        return self._reply({"error": f"unexpected {self.path}"}, status=404)


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(
        constants, "HF_HUB_OFFLINE", False
    )  # the session is offline; this Hub is on 127.0.0.1
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubDouble)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    HubDouble.repos.clear()
    HubDouble.tokens.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
    target = HubTarget(namespace="captain", name="pirate", endpoint=hub)

    url = upload_gguf.fn(artifacts, report, target, SecretStr("hf_secret_token"))

    assert url.endswith("/captain/pirate-GGUF")
    uploaded = HubDouble.repos["captain/pirate-GGUF"]
    assert set(uploaded) == {"pirate-F16.gguf", "pirate-Q4_K_M.gguf", "README.md"}
    assert uploaded["pirate-Q4_K_M.gguf"] == b"GGUFQ4_K_M"
    card = uploaded["README.md"].decode()
    assert "base_model:\n- HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "`pirate-F16.gguf` (deployed)" in card and "run-9" in card
    assert all(t == "Bearer hf_secret_token" for t in HubDouble.tokens)


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
