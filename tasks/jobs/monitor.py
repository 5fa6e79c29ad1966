"""Follow a training job on any backend: stage changes, progress lines, metrics, cost, stalls.

`follow_job` is plain Python (threads, no Prefect) so one worker can follow many jobs; the
`monitor_training` task turns its notices into Prefect logs and artifacts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Protocol

from pydantic import BaseModel, Field

from schemas.jobs import (
    JobHandle,
    JobState,
    JobStatus,
    JobUnreachable,
    ProgressUpdate,
    parse_progress_line,
    parse_result_line,
)
from tasks.costs import cost_of_running
from tasks.jobs.backends import job_logs, job_metrics, job_status
from tasks.jobs.hf import GpuMetrics

logger = logging.getLogger(__name__)

_END = object()


class MonitorSettings(BaseModel):
    """How often the monitor looks, and when it calls a job stalled."""

    poll_seconds: float = Field(default=5.0, gt=0, description="Stage checks this often.")
    metrics_seconds: float = Field(
        default=60.0, gt=0, description="Resource samples this often while running."
    )
    stall_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="A running job with no new log line for this long is reported stalled.",
    )
    log_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="After the job ends, wait this long for the log stream to drain.",
    )
    max_status_failures: int = Field(
        default=10,
        ge=1,
        description="Stop with `JobUnreachable` after this many stage checks in a row fail "
        "(each already retried transient errors): a revoked token, a deleted job, an outage.",
    )


class JobWatcher(Protocol):
    """What the monitor tells its owner; every method is called from the monitoring thread."""

    def on_stage(self, status: JobStatus, previous: JobState | None) -> None: ...
    def on_progress(self, update: ProgressUpdate) -> None: ...
    def on_metrics(self, metrics: GpuMetrics, cost_usd: float | None) -> None: ...
    def on_stalled(self, quiet_seconds: float) -> None: ...


class FollowOutcome(BaseModel):
    """How a followed job ended."""

    status: JobStatus
    result: dict | None
    tail: list[str]
    running_seconds: float
    cost_usd: float | None
    last_metrics: GpuMetrics | None = None


def running_cost(running_seconds: float, price_per_hour: float | None) -> float | None:
    """USD billed so far for `running_seconds` of running time (the cost module's billing rule)."""
    if price_per_hour is None:
        return None
    return cost_of_running(price_per_hour, running_seconds)


def follow_job(
    handle: JobHandle,
    watcher: JobWatcher,
    settings: MonitorSettings | None = None,
    *,
    price_per_hour: float | None = None,
) -> FollowOutcome:
    """Follow `handle` until it ends and its log has drained; report to `watcher` along the way."""
    settings = settings or MonitorSettings()
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=_read_logs, args=(handle, lines), daemon=True, name=f"logs-{handle.job_id}"
    )
    reader.start()

    tail: deque[str] = deque(maxlen=40)
    result: dict | None = None
    state: JobState | None = None
    status: JobStatus | None = None
    running_since: float | None = None
    reported_running: float = 0.0
    last_line_at = time.monotonic()
    stalled = False
    next_poll = 0.0
    next_metrics = 0.0
    ended_at: float | None = None
    log_done = False
    last_metrics: GpuMetrics | None = None

    seen = 0
    failures = 0

    def take(line: str) -> None:
        nonlocal result, last_line_at, stalled, seen
        seen += 1
        last_line_at, stalled = time.monotonic(), False
        tail.append(line)
        if (update := parse_progress_line(line)) is not None:
            watcher.on_progress(update)
        elif (parsed := parse_result_line(line)) is not None:
            result = parsed

    while True:
        wait = max(0.0, next_poll - time.monotonic())
        if log_done:
            time.sleep(wait)
        else:
            try:
                item = lines.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _END:
                log_done, next_poll = True, 0.0  # the stream ends with the job: look now
            elif isinstance(item, BaseException):
                logger.warning("log stream of job %s failed: %s", handle.job_id, item)
                log_done = True
            elif item is not None:
                take(item)
        now = time.monotonic()
        if now < next_poll:
            continue
        next_poll = now + settings.poll_seconds
        try:
            status = job_status(handle)
            failures = 0
        except Exception as exc:  # transient trouble already retried inside; count and go on
            failures += 1
            logger.warning(
                "could not read the state of job %s (%d/%d): %s",
                handle.job_id,
                failures,
                settings.max_status_failures,
                _describe_error(exc),
            )
            if failures >= settings.max_status_failures:
                raise JobUnreachable(
                    f"stopped following job {handle.job_id}: its state could not be read "
                    f"{failures} times in a row (last: {_describe_error(exc)}). The job may still "
                    f"be running and billing: check {handle.url or 'its backend'} and the "
                    f"credentials, then `lmft cancel {handle.job_id}` or re-run with the same "
                    "idempotency key to attach to it again."
                ) from exc
            continue
        if status.state is not state:
            if status.state is JobState.RUNNING and running_since is None:
                running_since = now
            watcher.on_stage(status, state)
            state = status.state
        if status.running_seconds is not None:
            reported_running = status.running_seconds
        elif running_since is not None:
            reported_running = now - running_since
        if state is JobState.RUNNING and now >= next_metrics:
            next_metrics = now + settings.metrics_seconds
            try:
                last_metrics = job_metrics(handle)
            except Exception as exc:
                logger.warning("could not read the metrics of job %s: %s", handle.job_id, exc)
            if last_metrics is not None:
                watcher.on_metrics(last_metrics, running_cost(reported_running, price_per_hour))
        quiet = now - last_line_at
        if state is JobState.RUNNING and not stalled and quiet >= settings.stall_seconds:
            stalled = True
            watcher.on_stalled(quiet)
        if status.is_terminal:
            ended_at = ended_at or now
            if log_done:
                break
            if now - ended_at >= settings.log_grace_seconds:
                # The stream did not drain in time: read the finished job's log once, past what we saw.
                try:
                    for line in list(job_logs(handle))[seen:]:
                        take(line)
                except Exception as exc:
                    logger.warning("could not read the final log of job %s: %s", handle.job_id, exc)
                break
            next_poll = now + min(settings.poll_seconds, 1.0)

    return FollowOutcome(
        status=status,
        result=result,
        tail=list(tail),
        running_seconds=round(reported_running, 1),
        cost_usd=running_cost(reported_running, price_per_hour),
        last_metrics=last_metrics,
    )


def _describe_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{f' HTTP {status}' if status else ''}: {first[:200]}"


def _read_logs(handle: JobHandle, lines: queue.Queue) -> None:
    try:
        for line in job_logs(handle, follow=True):
            lines.put(line)
    except Exception as exc:  # handed to the monitoring thread, which reports it
        lines.put(exc)
        return
    lines.put(_END)
