"""`lmft`: the command line of lm-fine-tuning.

`cli.app` defines the Typer app; importing the topic modules registers their commands
(run; estimate, costs, budget; approve, reject; convert; deploy, serve; models; health-check; cancel; mcp; validate;
github-dispatch, request-finetune).
"""

from cli import (  # noqa: F401
    approval,
    commands,
    costs,
    deploy,
    gguf,
    github,
    jobs,
    mcp,
    models,
    operations,
    status,
    validation,
)
from cli.app import app

__all__ = ["app"]
