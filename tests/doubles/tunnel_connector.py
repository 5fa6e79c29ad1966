"""A stand-in for `cloudflared tunnel run`: connects an origin to the local `TunnelEdge`.

    python -m tests.doubles.tunnel_connector --edge http://127.0.0.1:PORT --origin http://127.0.0.1:8765 \
        --id mcp-blue --grace-period 30

Like cloudflared, on SIGTERM or SIGINT it stops taking new requests (unregisters from the
edge), waits for the requests in flight to finish, at most the grace period, then exits:
cloudflared's `waitForSignalWithGraceShutdown` (cmd/cloudflared/tunnel/signal.go) closes
`graceShutdownC` (the connections unregister from the edge and finish what they serve) and
shuts down when the tunnel routines return or `--grace-period` has passed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edge", required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--grace-period", type=float, default=30.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    httpx.post(
        f"{args.edge}/_edge/connectors", json={"id": args.id, "origin": args.origin}
    ).raise_for_status()
    stop.wait()
    deadline = time.monotonic() + args.grace_period
    in_flight = httpx.delete(f"{args.edge}/_edge/connectors/{args.id}").json()["in_flight"]
    while in_flight and time.monotonic() < deadline:
        time.sleep(0.1)
        in_flight = httpx.get(f"{args.edge}/_edge/connectors/{args.id}").json()["in_flight"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
