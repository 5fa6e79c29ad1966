"""Run a job's command on this machine, as Hugging Face Jobs runs it in its container.

A `uv run [--with REQ]… [--python V] SCRIPT ARGS…` job (what `HfApi.run_uv_job` submits) becomes
this test environment's Python running SCRIPT with ARGS:

- every `--with` requirement must be installable on a GPU flavor: a release that PyPI publishes
  (`PUBLIC_RELEASES`, recorded below; no network at test time) and no local version label
  (`+cpu`, `+cu121`: PyPI hosts none). A requirement that does not resolve fails the job the way
  uv does: an error in the log, exit status 1, stage ERROR.
- the container's file system: each mounted bucket volume (`/data` for run_uv_job's uploads) is a
  folder holding that bucket folder's files, rebuilt from what `hf_xet` uploaded; `/tmp` is the
  job's own; paths in the command under either are rewritten.
- the environment is the job's `environment` and `secrets` (the values as sent; the Hub never
  returns them), with `HF_ENDPOINT` set to this server (the service's Hub) and a fresh `HOME`.
- stdout and stderr are the job's log; the exit status decides COMPLETED or ERROR; cancelling
  the job kills its process group; `timeoutSeconds` ends it in ERROR.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

if TYPE_CHECKING:
    from tests.doubles.hf_jobs_server import FakeJobRecord, HfJobsServer

# Releases published on PyPI (checked with `pip index versions NAME`, 2026-12-02), for the
# packages a training job installs. torch's PyPI wheels for Linux are the CUDA builds; PyPI has
# no `+cpu` or `+cuXXX` local versions (those live on download.pytorch.org only).
PUBLIC_RELEASES: dict[str, set[str]] = {
    name: set(versions.split())
    for name, versions in {
        "torch": "2.9.0 2.9.1 2.10.0 2.11.0 2.12.0 2.12.1 2.13.0 2.14.0 2.14.1 2.15.0",
        "transformers": "4.57.6 5.0.0 5.17.0 5.22.2 5.23.0 5.24.0",
        "trl": "0.24.0 0.29.1 1.0.0 1.14.2 1.15.0 1.16.0",
        "peft": "0.17.0 0.17.1 0.18.1 0.19.1 0.20.0 0.21.0 0.21.1 0.21.2",
        "datasets": "4.0.0 4.8.5 5.0.0 5.0.1 5.1.0 5.2.0",
        "trackio": "0.40.0 0.41.0 0.42.0 0.43.0",
        "huggingface-hub": "1.0.0 1.33.0 2.0.0 2.1.1 2.2.0 2.3.0 2.4.0",
    }.items()
}


class JobCommandError(Exception):
    """The command cannot start (as uv reports it); the job ends in ERROR with exit status 1."""


def check_requirement(text: str) -> None:
    """Raise `JobCommandError` when `text` cannot be installed from PyPI on a GPU machine."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise JobCommandError(f"error: Failed to parse: `{text}`: {exc}") from None
    name = requirement.name.lower().replace("_", "-")
    for spec in requirement.specifier:
        try:
            if Version(spec.version.rstrip(".*")).local is not None:
                raise JobCommandError(
                    f"× No solution found when resolving `--with` dependencies:\n"
                    f"  ╰─▶ Because there is no version of {text} on PyPI (local version labels "
                    f"such as `+{Version(spec.version).local}` are not published there) and you "
                    f"require {text}, we can conclude that your requirements are unsatisfiable."
                )
        except InvalidVersion:
            raise JobCommandError(f"error: Failed to parse: `{text}`") from None
    releases = PUBLIC_RELEASES.get(name)
    if releases is None:
        raise JobCommandError(
            f"error: the test double has no record of PyPI releases of `{name}`; "
            "add them to PUBLIC_RELEASES in tests/doubles/job_runner.py"
        )
    if not any(requirement.specifier.contains(v, prereleases=True) for v in releases):
        raise JobCommandError(
            f"× No solution found when resolving `--with` dependencies:\n"
            f"  ╰─▶ Because there is no version of {text} and you require {text}, "
            "we can conclude that your requirements are unsatisfiable."
        )


