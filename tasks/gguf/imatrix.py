"""Importance matrix for i-quants, computed from training text.

llama.cpp's importance matrix holds, for every matrix-multiplication weight, the mean
squared activation of each input column (what `llama-imatrix` accumulates as
`in_sum2 / counts`). `llama-imatrix` is a command-line tool, not part of the library the
Python binding exposes, so the same statistic is collected here with forward hooks on the
`torch.nn.Linear` layers of the Hugging Face checkpoint the GGUF was converted from. The
GGUF tensor names come from gguf-py's own HF → GGUF tensor-name map, and only names the
reference GGUF actually holds are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ImportanceMatrixError(RuntimeError):
    """The importance matrix could not be computed; the message says why."""


def compute_importance_matrix(
    model_dir: Path, reference: Path, texts: list[str], *, max_tokens: int = 512
) -> dict[str, np.ndarray]:
    """Mean squared input activation per column of every linear weight, keyed by GGUF tensor name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import gguf

    if not texts:
        raise ImportanceMatrixError(
            "an importance matrix needs training text; give the dataset (held-out slice)"
        )
    reader = gguf.GGUFReader(reference)
    arch_name = reader.fields["general.architecture"].contents()
    blocks = reader.fields[f"{arch_name}.block_count"].contents()
    tensor_names = {t.name for t in reader.tensors}
    arch = next((a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name), None)
    if arch is None:
        raise ImportanceMatrixError(
            f"gguf-py has no tensor-name map for architecture {arch_name!r}"
        )
    name_map = gguf.get_tensor_name_map(arch, blocks)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def collect(gguf_name: str):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(dim=0)
            counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]

        return hook

    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = name_map.get_name(f"{module_name}.weight", try_suffixes=(".weight",))
            if gguf_name in tensor_names:
                hooks.append(module.register_forward_hook(collect(gguf_name)))
    if not hooks:
        raise ImportanceMatrixError(
            f"no linear layer of {model_dir} maps to a tensor of {reference.name}"
        )
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(
                    text, return_tensors="pt", truncation=True, max_length=max_tokens
                ).input_ids
                model(ids)
    finally:
        for handle in hooks:
            handle.remove()
    return {name: (sums[name] / counts[name]).numpy().astype(np.float32) for name in sums}
