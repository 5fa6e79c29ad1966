"""The `hf-jobs` backend: the training script as a Hugging Face Job (`HfApi.run_uv_job`).

A job carries labels (idempotency key, flow run id, estimated cost, project) so any process
can find it again with `list_jobs(labels=…, namespace=…)`: a retried or restarted submission
attaches to the job it finds instead of paying for a second one. `HF_TOKEN` reaches the job
as a secret, never as plain environment.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

import httpx2
from huggingface_hub import JobInfo, JobStage, set_client_factory
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils._http import default_client_factory
from packaging.requirements import Requirement
from pydantic import BaseModel

from blocks.huggingface import HuggingFaceCredentials
from schemas.jobs import JobHandle, JobState, JobStatus
from schemas.request import Backend
from training import TRAIN_SCRIPT

logger = logging.getLogger(__name__)

PROJECT_LABEL = "lm-fine-tuning"
TRANSIENT_STATUS = (408, 425, 429, 500, 502, 503, 504)
LIVE_OR_DONE = (JobState.SCHEDULING, JobState.RUNNING, JobState.COMPLETED)
_STAGES = {
    JobStage.SCHEDULING: JobState.SCHEDULING,
    JobStage.RUNNING: JobState.RUNNING,
    JobStage.COMPLETED: JobState.COMPLETED,
    JobStage.ERROR: JobState.ERROR,
    JobStage.CANCELED: JobState.CANCELLED,
    JobStage.DELETED: JobState.CANCELLED,
}
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

T = TypeVar("T")
CONNECT_TIMEOUT_SECONDS = 30.0


def _client_for_many_streams() -> httpx2.Client:
    """huggingface_hub's HTTP client without its 100-connection cap.

    A worker follows each job's log over its own long-lived SSE connection. With the default
    pool (100 connections, no pool timeout) the 101st request of the process (a stage check)
    would wait until some job ends: bench/hf_jobs_monitor.py saw stage changes noticed 20 s
    late, or never, with 100 jobs. Same hooks and redirects as the library's default; reads stay
    unbounded (log streams are quiet for minutes), but a connection that is not made within
    `CONNECT_TIMEOUT_SECONDS` fails as a transient error instead of waiting on the OS (minutes).
    """
    library_default = default_client_factory()
    hooks = library_default.event_hooks
    library_default.close()
    return httpx2.Client(
        event_hooks=hooks,
        follow_redirects=True,
        timeout=httpx2.Timeout(None, connect=CONNECT_TIMEOUT_SECONDS),
        limits=httpx2.Limits(max_connections=None, max_keepalive_connections=100),
    )


set_client_factory(_client_for_many_streams)


class GpuMetrics(BaseModel):
    """One sample of `fetch_job_metrics`, summarised."""

    gpu_count: int
    gpu_utilization_pct: float | None
    gpu_memory_used_gb: float | None
    gpu_memory_total_gb: float | None
    cpu_usage_pct: float | None
    memory_used_gb: float | None
    memory_total_gb: float | None


# -- transient failures --------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: 429, 5xx, timeouts, dropped connections."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code in TRANSIENT_STATUS
    if isinstance(exc, OfflineModeIsEnabled):  # HF_HUB_OFFLINE=1: no retry will cure it
        return False
    return isinstance(exc, (httpx2.TransportError, TimeoutError, ConnectionError))


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None


def call_with_backoff(
    call: Callable[[], T],
    *,
    what: str,
    attempts: int = 8,
    base_seconds: float = 1.0,
    max_seconds: float = 60.0,
) -> T:
    """Run `call`, retrying transient failures with exponential backoff that honours `Retry-After`.

    Hand-written because the Jobs calls of `huggingface_hub` (run_job, inspect_job, cancel_job,
    the SSE streams' stage check) do not go through its `http_backoff`, and Prefect task retries
    use fixed delays and restart the whole task; this retries one HTTP exchange in place.
    """
    delay = base_seconds
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            wait = _retry_after(exc)
            wait = min(max_seconds, delay if wait is None else wait)
            logger.warning(
                "%s failed (%s), retry %d/%d in %.1fs",
                what,
                _describe(exc),
                attempt,
                attempts - 1,
                wait,
            )
            time.sleep(wait)
            delay = min(max_seconds, delay * 2)
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


# -- labels and the job script ---------------------------------------------------------------
def label_value(value: str) -> str:
    """`value` as a job label (letters, digits, '-' and '_', ≤100 chars); others become a stable hash."""
    if _LABEL.match(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:40]


def job_labels(
    *, idempotency_key: str, flow_run_id: str | None, estimated_usd: float | None
) -> dict[str, str]:
    """The labels every training job carries."""
    labels = {"project": PROJECT_LABEL, "idempotency_key": label_value(idempotency_key)}
    if flow_run_id:
        labels["flow_run_id"] = label_value(flow_run_id)
    if estimated_usd is not None:
        labels["estimated_cost_cents"] = str(round(estimated_usd * 100))
    return labels


JOB_REQUIREMENTS: dict[str, str] = {
    # What a Hugging Face job installs (`uv run --with NAME==VERSION …`), chosen on purpose and
    # recorded here, never read from the worker: the worker may hold a CPU-only torch build
    # (`2.13.0+cpu`), which PyPI does not publish, and which could not use the paid GPU anyway.
    # Every pin is a public PyPI release without a local version label (checked 2026-12-02 with
    # `pip index versions`); they are the versions the test suite trains with.
    "torch": "2.13.0",  # PyPI's Linux wheel is the CUDA build (CUDA 13 runtime, sm_75 and newer:
    #                     T4, A10G, L4, L40S, A100, H100, H200)
    "transformers": "5.24.0",
    "trl": "1.16.0",
    "peft": "0.21.2",
    "datasets": "5.2.0",
    "trackio": "0.43.0",
    "huggingface_hub": "2.4.0",  # ships hf_xet on Linux x86_64: pushes go through Xet
}
QLORA_REQUIREMENTS: dict[str, str] = {
    # Installed only into a job that trains on a 4-bit base (lora.quantize); train.py imports it
    # lazily, so the script, and the CPU worker, never need it otherwise (checked 2026-12-02).
    "bitsandbytes": "0.50.2",
}


def script_dependencies() -> list[Requirement]:
    """The PEP 723 dependencies declared at the top of the training script."""
    text = TRAIN_SCRIPT.read_text()
    match = re.search(r"^# /// script\s*$(.*?)^# ///\s*$", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise RuntimeError(f"{TRAIN_SCRIPT} has no PEP 723 '# /// script' header")
    header = tomllib.loads(
        "\n".join(line.removeprefix("#").removeprefix(" ") for line in match[1].splitlines())
    )
    return [Requirement(dependency) for dependency in header.get("dependencies", [])]


def job_dependencies(*, quantized: bool = False) -> list[str]:
    """`--with` requirements of a training job: each dependency of the script at its recorded pin
    (and bitsandbytes when the job trains on a 4-bit base).

    Raises `RuntimeError` when the script declares a dependency without a pin in
    `JOB_REQUIREMENTS`, or a range its pin does not satisfy (a job would not install it).
    """
    pinned = []
    for requirement in script_dependencies():
        pin = JOB_REQUIREMENTS.get(requirement.name)
        if pin is None or not requirement.specifier.contains(pin, prereleases=True):
            raise RuntimeError(
                f"{TRAIN_SCRIPT.name} requires {requirement}, but JOB_REQUIREMENTS pins "
                f"{requirement.name} to {pin}: record a public release that satisfies it"
            )
        pinned.append(f"{requirement.name}=={pin}")
    if quantized:
        pinned += [f"{name}=={pin}" for name, pin in QLORA_REQUIREMENTS.items()]
    return pinned


# -- the backend -----------------------------------------------------------------------------
def handle_from_job(job: JobInfo, namespace: str) -> JobHandle:
    labels = dict(job.labels or {})
    return JobHandle(
        backend=Backend.HF_JOBS,
        job_id=job.id,
        idempotency_key=labels.get("idempotency_key", ""),
        submitted_at=job.created_at or datetime.now(UTC),
        url=job.url,
        namespace=namespace,
        labels=labels,
    )


def hf_job_handle(credentials: HuggingFaceCredentials, job_id: str) -> JobHandle:
    """The handle of job `job_id` in the credentials' namespace (404 when there is none)."""
    api = credentials.api()
    job = call_with_backoff(
        lambda: api.inspect_job(job_id=job_id, namespace=credentials.namespace),
        what=f"inspect job {job_id}",
    )
    return handle_from_job(job, credentials.namespace)


def find_hf_jobs(credentials: HuggingFaceCredentials, labels: dict[str, str]) -> list[JobHandle]:
    """Jobs of the namespace carrying all of `labels`, newest first."""
    api, namespace = credentials.api(), credentials.namespace
    wanted = {key: label_value(value) for key, value in labels.items()}
    jobs = call_with_backoff(
        lambda: list(api.list_jobs(labels=wanted, namespace=namespace)),
        what="list Hugging Face jobs",
    )
    return sorted(
        (handle_from_job(job, namespace) for job in jobs),
        key=lambda h: h.submitted_at,
        reverse=True,
    )


def submit_hf_job(
    credentials: HuggingFaceCredentials,
    *,
    script_args: list[str],
    labels: dict[str, str],
    flavor: str,
    timeout_seconds: int | None,
    quantized: bool = False,
) -> tuple[JobHandle, bool]:
    """Attach to the live or completed job with `labels["idempotency_key"]`, or submit one.

    Returns the handle and whether it was newly created. Each attempt looks the key up before
    creating, so an answer lost after the Hub created the job never leads to a second one.
    """
    key = labels["idempotency_key"]
    api, namespace = credentials.api(), credentials.namespace

    def attach_or_create() -> tuple[JobHandle, bool]:
        for handle in find_hf_jobs(credentials, {"idempotency_key": key}):
            if hf_job_status(credentials, handle).state in LIVE_OR_DONE:
                return handle, False
        with warnings.catch_warnings():  # run_uv_job is marked experimental; we pin huggingface_hub
            warnings.filterwarnings("ignore", message=".*is experimental", category=UserWarning)
            job = api.run_uv_job(
                str(TRAIN_SCRIPT),
                script_args=script_args,
                dependencies=job_dependencies(quantized=quantized),
                secrets={"HF_TOKEN": credentials.token.get_secret_value()},
                env={"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
                flavor=flavor,
                timeout=timeout_seconds,
                labels=labels,
                namespace=namespace,
            )
        return handle_from_job(job, namespace), True

    return call_with_backoff(attach_or_create, what="submit the Hugging Face job")


def hf_job_status(credentials: HuggingFaceCredentials, handle: JobHandle) -> JobStatus:
    """The job's stage, read with `inspect_job`."""
    api = credentials.api()
    job = call_with_backoff(
        lambda: api.inspect_job(
            job_id=handle.job_id, namespace=handle.namespace or credentials.namespace
        ),
        what=f"inspect job {handle.job_id}",
    )
    stage = JobStage(job.status.stage)
    message = job.status.message or ("the job was deleted" if stage is JobStage.DELETED else None)
    running: float | None = job.durations.running_secs if job.durations else None
    if running is None and job.started_at is None and stage is not JobStage.RUNNING:
        running = 0.0  # never ran (still scheduling, or ended before it started): nothing billed
    return JobStatus(state=_STAGES[stage], message=message, running_seconds=running)


def hf_job_logs(
    credentials: HuggingFaceCredentials, handle: JobHandle, *, follow: bool = False
) -> Iterator[str]:
    """The job's log lines; with `follow`, until the job ends.

    `fetch_job_logs` already resumes a dropped stream by replaying and skipping seen events;
    when it gives up (or its stage check fails transiently) this reconnects and skips the
    lines already yielded, so no line is lost or repeated.
    """
    api, namespace = credentials.api(), handle.namespace or credentials.namespace
    seen = 0
    failures = 0
    while True:
        try:
            for index, line in enumerate(
                api.fetch_job_logs(job_id=handle.job_id, namespace=namespace, follow=follow)
            ):
                if index >= seen:
                    seen += 1
                    failures = 0
                    yield line
        except Exception as exc:
            failures += 1
            if not follow or not is_transient(exc) or failures > 8:
                raise
            wait = _retry_after(exc) or min(30.0, 2.0 ** (failures - 1))
            logger.warning(
                "log stream of job %s dropped (%s); reconnecting in %.0fs",
                handle.job_id,
                _describe(exc),
                wait,
            )
            time.sleep(wait)
            continue
        if not follow or hf_job_status(credentials, handle).is_terminal:
            return


def hf_job_metrics(credentials: HuggingFaceCredentials, handle: JobHandle) -> GpuMetrics | None:
    """The current resource sample of a running job (None when the job has none to give)."""
    api, namespace = credentials.api(), handle.namespace or credentials.namespace
    samples = call_with_backoff(
        lambda: list(api.fetch_job_metrics(job_id=handle.job_id, namespace=namespace)),
        what=f"fetch metrics of job {handle.job_id}",
    )
    return summarize_metrics(samples[0]) if samples else None


def summarize_metrics(sample: dict) -> GpuMetrics:
    """Average GPU utilisation and summed GPU memory of one metrics sample."""
    gpus = list((sample.get("gpus") or {}).values())
    gb = 1e9

    def total(key: str) -> float | None:
        values = [g[key] for g in gpus if g.get(key) is not None]
        return round(sum(values) / gb, 2) if values else None

    utilization = [g["utilization"] for g in gpus if g.get("utilization") is not None]
    return GpuMetrics(
        gpu_count=len(gpus),
        gpu_utilization_pct=round(sum(utilization) / len(utilization), 1) if utilization else None,
        gpu_memory_used_gb=total("memory_used_bytes"),
        gpu_memory_total_gb=total("memory_total_bytes"),
        cpu_usage_pct=sample.get("cpu_usage_pct"),
        memory_used_gb=round(sample["memory_used_bytes"] / gb, 2)
        if sample.get("memory_used_bytes")
        else None,
        memory_total_gb=round(sample["memory_total_bytes"] / gb, 2)
        if sample.get("memory_total_bytes")
        else None,
    )


def cancel_hf_job(credentials: HuggingFaceCredentials, handle: JobHandle) -> JobStatus:
    """Cancel the job (a no-op when it has already ended); return its state afterwards."""
    status = hf_job_status(credentials, handle)
    if status.is_terminal:
        return status
    api = credentials.api()
    call_with_backoff(
        lambda: api.cancel_job(
            job_id=handle.job_id, namespace=handle.namespace or credentials.namespace
        ),
        what=f"cancel job {handle.job_id}",
    )
    return hf_job_status(credentials, handle)