def parse_uv_run(command: list[str]) -> tuple[list[str], list[str]]:
    """`(requirements, [script, *args])` of a `uv run` command."""
    if command[:2] != ["uv", "run"]:
        raise JobCommandError(f"the double runs `uv run` jobs only, not {command[:2]}")
    requirements, rest = [], command[2:]
    while rest and rest[0].startswith("--"):
        option, value = rest[0], rest[1] if len(rest) > 1 else None
        if option == "--with" and value is not None:
            requirements.append(value)
        elif option != "--python" or value is None:
            raise JobCommandError(f"error: unexpected argument '{option}' found")
        rest = rest[2:]
    if not rest:
        raise JobCommandError("error: no script to run")
    return requirements, rest


class JobProcess:
    """One job's life: materialise its volumes, run its command, end it."""

    def __init__(self, server: HfJobsServer, job: FakeJobRecord) -> None:
        self.server, self.job = server, job
        self.root = Path(tempfile.mkdtemp(prefix=f"hf-job-{job.id}-"))
        self.process: subprocess.Popen | None = None
        self.cancelled = threading.Event()
        self.ended = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name=f"job-{self.job.id}").start()

    def cancel(self) -> None:
        self.cancelled.set()
        self._kill()

    # -- the life -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._live()
        finally:
            self.ended.set()

    def _live(self) -> None:
        server, job = self.server, self.job
        time.sleep(server.scheduling_seconds)
        if self.cancelled.is_set():
            return
        server.set_stage(job.id, "RUNNING")
        try:
            requirements, argv = parse_uv_run(job.spec["command"] + job.spec.get("arguments", []))
            for requirement in requirements:
                check_requirement(requirement)
            mounts = self._mount_volumes()
        except JobCommandError as exc:
            server.append_log(job.id, *str(exc).splitlines())
            return server.set_stage(job.id, "ERROR", "Job failed with exit code: 1")
        argv = [sys.executable, *(self._container_path(arg, mounts) for arg in argv)]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "TMPDIR": str(mounts["/tmp"]),
            "HF_ENDPOINT": server.url,
            **{k: str(v) for k, v in (job.spec.get("environment") or {}).items()},
            **{k: str(v) for k, v in (job.spec.get("secrets") or {}).items()},
        }
        (self.root / "home").mkdir()
        with server._changed:
            if self.cancelled.is_set():
                return
            self.process = subprocess.Popen(
                argv,
                cwd=self.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            job.pid = self.process.pid
        reader = threading.Thread(target=self._read_output, daemon=True)
        reader.start()
        timeout = job.spec.get("timeoutSeconds")
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            reader.join(10)
            server.append_log(job.id, f"Job timed out after {timeout} seconds")
            return server.set_stage(job.id, "ERROR", f"Job timed out after {timeout}s")
        reader.join(10)
        if self.cancelled.is_set():
            return
        if code == 0:
            server.set_stage(job.id, "COMPLETED")
        else:
            server.set_stage(job.id, "ERROR", f"Job failed with exit code: {code}")

    def remove(self) -> None:
        """Throw the container away (kept until then, so tests can look at what the job wrote)."""
        self.cancel()
        shutil.rmtree(self.root, ignore_errors=True)

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            self.server.append_log(self.job.id, raw.decode(errors="replace").rstrip("\r\n"))

    def _kill(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass

    # -- the container's file system --------------------------------------------------------
    def _mount_volumes(self) -> dict[str, Path]:
        mounts = {"/tmp": self.root / "tmp"}
        mounts["/tmp"].mkdir()
        for index, volume in enumerate(self.job.spec.get("volumes") or []):
            if volume.get("type") != "bucket":
                raise JobCommandError(f"the double mounts bucket volumes only, not {volume}")
            files = self.server.buckets.get(volume["source"])
            if files is None:
                raise JobCommandError(f"Bucket {volume['source']} not found")
            prefix = (volume.get("path") or "").strip("/")
            folder = self.root / f"volume-{index}"
            folder.mkdir()
            for path, xet_hash in files.items():
                if prefix and not path.startswith(prefix + "/"):
                    continue
                target = folder / path[len(prefix) + 1 :] if prefix else folder / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.server.xet.read(xet_hash))
            mounts[volume["mountPath"].rstrip("/")] = folder
        return mounts

    @staticmethod
    def _container_path(arg: str, mounts: dict[str, Path]) -> str:
        for mount, folder in mounts.items():
            if arg == mount or arg.startswith(mount + "/"):
                return str(folder) + arg[len(mount) :]
        return arg
