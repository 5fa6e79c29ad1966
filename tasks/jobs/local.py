"""The `local` backend: the training script as a subprocess of the worker.

Each job lives in `$LMFT_HOME/jobs/<job_id>/`: `job.json` (the handle, pid, command),
`train.log` (stdout and stderr), `exit_code` (written when the process ends) and
`output/` (the model). Everything needed to follow or cancel a job is on disk, so a
process that did not start the job (a retried task, `lmft cancel`) can still reach it.

A job dies with the process that started it, whatever kills that process: the job is started
through a two-line launcher that sets the kernel's parent-death signal (`PR_SET_PDEATHSIG`,
kept across `exec`) and then execs the training script. The job still runs in its own session,
so a Ctrl-C meant for the owner's terminal does not cut training short mid-save; the owner's
own death does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from schemas.jobs import JobHandle, JobState, JobStatus
from schemas.request import Backend
from tasks.paths import jobs_dir
from training import TRAIN_SCRIPT

CANCEL_GRACE_SECONDS = 10.0
HAND_OVER_GRACE_SECONDS = 180.0
"""How long a job stopped for a hand-over gets to write its checkpoint before it is killed."""

# Run as `python -c LAUNCHER OWNER_PID PROGRAM ARGS...`: ask the kernel to SIGKILL this process
# when its parent dies (prctl option 1 = PR_SET_PDEATHSIG), give up if the parent is already
# gone, then become PROGRAM. Done in a launcher rather than a `preexec_fn`, which is not safe in
# a process with threads (Prefect's). The signal follows the thread that started the launcher:
# flows run their tasks on the main thread, and the run guard covers any other case.
PDEATHSIG_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:\n"
    "    sys.exit('cannot set the parent-death signal: errno %d' % ctypes.get_errno())\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the process that started this job is gone')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# Popen objects of the jobs this process started: polling them reaps the child.
_children: dict[str, subprocess.Popen] = {}


def job_dir(job_id: str) -> Path:
    return jobs_dir() / job_id


def submit_local_job(
    *,
    script_args: list[str],
    idempotency_key: str,
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> JobHandle:
    """Start the training script in its own process group; return its handle at once.

    `script_args` must not contain `--output_dir`: the job's own `output/` folder is used.
    """
    existing = find_local_jobs({"idempotency_key": idempotency_key})
    if existing:
        return existing[0]
    job_id = f"local-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
    directory = job_dir(job_id)
    directory.mkdir(parents=True)
    output_dir = directory / "output"
    handle = JobHandle(
        backend=Backend.LOCAL,
        job_id=job_id,
        idempotency_key=idempotency_key,
        submitted_at=datetime.now(UTC),
        url=str(directory / "train.log"),
        output_dir=str(output_dir),
        labels={**(labels or {}), "idempotency_key": idempotency_key},
    )
    command = [
        sys.executable,
        "-c",
        PDEATHSIG_LAUNCHER,
        str(os.getpid()),
        sys.executable,
        "-u",
        str(TRAIN_SCRIPT),
        *script_args,
        "--output_dir",
        str(output_dir),
    ]
    child_env = {
        **os.environ,
        **(env or {}),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    log = open(directory / "train.log", "wb")  # noqa: SIM115 - handed to the child, closed below
    try:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
            cwd=directory,
        )
    finally:
        log.close()
    _children[job_id] = process
    record = {"handle": handle.model_dump(mode="json"), "pid": process.pid, "command": command}
    _write_json(directory / "job.json", record)
    threading.Thread(target=_record_exit, args=(process, directory), daemon=True).start()
    return handle


def find_local_jobs(labels: dict[str, str]) -> list[JobHandle]:
    """Handles of the jobs whose labels include all of `labels`, newest first."""
    found = []
    for path in jobs_dir().glob("*/job.json"):
        try:
            handle = JobHandle.model_validate(json.loads(path.read_text())["handle"])
        except (OSError, ValueError, KeyError):
            continue
        if all(handle.labels.get(k) == v for k, v in labels.items()):
            found.append(handle)
    return sorted(found, key=lambda h: h.submitted_at, reverse=True)


def local_job_status(handle: JobHandle) -> JobStatus:
    """Read the job's state from its process and its folder."""
    directory = job_dir(handle.job_id)
    cancelled = (directory / "cancelled").exists()
    child = _children.get(handle.job_id)
    if child is not None:
        if child.poll() is None and not _pid_alive(child.pid):
            child.wait(timeout=5)  # the exit thread is reaping it at this very moment
        if child.returncode is not None:
            _write_exit_code(directory, child.returncode)
    exit_path = directory / "exit_code"
    if exit_path.exists():
        code = int(exit_path.read_text().strip() or 1)
        if cancelled:
            return JobStatus(state=JobState.CANCELLED, exit_code=code, message="cancelled")
        if code == 0:
            return JobStatus(state=JobState.COMPLETED, exit_code=0)
        return JobStatus(
            state=JobState.ERROR, exit_code=code, message=f"training exited with code {code}"
        )
    if _pid_alive(_read_pid(directory)):
        return JobStatus(state=JobState.CANCELLED if cancelled else JobState.RUNNING)
    # The process is gone and nobody recorded its exit (the worker that started it died).
    if cancelled:
        return JobStatus(state=JobState.CANCELLED, message="cancelled")
    if (directory / "output" / "result.json").exists():
        return JobStatus(
            state=JobState.COMPLETED, message="exit code not recorded; result.json present"
        )
    return JobStatus(
        state=JobState.ERROR, message="training process ended without recording a result"
    )


