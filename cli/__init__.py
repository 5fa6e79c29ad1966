"""`lmft`: the command line of lm-fine-tuning.

`cli.app` defines the Typer app; importing the topic modules registers their commands
(run; estimate, costs, budget; approve, reject; convert; deploy, serve; health-check; cancel; mcp; validate).
"""

from cli import approval, commands, costs, deploy, gguf, jobs, mcp, operations, validation  # noqa: F401
from cli.app import app

__all__ = ["app"]
