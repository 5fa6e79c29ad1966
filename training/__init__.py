"""The training job script. `train.py` is shipped as a file (locally and to HF Jobs)."""

from pathlib import Path

TRAIN_SCRIPT = Path(__file__).with_name("train.py")
