"""One worker process following many Hugging Face jobs at once, against the local Jobs server.

    python -m bench.hf_jobs_monitor [--jobs 100] [--job-seconds 60] [--poll-seconds 5]

The server runs in a child process (its CPU is not counted) and plays every job's life:
SCHEDULING for 1–3 s, RUNNING with one progress line a second, then COMPLETED. This process
follows all of them with `follow_job` (the code under `monitor_training`), one thread each.
Prints the CPU this process used per job-minute followed, and the delay between a stage
change on the server and the monitor noticing it (both sides read CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time

from schemas.jobs import JobHandle, JobState, JobStatus
from schemas.request import Backend


def serve(jobs: int, job_seconds: float) -> None:
    """Child process: start the server, create the jobs, play them after 'go', report stage times."""
    from tests.doubles.hf_jobs_server import HfJobsServer

    server = HfJobsServer(keepalive_seconds=15.0, run_jobs=False).start()  # scripted lives
    ids = [
        server.create_job(
            server.namespace,
            {"command": ["uv", "run", "train.py"], "dockerImage": "uv", "labels": {"bench": "1"}},
        ).id
        for _ in range(jobs)
    ]
    print(
        json.dumps(
            {"url": server.url, "token": server.token, "namespace": server.namespace, "ids": ids}
        ),
        flush=True,
    )
    sys.stdin.readline()  # go

    def play(job_id: str) -> None:
        time.sleep(random.uniform(1.0, 3.0))
        server.set_stage(job_id, "RUNNING")
        steps = int(job_seconds)
        for step in range(1, steps + 1):
            time.sleep(1.0)
            server.append_log(
                job_id,
                "LMFT_PROGRESS " + json.dumps({"step": step, "total_steps": steps, "loss": 1.0}),
            )
        server.set_stage(job_id, "COMPLETED")

    players = [threading.Thread(target=play, args=(job_id,)) for job_id in ids]
    for player in players:
        player.start()
    for player in players:
        player.join()
    changes = {job_id: server.jobs[job_id].stage_changed_at for job_id in ids}
    print(json.dumps(changes), flush=True)
    sys.stdin.readline()  # done
    server.stop()


class _Recorder:
    def __init__(self, job_id: str, noticed: dict) -> None:
        self.job_id, self.noticed = job_id, noticed

    def on_stage(self, status: JobStatus, previous: JobState | None) -> None:
        self.noticed.setdefault(self.job_id, {})[status.state.value.upper()] = time.monotonic()

    def on_progress(self, update) -> None:
        pass

    def on_metrics(self, metrics, cost_usd) -> None:
        pass

    def on_stalled(self, quiet_seconds: float) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--job-seconds", type=float, default=60.0)
    parser.add_argument(
        "--poll-seconds", type=float, default=None, help="default: MonitorSettings().poll_seconds"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.jobs, args.job_seconds)

    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.hf_jobs_monitor",
            "--serve",
            "--jobs",
            str(args.jobs),
            "--job-seconds",
            str(args.job_seconds),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    info = json.loads(child.stdout.readline())
    os.environ.update(
        {
            "LMFT_HF_NAMESPACE": info["namespace"],
            "HF_TOKEN": info["token"],
            "HF_ENDPOINT": info["url"],
        }
    )
    os.environ.pop("HF_HUB_OFFLINE", None)

    from tasks.jobs.monitor import MonitorSettings, follow_job

    settings = (
        MonitorSettings()
        if args.poll_seconds is None
        else MonitorSettings(poll_seconds=args.poll_seconds)
    )
    handles = [
        JobHandle(
            backend=Backend.HF_JOBS,
            job_id=job_id,
            idempotency_key=job_id,
            submitted_at="2026-01-01T00:00:00Z",
            namespace=info["namespace"],
        )
        for job_id in info["ids"]
    ]
    noticed: dict[str, dict[str, float]] = {}
    followed_seconds: list[float] = []

    def follow(handle: JobHandle) -> None:
        started = time.monotonic()
        follow_job(handle, _Recorder(handle.job_id, noticed), settings)
        followed_seconds.append(time.monotonic() - started)

    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    followers = [threading.Thread(target=follow, args=(h,)) for h in handles]
    for follower in followers:
        follower.start()
    child.stdin.write("go\n")
    child.stdin.flush()
    for follower in followers:
        follower.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    changes = json.loads(child.stdout.readline())
    child.stdin.write("done\n")
    child.stdin.flush()
    child.wait()

    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    job_minutes = sum(followed_seconds) / 60.0
    delays = {
        stage: [
            noticed[j][stage] - changes[j][stage] for j in changes if stage in noticed.get(j, {})
        ]
        for stage in ("RUNNING", "COMPLETED")
    }
    print(
        f"jobs followed         {len(handles)} at once, {args.job_seconds:.0f} s running each, "
        f"poll every {settings.poll_seconds:g} s"
    )
    print(
        f"CPU per job-minute    {cpu / job_minutes * 1000:.1f} ms  ({cpu:.1f} s CPU over {job_minutes:.1f} job-minutes)"
    )
    for stage, values in delays.items():
        values.sort()
        p95 = values[int(0.95 * (len(values) - 1))]
        print(
            f"notice delay {stage:<9}median {statistics.median(values):.2f} s, p95 {p95:.2f} s, "
            f"max {values[-1]:.2f} s  ({len(values)} jobs)"
        )


if __name__ == "__main__":
    main()
