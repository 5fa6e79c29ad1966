"""Ledger reservations per second under contention, and estimate latency with the offline catalog.

python -m bench.costs                    # 1, 2, 4 and 8 processes, 200 reservations each
python -m bench.costs --procs 16 --per-proc 100
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from operations.cost_reference import reference_workloads
from tasks.costs import estimate_workload, offline_catalog
from tasks.costs.ledger import BudgetExceeded, Ledger


def _reserve_many(url: str, worker: int, count: int, start, done) -> None:
    ledger = Ledger(url)
    start.wait()
    granted = 0
    for i in range(count):
        try:
            ledger.reserve(
                run_key=f"w{worker}-{i}",
                backend="hf-jobs",
                hardware="a10g-small",
                price_per_hour=1.0,
                expected_usd=0.5,
                high_usd=1.0,
                monthly_limit_usd=1e6,
                per_job_max_usd=10.0,
                needs_approval=False,
            )
            granted += 1
        except BudgetExceeded:
            pass
    done.put(granted)


def ledger_throughput(procs: int, per_proc: int, url: str | None = None) -> float:
    """Reservations per second, `procs` processes each reserving `per_proc` times in one ledger:
    a fresh SQLite file, or the empty database at `url` (bench.scale passes a PostgreSQL one)."""
    with tempfile.TemporaryDirectory() as tmp:
        url = url or f"sqlite:///{Path(tmp) / 'ledger.sqlite'}"
        Ledger(url)
        ctx = mp.get_context("fork")
        start, done = ctx.Event(), ctx.Queue()
        workers = [
            ctx.Process(target=_reserve_many, args=(url, w, per_proc, start, done))
            for w in range(procs)
        ]
        for w in workers:
            w.start()
        time.sleep(0.5)  # let every process open the ledger before the clock starts
        began = time.perf_counter()
        start.set()
        granted = sum(done.get(timeout=600) for _ in workers)
        elapsed = time.perf_counter() - began
        for w in workers:
            w.join()
        assert granted == procs * per_proc
        assert Ledger(url).totals().open_reservations == granted
        return granted / elapsed


def estimate_latency(repeats: int) -> tuple[float, float]:
    """Median and p95 milliseconds of one estimate (memory fit over every flavor, time, cost)."""
    catalog = offline_catalog()
    workloads = [w for _, w in reference_workloads()]
    samples = []
    for _ in range(repeats):
        for w in workloads:
            began = time.perf_counter()
            try:
                estimate_workload(w, catalog)
            except ValueError:
                pass  # the full 8B rows fit nowhere: refusing them is part of the latency too
            samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--per-proc", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print("ledger (SQLite, BEGIN IMMEDIATE): reservations/s under contention")
    for procs in args.procs:
        rate = ledger_throughput(procs, args.per_proc)
        print(f"  {procs:>3} processes × {args.per_proc} reservations: {rate:8.0f} reservations/s")
    median, p95 = estimate_latency(args.repeats)
    print(
        f"estimate latency (offline catalog, {len(reference_workloads())} reference workloads × {args.repeats}):"
    )
    print(f"  median {median:.3f} ms, p95 {p95:.3f} ms")


if __name__ == "__main__":
    main()
