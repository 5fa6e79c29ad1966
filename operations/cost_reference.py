"""Reference workloads (0.5B to 8B, SFT and DPO, LoRA, QLoRA and full) and their estimates.

`python -m operations.cost_reference` prints the markdown table in docs/costs.md.
"""

from __future__ import annotations

from schemas.request import Method
from tasks.costs.catalog import HardwareCatalog, offline_catalog
from tasks.costs.estimate import HardwareDoesNotFit, estimate_workload
from tasks.costs.model_size import shape_from_config
from tasks.costs.workload import TrainingMode, Workload, memory_needed


def _llama(
    hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, tied: bool, **extra
) -> dict:
    return {
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        **extra,
    }


# The shape-relevant keys of the published config.json files.
REFERENCE_MODELS: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B": _llama(896, 4864, 24, 14, 2, 151936, True, model_type="qwen2"),
    "meta-llama/Llama-3.2-1B": _llama(2048, 8192, 16, 32, 8, 128256, True, head_dim=64),
    "meta-llama/Llama-3.2-3B": _llama(3072, 8192, 28, 24, 8, 128256, True, head_dim=128),
    "meta-llama/Llama-3.1-8B": _llama(4096, 14336, 32, 32, 8, 128256, False),
}
ROWS = {Method.SFT: 10_000, Method.DPO: 5_000}
MEAN_TOKENS = 512
SEQ_LEN = 1024
BATCH_SIZE = 4


def reference_workloads() -> list[tuple[str, Workload]]:
    """Every reference model × SFT/DPO × LoRA/QLoRA/full, one epoch (no padding: packed rows)."""
    out = []
    for name, config in REFERENCE_MODELS.items():
        shape = shape_from_config(config, model=name)
        for method in (Method.SFT, Method.DPO):
            for mode in (TrainingMode.LORA, TrainingMode.QLORA, TrainingMode.FULL):
                rows = ROWS[method]
                out.append(
                    (
                        name,
                        Workload(
                            shape=shape,
                            method=method,
                            mode=mode,
                            rows=rows,
                            tokens=rows * MEAN_TOKENS,
                            seq_len=SEQ_LEN,
                            batch_size=BATCH_SIZE,
                            gradient_checkpointing=mode is TrainingMode.FULL,
                        ),
                    )
                )
    return out


def reference_table(catalog: HardwareCatalog | None = None) -> str:
    """The markdown table of the reference estimates on the cheapest flavor that fits."""
    catalog = catalog or offline_catalog()
    lines = [
        "| model | params | method | mode | rows × tokens | flavor | memory | time (expected) | cost low / expected / high | timeout |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, w in reference_workloads():
        head = f"| {name} | {w.shape.parameters / 1e9:.2f} B | {w.method.value} | {w.mode.value} | {w.rows:,} × {MEAN_TOKENS} |"
        try:
            e = estimate_workload(w, catalog)
        except HardwareDoesNotFit:
            lines.append(f"{head} none fits | {memory_needed(w).total_gb:.0f} GB | – | – | – |")
            continue
        # An estimate of a workload always carries its memory and times (only free runs lack them).
        assert e.memory and e.expected_seconds is not None and e.timeout_seconds is not None
        lines.append(
            f"{head} {e.hardware} | {e.memory.total_gb:.0f} GB | {e.expected_seconds / 3600:.2f} h | "
            f"${e.low_usd:.2f} / ${e.expected_usd:.2f} / ${e.high_usd:.2f} | {e.timeout_seconds / 3600:.2f} h |"
        )
    return "\n".join(lines) + f"\n\nPrices: {catalog.describe()}."


if __name__ == "__main__":
    print(reference_table())
