"""Where lm-fine-tuning keeps its files on the machine that runs the flows."""

from __future__ import annotations

import os
from pathlib import Path


def lmft_home() -> Path:
    """Root folder for jobs, materialised models and caches (`$LMFT_HOME`, default `~/.lmft`)."""
    home = Path(os.environ.get("LMFT_HOME", "~/.lmft")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def jobs_dir() -> Path:
    path = lmft_home() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    path = lmft_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
