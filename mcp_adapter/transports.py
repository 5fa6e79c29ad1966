"""How the MCP server is reached: stdio for a local assistant, streamable HTTP for remote ones.

HTTP requires `Authorization: Bearer <token>` (401 without it, through FastMCP's auth provider).
In front of it, `HttpGuard` answers in HTTP terms, before any MCP message is read:

- each client (by address) gets a request rate and a burst; above it, **429** with `Retry-After`
  (FastMCP's rate-limiting middleware answers inside the MCP session, as a JSON-RPC error in an
  HTTP 200, which clients and proxies do not treat as a rate limit);
- failed authentications are rate limited on their own, much tighter: after a burst of 401s the
  client gets 429 until its allowance refills, so a token cannot be guessed at speed;
- a token in the URL's query string is refused (400): URLs end up in logs and histories. The
  access log never shows query strings at all.

`GET /healthz` answers without a token with the instance's name, which the keep-alive on
GitHub Actions (`operations.mcp_keepalive`) uses to see its successor answer through the tunnel.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import socket
import time
from collections import OrderedDict
from urllib.parse import parse_qsl

from fastmcp.server.auth import AccessToken, TokenVerifier
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
    failed_auth_per_minute: float = Field(
        default=6.0, gt=0, le=600, description="Sustained failed authentications per client."
    )
    failed_auth_burst: int = Field(
        default=10, ge=1, le=1000, description="Failed authentications a client may make at once."
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        value = token.get_secret_value()
        if any(c.isspace() for c in value):
            raise ValueError(
                f"{TOKEN_ENV} must not contain spaces or other whitespace; "
                "generate one with `openssl rand -hex 32`"
            )
        if len(value) < MIN_TOKEN_LENGTH:
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


class TokenBucket:
    """`capacity` requests at once, refilled at `rate` per second (the classic token bucket).

    FastMCP has one, but it does not say how long to wait, which `Retry-After` needs.
    """

    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity, self.rate = capacity, rate
        self.tokens, self.updated = float(capacity), time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def retry_after(self) -> int:
        """Whole seconds until one request is allowed again (0: allowed now)."""
        self._refill()
        return 0 if self.tokens >= 1 else math.ceil((1 - self.tokens) / self.rate)

    def take(self) -> int:
        """Spend one request; return 0, or the seconds to wait (nothing is spent then)."""
        wait = self.retry_after()
        if not wait:
            self.tokens -= 1
        return wait


class ClientBuckets:
    """One `TokenBucket` per client address; the least recently seen are forgotten past `size`."""

    def __init__(self, capacity: float, rate: float, size: int = 10_000) -> None:
        self.capacity, self.rate, self.size = capacity, rate, size
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __getitem__(self, client: str) -> TokenBucket:
        bucket = self.buckets.pop(client, None) or TokenBucket(self.capacity, self.rate)
        self.buckets[client] = bucket
        while len(self.buckets) > self.size:
            self.buckets.popitem(last=False)
        return bucket


SECRET_QUERY_KEYS = frozenset(
    {"token", "access_token", "auth", "authorization", "api_key", "apikey", "key", "bearer"}
)


class HttpGuard:
    """ASGI middleware in front of the MCP app: rate limits as HTTP 429, no token in URLs."""

    def __init__(self, app, settings: HttpSettings) -> None:
        self.app = app
        self.requests = ClientBuckets(settings.burst, settings.requests_per_second)
        self.failures = ClientBuckets(
            settings.failed_auth_burst, settings.failed_auth_per_minute / 60
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        query = scope.get("query_string", b"").decode("latin-1")
        if any(key.lower() in SECRET_QUERY_KEYS for key, _ in parse_qsl(query)):
            await _answer(
                send,
                400,
                "invalid_request",
                "do not put a token in the URL: send it as `Authorization: Bearer <token>`",
            )
            return
        wait = self.failures[client].retry_after()
        if wait:
            await _answer(
                send,
                429,
                "too_many_failed_authentications",
                f"too many failed authentications from {client}; retry in {wait} s",
                retry_after=wait,
            )
            return
        wait = self.requests[client].take()
        if wait:
            await _answer(
                send,
                429,
                "rate_limited",
                f"rate limit exceeded for {client}; retry in {wait} s",
                retry_after=wait,
            )
            return

        async def watch(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.failures[client].take()
            await send(message)

        await self.app(scope, receive, watch)


async def _answer(send, status: int, error: str, description: str, retry_after: int = 0) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class NoQueryStrings(logging.Filter):
    """Drop the query string from uvicorn's access log lines (URLs may carry secrets)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True


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
    from starlette.middleware import Middleware

    server.custom_route("/healthz", methods=["GET"])(health)
    server.auth = BearerTokenVerifier(settings.token)
    logging.getLogger("uvicorn.access").addFilter(NoQueryStrings())
    server.run(
        transport="http",
        host=settings.host,
        port=settings.port,
        show_banner=False,
        middleware=[Middleware(HttpGuard, settings=settings)],
    )
