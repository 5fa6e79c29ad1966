"""N concurrent tiny `finetune` runs through one Prefect server and two workers: SQLite vs PostgreSQL.

    python -m bench.scale              # quick: N = 1, 2, 4 (a few minutes on 2 cores)
    python -m bench.scale --full       # N = 1, 2, 4, 8

For each server database (SQLite in a fresh PREFECT_HOME; PostgreSQL in a throw-away cluster
of Debian's `postgresql`, tests/postgres.py), this starts `prefect server start`, a process
pool, the `finetune` deployment as prefect.yaml declares it (concurrency limit 2, ENQUEUE) run
from this checkout, and two `prefect worker start` processes. For each N it creates N runs at
once (a random 2-layer llama, 1 training step, no GGUF, no deployment) and, until they have all
finished, calls the MCP tool `get_job_status` on them in turn (in-memory fastmcp client: the
tool code and its Prefect API round trips). Then the budget ledger on each database: the
reservations/s of two processes racing (bench.costs). Prints one table.

runs/minute = N ÷ (last run's end − creation) × 60. The deployment's limit of 2 and the
workers' 1 s polling bound it; the database shows in the API latency and the ledger.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.costs import ledger_throughput
from bench.mcp_latency import percentiles
from tests.postgres import PostgresCluster, PostgresServer
from tests.team import Team, all_terminal, read_runs, team_server, write_chats
from tests.tiny_models import build_tiny_llama, save_tokenizer

LEDGER_PROCESSES = 2
LEDGER_RESERVATIONS = 100


async def status_latencies(ids: list, stop_after: float) -> list[float]:
    """Call `get_job_status` on the runs in turn until they have all finished; the latencies."""
    from fastmcp import Client

    from mcp_adapter.server import server

    samples: list[float] = []
    deadline = time.monotonic() + stop_after
    async with Client(server) as client:
        while time.monotonic() < deadline:
            finished = 0
            for run_id in ids:
                started = time.perf_counter()
                result = await client.call_tool("get_job_status", {"run_id": str(run_id)})
                samples.append(time.perf_counter() - started)
                content = result.structured_content
                if content["error"]:
                    raise RuntimeError(content["error"])
                finished += content["run"]["state"] in (
                    "completed",
                    "failed",
                    "crashed",
                    "cancelled",
                )
            if finished == len(ids):
                return samples
    raise TimeoutError(f"runs not finished within {stop_after} s")


def measure(team: Team, n: int, model: Path, data: Path) -> tuple[float, float, int]:
    """runs/minute, p95 get_job_status ms and the number of calls, for `n` runs at once."""
    import anyio

    created = time.time()
    ids = [team.submit(f"scale-{n}-{i}", model, data, steps=1) for i in range(n)]
    samples = anyio.run(status_latencies, ids, 1800.0)
    runs = read_runs(ids)
    if not all_terminal(runs) or any(not r.state.is_completed() for r in runs):
        states = [r.state.name for r in runs]
        raise RuntimeError(f"runs did not all complete: {states}\n{team.diagnostics()}")
    last_end = max(r.end_time.timestamp() for r in runs)
    _, p95 = percentiles(samples) if len(samples) > 1 else (samples[0], samples[0])
    return n / (last_end - created) * 60, p95 * 1000, len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="N = 1, 2, 4, 8 (default 1, 2, 4).")
    args = parser.parse_args()
    sizes = (1, 2, 4, 8) if args.full else (1, 2, 4)
    reason = PostgresCluster.available()
    if reason:
        raise SystemExit(f"bench.scale needs PostgreSQL: {reason}")

    work = Path(tempfile.mkdtemp(prefix="lmft-scale-"))
    # Not under `work` alone: the cluster runs as `postgres` when this runs as root.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="lmft-scale-pg-")))
    rows: list[tuple[str, int, float, float, int]] = []
    ledger: dict[str, float] = {}
    try:
        postgres: PostgresServer = cluster.start()
        model = build_tiny_llama(work / "tiny-llama", save_tokenizer(work / "tokenizer"))
        data = write_chats(work / "chats.jsonl")
        databases = {
            "sqlite": None,
            "postgresql": postgres.database_url(postgres.create_database("prefect"), "asyncpg"),
        }
        for name, url in databases.items():
            with team_server(work / name, database_url=url) as team:
                team.start_worker(f"{name}-worker-1")
                team.start_worker(f"{name}-worker-2")
                for n in sizes:
                    per_minute, p95, calls = measure(team, n, model, data)
                    rows.append((name, n, per_minute, p95, calls))
                    print(
                        f"{name:<10} N={n}: {per_minute:.1f} runs/min, p95 {p95:.0f} ms", flush=True
                    )
        ledger["sqlite"] = ledger_throughput(LEDGER_PROCESSES, LEDGER_RESERVATIONS)
        ledger["postgresql"] = ledger_throughput(
            LEDGER_PROCESSES,
            LEDGER_RESERVATIONS,
            url=postgres.database_url(postgres.create_database("ledger")),
        )
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        "One Prefect server, two process workers, `finetune` limit 2; tiny runs (1 step, no GGUF)"
    )
    print(f"{'database':<11}{'N':>3}{'runs/min':>10}{'get_job_status p95 ms':>23}{'calls':>7}")
    for name, n, per_minute, p95, calls in rows:
        print(f"{name:<11}{n:>3}{per_minute:>10.1f}{p95:>23.0f}{calls:>7}")
    print(
        f"ledger reservations/s ({LEDGER_PROCESSES} processes × {LEDGER_RESERVATIONS}): "
        + ", ".join(f"{name} {rate:.0f}" for name, rate in ledger.items())
    )


if __name__ == "__main__":
    main()