def local_job_logs(
    handle: JobHandle, *, follow: bool = False, poll_seconds: float = 0.2
) -> Iterator[str]:
    """Yield the job's log lines; with `follow`, keep yielding until the job has ended."""
    path = job_dir(handle.job_id) / "train.log"
    with open(path, "rb") as f:
        pending = b""
        while True:
            chunk = f.read(65536)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace").rstrip("\r")
                continue
            if not follow or local_job_status(handle).is_terminal:
                # One last read: the process may have written between the read and the check.
                rest = f.read()
                if rest:
                    pending += rest
                    continue
                if pending:
                    yield pending.decode("utf-8", "replace")
                return
            time.sleep(poll_seconds)


def cancel_local_job(
    handle: JobHandle, *, grace_seconds: float = CANCEL_GRACE_SECONDS
) -> JobStatus:
    """Stop the job's whole process group: SIGTERM, then SIGKILL after `grace_seconds`."""
    directory = job_dir(handle.job_id)
    status = local_job_status(handle)
    killed_with_its_owner = (
        status.state is JobState.ERROR and not (directory / "exit_code").exists()
    )
    if killed_with_its_owner:
        # Its process died with the flow run that owned it (the parent-death signal), before
        # anyone recorded its exit: a run stopped to cancel it. Record the cancellation.
        (directory / "cancelled").write_text(datetime.now(UTC).isoformat())
        return local_job_status(handle)
    if status.is_terminal:
        return status
    (directory / "cancelled").write_text(datetime.now(UTC).isoformat())
    return _terminate(handle, grace_seconds)


def checkpoint_and_stop_local_job(
    handle: JobHandle, *, grace_seconds: float = HAND_OVER_GRACE_SECONDS
) -> JobStatus:
    """Stop a running job so that another process can resume it: SIGTERM (train.py saves a
    checkpoint and exits), SIGKILL after `grace_seconds`.

    Unlike `cancel_local_job` it marks nothing cancelled: the job ends resumable, and the run
    that owns it continues from that checkpoint wherever it runs next.
    """
    if local_job_status(handle).is_terminal:
        return local_job_status(handle)
    return _terminate(handle, grace_seconds)


def _terminate(handle: JobHandle, grace_seconds: float) -> JobStatus:
    """SIGTERM the job's process group, SIGKILL it if it is still alive after `grace_seconds`."""
    pid = _read_pid(job_dir(handle.job_id))
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and _pid_alive(pid):
        _reap(handle.job_id)
        time.sleep(0.1)
    if _pid_alive(pid):
        _signal_group(pid, signal.SIGKILL)
    _reap(handle.job_id, wait=True)
    return local_job_status(handle)


def _record_exit(process: subprocess.Popen, directory: Path) -> None:
    _write_exit_code(directory, process.wait())


def _write_exit_code(directory: Path, code: int) -> None:
    if not (directory / "exit_code").exists():
        tmp = directory / f"exit_code.{threading.get_ident()}.tmp"
        tmp.write_text(str(code))
        tmp.replace(directory / "exit_code")


def _reap(job_id: str, wait: bool = False) -> None:
    child = _children.get(job_id)
    if child is not None:
        try:
            child.wait(timeout=5) if wait else child.poll()
        except subprocess.TimeoutExpired:
            pass


def _read_pid(directory: Path) -> int:
    return int(json.loads((directory / "job.json").read_text())["pid"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the job was started with start_new_session: pgid == pid
    except ProcessLookupError:
        pass


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
