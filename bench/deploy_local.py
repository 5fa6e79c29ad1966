"""Time the local serving target on the embedded SmolLM2 GGUF.

    python -m bench.deploy_local

Prints the seconds from process start to a healthy `/v1/models`, and the latency and
decode speed of the smoke chat completion (3 runs after a warm-up).
"""

from __future__ import annotations

import statistics
import time

from tasks.jobs.base_model import embedded_gguf_path
from tasks.serving.endpoints import smoke_chat
from tasks.serving.local import start_local_server, stop_local_server


def main() -> None:
    started = time.monotonic()
    server = start_local_server(str(embedded_gguf_path()), "bench-smollm2", n_ctx=1024)
    ready = time.monotonic() - started
    try:
        smoke_chat(server.url)
        latencies, speeds = [], []
        for _ in range(3):
            t0 = time.monotonic()
            result = smoke_chat(server.url)
            elapsed = time.monotonic() - t0
            latencies.append(elapsed)
            speeds.append((result.completion_tokens or 0) / elapsed)
    finally:
        stop_local_server("bench-smollm2")
    print(f"server healthy after        {ready:.2f} s")
    print(f"smoke chat latency (median) {statistics.median(latencies):.2f} s")
    print(
        f"decode speed (median)       {statistics.median(speeds):.1f} tokens/s (incl. prompt processing)"
    )


if __name__ == "__main__":
    main()
