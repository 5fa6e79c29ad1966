"""Prefect Blocks: this project's configuration and secrets."""

from __future__ import annotations

from typing import TypeVar, cast

from prefect.blocks.core import Block

B = TypeVar("B", bound=Block)


def load_block(kind: type[B], name: str) -> B:
    """The saved block `name` of `kind`, loaded synchronously (raises ValueError when there is none).

    `Block.load` is an async_dispatch method, typed as "the block or a coroutine"; the callers
    here are sync functions, which get the block.
    """
    return cast(B, kind.load(name))
