"""A local stand-in for Cloudflare's edge in front of a tunnel with replicas.

A Cloudflare Tunnel can have several connectors (`cloudflared tunnel run` with the same token,
"replicas"); the edge sends each request to one of the connected ones. A connector that gets
SIGTERM unregisters, takes no new requests and lets those in flight finish within its
`--grace-period` before it exits (cloudflared's graceful shutdown). This double keeps that
contract on a local port: connectors (`tests.doubles.tunnel_connector`) register their origin,
the edge forwards each request, streaming, to one registered origin in turn, and counts the
requests in flight per connector. With no connector it answers 530, as Cloudflare does when a
tunnel has no healthy connector.

The wire protocol between cloudflared and the edge (QUIC/HTTP2 multiplexing) is not
reproduced: what the keep-alive depends on is the routing and the draining.
"""

from __future__ import annotations

import itertools
import threading

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "host",
    "content-length",
}


class TunnelEdge:
    """`with TunnelEdge() as edge:` serves on `edge.url` until the block ends."""

    def __init__(self) -> None:
        self.connectors: dict[str, str] = {}  # id -> origin URL, in registration order
        self.in_flight: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.unroutable = 0
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0))
        app = Starlette(
            routes=[
                Route("/_edge/connectors", self._register, methods=["POST"]),
                Route("/_edge/connectors/{connector}", self._connector, methods=["GET", "DELETE"]),
                Route(
                    "/{path:path}", self._forward, methods=["GET", "POST", "DELETE", "PUT", "PATCH"]
                ),
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> TunnelEdge:
        self._thread.start()
        while not self._server.started:
            threading.Event().wait(0.05)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _register(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.connectors[body["id"]] = body["origin"].rstrip("/")
            self.in_flight.setdefault(body["id"], 0)
            self.served.setdefault(body["id"], 0)
        return JSONResponse({"registered": body["id"]}, status_code=201)

    async def _connector(self, request: Request) -> Response:
        connector = request.path_params["connector"]
        with self._lock:
            if request.method == "DELETE":
                self.connectors.pop(connector, None)
            return JSONResponse({"in_flight": self.in_flight.get(connector, 0)})

    def _pick(self) -> tuple[str, str] | None:
        with self._lock:
            if not self.connectors:
                return None
            ids = list(self.connectors)
            connector = ids[next(self._turn) % len(ids)]
            self.in_flight[connector] += 1
            self.served[connector] += 1
            return connector, self.connectors[connector]

    def _done(self, connector: str) -> None:
        with self._lock:
            self.in_flight[connector] -= 1

    async def _forward(self, request: Request) -> Response:
        picked = self._pick()
        if picked is None:
            self.unroutable += 1
            return Response("error code: 1033 (no connector for this tunnel)", status_code=530)
        connector, origin = picked
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = self._client.build_request(
            request.method,
            origin + request.url.path,
            params=request.query_params,
            headers=headers,
            content=await request.body(),
        )
        try:
            response = await self._client.send(upstream, stream=True)
        except httpx.HTTPError:
            self._done(connector)
            return Response("error code: 502 (origin unreachable)", status_code=502)

        async def body():
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()
                self._done(connector)

        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(body(), status_code=response.status_code, headers=out_headers)
