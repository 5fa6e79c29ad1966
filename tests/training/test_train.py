"""`training/train.py` run as the jobs run it: a full disk at the final save leaves no model behind."""

from __future__ import annotations

import json
import subprocess
import sys

from training import TRAIN_SCRIPT


def test_a_full_disk_at_the_final_save_leaves_no_model_that_looks_finished(
    tiny_llama, small_disk, tmp_path
):
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(8)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    output = small_disk / "output"
    command = [
        sys.executable, str(TRAIN_SCRIPT),
        "--model_name_or_path", str(tiny_llama), "--dataset_path", str(data),
        "--method", "sft", "--max_steps", "1", "--max_length", "32", "--loss_on", "all",
        "--per_device_train_batch_size", "2", "--use_lora", "False",
        "--output_dir", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)

    assert result.returncode != 0
    assert f"the disk holding {output} is full" in result.stdout + result.stderr
    assert not (output / "model").exists()
    assert not (output / "result.json").exists()
    assert not list(output.glob("model.partial-*"))  # the partial save was removed
    assert "LMFT_RESULT" not in result.stdout
