"""`lmft`: the command line of lm-fine-tuning."""

from cli.app import app

__all__ = ["app"]
