"""How the MCP server is reached: stdio for a local assistant, streamable HTTP for remote ones.

HTTP requires `Authorization: Bearer <token>` (401 without it) and limits each client
(by address) to a request rate, with FastMCP's auth provider and rate-limiting middleware.
`GET /healthz` answers without a token with the instance's name, which the keep-alive on
GitHub Actions (`operations.mcp_keepalive`) uses to see its successor answer through the tunnel.
"""

from __future__ import annotations

import hmac
import os
import socket

from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_http_request
from fastmcp.server.middleware.middleware import MiddlewareContext
from fastmcp.server.middleware.rate_limiting import RateLimitingMiddleware
from pydantic import BaseModel, Field, SecretStr, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp_adapter.server import server

TOKEN_ENV = "LMFT_MCP_TOKEN"
INSTANCE_ENV = "LMFT_MCP_INSTANCE"
"""The name `/healthz` answers with (set by `operations.mcp_keepalive`; default: the host name)."""
MIN_TOKEN_LENGTH = 16


class HttpSettings(BaseModel):
    """Where and how the HTTP transport listens."""

    host: str = Field(
        default="127.0.0.1", description="Address to bind; 0.0.0.0 exposes it to the network."
    )
    port: int = Field(default=8765, ge=1, le=65535)
    token: SecretStr = Field(description=f"Bearer token clients must send (from ${TOKEN_ENV}).")
    requests_per_second: float = Field(
        default=5.0, gt=0, le=1000, description="Sustained rate per client."
    )
    burst: int = Field(
        default=20, ge=1, le=10_000, description="Requests a client may send at once."
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"{TOKEN_ENV} must be at least {MIN_TOKEN_LENGTH} characters; "
                "generate one with `openssl rand -hex 32`"
            )
        return token


class BearerTokenVerifier(TokenVerifier):
    """Accept one shared bearer token, compared in constant time.

    FastMCP's `StaticTokenVerifier` is documented as a development aid and looks tokens up in
    a dict (not constant time); this is the same `TokenVerifier` contract with
    `hmac.compare_digest`, and the token kept as a `SecretStr`.
    """

    def __init__(self, token: SecretStr):
        super().__init__()
        self._token = token.get_secret_value().encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if not hmac.compare_digest(token.encode(), self._token):
            return None
        return AccessToken(token=token, client_id="lmft-mcp", scopes=[])


def client_address(context: MiddlewareContext) -> str:
    """Rate-limit key: the caller's address (every HTTP client shares the one token)."""
    request = get_http_request()
    return request.client.host if request.client else "unknown"


def run_stdio() -> None:
    """Serve the tools over stdin/stdout until the client closes them."""
    server.run(transport="stdio", show_banner=False)


async def health(request: Request) -> JSONResponse:
    """Liveness, without a token: which instance answered."""
    return JSONResponse(
        {"status": "ok", "instance": os.environ.get(INSTANCE_ENV) or socket.gethostname()}
    )


def run_http(settings: HttpSettings) -> None:
    """Serve the tools over streamable HTTP at `http://host:port/mcp` until interrupted."""
    server.custom_route("/healthz", methods=["GET"])(health)
    server.auth = BearerTokenVerifier(settings.token)
    server.add_middleware(
        RateLimitingMiddleware(
            max_requests_per_second=settings.requests_per_second,
            burst_capacity=settings.burst,
            get_client_id=client_address,
        )
    )
    server.run(transport="http", host=settings.host, port=settings.port, show_banner=False)
