"""The config/models.py editor: add, update in place, idempotent, ports, unparsable files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tasks.serving.serverless_llm.models_file import (
    ModelEntry,
    ModelsFileError,
    read_entries,
    restore_model_entry,
    run_inference_dirs,
    run_models_script,
    upsert_model_entry,
)
from tasks.serving.serverless_llm.names import check_model_name
from tests.doubles.serverless_llm_repo import MODELS_PY


def entry(name: str = "pirate", **changes) -> ModelEntry:
    values = dict(
        name=name,
        model_id=name,
        display_name=name.title(),
        description="Talks like a pirate",
        hf_repo="me/pirate-GGUF",
        hf_file="pirate-Q4_K_M.gguf",
    )
    return ModelEntry(**{**values, **changes})


def test_add_keeps_every_other_line_and_allocates_next_free_port():
    result = upsert_model_entry(MODELS_PY, entry())
    assert result.added and result.port == 8103  # 8100 to 8102 are taken
    old_lines = MODELS_PY.splitlines()
    new_lines = result.source.splitlines()
    # everything before the new entry, comments included, is untouched; so is everything after
    closing = old_lines.index("}")
    assert new_lines[:closing] == old_lines[:closing]
    assert new_lines[-(len(old_lines) - closing) :] == old_lines[closing:]
    assert "        rank=6,  # hand-tuned by the maintainers" in new_lines
    added = read_entries(result.source)["pirate"]
    assert added["category"] == "ModelCategory.SMALL" and added["dockerfile"] == "llama-server"
    assert added["routing_category"] == "general" and added["n_ctx"] == 4096
    assert "subdomain" not in added  # only fields the repository's ModelConfig declares
    shared = upsert_model_entry(MODELS_PY, entry(inference_dir="tinychat-inference"))
    assert read_entries(shared.source)["pirate"]["inference_dir"] == "tinychat-inference"


def test_redeploy_is_idempotent_and_update_rewrites_only_owned_fields():
    first = upsert_model_entry(MODELS_PY, entry())
    again = upsert_model_entry(first.source, entry())
    assert not again.changed and again.source == first.source and again.port == first.port

    # A maintainer tuned the entry by hand; re-deploying keeps that and the port.
    tuned = first.source.replace(
        '        dockerfile="llama-server",\n    ),\n}',
        '        dockerfile="llama-server",\n        rank=1,  # promoted\n    ),\n}',
    )
    updated = upsert_model_entry(tuned, entry(n_ctx=2048, description="Arr"))
    assert updated.changed and not updated.added and updated.port == first.port
    values = read_entries(updated.source)["pirate"]
    assert values["n_ctx"] == 2048 and values["description"] == "Arr" and values["rank"] == 1
    assert "        rank=1,  # promoted\n" in updated.source
    assert restore_model_entry(updated.source, "pirate", updated.previous_entry) == tuned


def test_update_of_an_existing_entry_without_trailing_comma():
    result = upsert_model_entry(
        MODELS_PY, entry("coder", hf_repo="me/coder-GGUF", hf_file="coder.gguf", dockerfile=None)
    )
    values = read_entries(result.source)["coder"]
    assert (
        values["port"] == 8102 and values["hf_repo"] == "me/coder-GGUF" and values["n_ctx"] == 4096
    )
    assert values["description"] == "Talks like a pirate"
    compile(result.source, "models.py", "exec")
    assert restore_model_entry(result.source, "coder", result.previous_entry) == MODELS_PY


def test_port_collision_is_refused_and_allocation_skips_taken_ports():
    with pytest.raises(ModelsFileError, match="port 8100 is already used by model 'tinychat'"):
        upsert_model_entry(MODELS_PY, entry(port=8100))
    crowded = MODELS_PY.replace("port=8101", "port=8103")
    assert upsert_model_entry(crowded, entry()).port == 8101
    duplicated = MODELS_PY.replace("port=8101", "port=8100")
    with pytest.raises(ModelsFileError, match="share port 8100"):
        upsert_model_entry(duplicated, entry())


def test_unparsable_file_gives_a_clear_error():
    broken = MODELS_PY.replace('"tinychat": ModelConfig(', '"tinychat": ModelConfig((')
    with pytest.raises(ModelsFileError, match=r"config/models.py is not valid Python \(line \d+"):
        upsert_model_entry(broken, entry())
    with pytest.raises(ModelsFileError, match="no top-level 'MODELS"):
        upsert_model_entry(MODELS_PY.replace("MODELS: dict", "OTHER: dict"), entry())


def test_unknown_category_is_refused():
    with pytest.raises(ModelsFileError, match="HUGE.*not a member of ModelCategory"):
        upsert_model_entry(MODELS_PY, entry(category="HUGE"))


@pytest.mark.parametrize(
    "name", ["Pirate", "pi-rate", "x", "a;rm -rf /", "$(id)", "../x", "1abc", "a" * 41]
)
def test_model_names_are_strict(name):
    with pytest.raises(ValueError, match="lowercase letters/digits"):
        check_model_name(name)
    with pytest.raises(ValueError):
        upsert_model_entry(MODELS_PY, entry().model_copy(update={"name": name}))


def test_models_script_prints_the_entry(tmp_path):
    (tmp_path / "config").mkdir()
    source = upsert_model_entry(MODELS_PY, entry(inference_dir="tinychat-inference")).source
    (tmp_path / "config" / "models.py").write_text(source)
    printed = run_models_script(tmp_path, "pirate")
    assert {k: printed[k] for k in ("model_name", "model_dir", "model_repo", "model_file")} == {
        "model_name": "pirate",
        "model_dir": "tinychat-inference",
        "model_repo": "me/pirate-GGUF",
        "model_file": "pirate-Q4_K_M.gguf",
    }
    assert run_inference_dirs(tmp_path).count("tinychat-inference") == 3
    with pytest.raises(ModelsFileError, match="failed in the edited clone"):
        run_models_script(tmp_path, "absent")
    assert (
        subprocess.run([sys.executable, "config/models.py", "pirate"], cwd=tmp_path).returncode == 0
    )
