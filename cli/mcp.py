"""`lmft mcp`: serve the MCP tools to an AI assistant."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.app import app, fail


@app.command()
def mcp(
    http: Annotated[
        bool, typer.Option("--http", help="Serve streamable HTTP instead of stdio.")
    ] = False,
    host: Annotated[str, typer.Option(help="HTTP: address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP: port.")] = 8765,
    rate_limit: Annotated[
        float, typer.Option(help="HTTP: sustained requests per second per client.")
    ] = 5.0,
    burst: Annotated[int, typer.Option(help="HTTP: requests a client may send at once.")] = 20,
) -> None:
    """Serve the MCP tools: stdio by default; `--http` needs the token in $LMFT_MCP_TOKEN."""
    from prefect.settings import PREFECT_API_URL
    from pydantic import ValidationError

    from mcp_adapter.transports import TOKEN_ENV, HttpSettings, run_http, run_stdio

    settings = None
    if http:
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            raise fail(
                f"--http needs a bearer token: set {TOKEN_ENV} (e.g. `export {TOKEN_ENV}=$(openssl rand -hex 32)`)"
            )
        try:
            settings = HttpSettings(
                host=host, port=port, token=token, requests_per_second=rate_limit, burst=burst
            )
        except ValidationError as exc:
            refused = "; ".join(
                f"{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
            )
            raise fail(f"cannot serve HTTP: {refused}") from None
    if not PREFECT_API_URL.value():
        raise fail(
            "PREFECT_API_URL is not set: point it at the Prefect server whose deployments the tools start, "
            "e.g. `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` after `prefect server start`"
        )
    if settings is None:
        run_stdio()
    else:
        run_http(settings)
