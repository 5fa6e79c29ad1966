"""`lmft`: the command line of lm-fine-tuning.

`cli.app` defines the Typer app; importing the topic modules registers their commands
(run; estimate, costs, budget; convert; deploy, serve; health-check; cancel; mcp; validate;
github-dispatch, request-finetune).
"""

from cli import (  # noqa: F401
    commands,
    costs,
    deploy,
    gguf,
    github,
    jobs,
    mcp,
    operations,
    status,
    validation,
)
from cli.app import app

__all__ = ["app"]
