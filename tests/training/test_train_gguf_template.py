"""A model trained on its answers only converts to a GGUF whose chat template llama.cpp can use."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tasks.gguf import fetch_converter, read_metadata
from tasks.gguf.converter import run_converter
from training import TRAIN_SCRIPT

# ChatML with TRL-style generation markers around the assistant's answers.
MARKED_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{% generation %}{{ message['content'] }}<|im_end|>\n{% endgeneration %}"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_the_gguf_template_has_no_generation_tags_and_llama_cpp_chats_through_it(
    tiny_llama, tmp_path
):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    base = shutil.copytree(tiny_llama, tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = MARKED_TEMPLATE
    tokenizer.save_pretrained(base)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "Arr"},
            ]
        }
        for i in range(8)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    output = tmp_path / "out"
    command = [
        sys.executable, str(TRAIN_SCRIPT), "--model_name_or_path", str(base),
        "--dataset_path", str(data), "--output_dir", str(output), "--max_steps", "2",
        "--max_length", "64", "--per_device_train_batch_size", "4", "--eval_ratio", "0",
        "--save_steps", "1000", "--save_minutes", "0",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    saved = AutoTokenizer.from_pretrained(output / "model").chat_template
    assert "{% generation %}" not in saved and "endgeneration" not in saved
    assert saved == MARKED_TEMPLATE.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )

    gguf = tmp_path / "model.gguf"
    run_converter(fetch_converter(), output / "model", gguf)
    embedded = str(read_metadata(gguf)["tokenizer.chat_template"])
    assert "<|im_start|>assistant" in embedded
    assert "{% generation %}" not in embedded and "endgeneration" not in embedded

    llm = Llama(model_path=str(gguf), n_ctx=128, verbose=False)
    answer = llm.create_chat_completion(
        messages=[{"role": "user", "content": "q1"}], max_tokens=4, temperature=0
    )
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["prompt_tokens"] > 0
