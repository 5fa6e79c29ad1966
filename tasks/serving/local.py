"""The local serving target: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

The server outlives the flow that started it, so the user can chat with the model:
it runs in its own session, and `$LMFT_HOME/serve/<name>.json` records its pid, port
and log so `lmft serve stop NAME` (another process) can find and stop it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from tasks.paths import lmft_home
from tasks.serving.endpoints import SmokeTestFailed, wait_for_health

LOCAL_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SERVER_EXTRAS = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
STOP_GRACE_SECONDS = 10.0


class LocalServer(BaseModel):
    """A running local model server."""

    name: str
    pid: int
    port: int
    url: str
    gguf_path: str
    log_path: str
    started_at: datetime


def serve_dir() -> Path:
    path = lmft_home() / "serve"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_local_name(name: str) -> str:
    if not LOCAL_NAME_PATTERN.match(name):
        raise ValueError(
            f"model name {name!r} must be 1-64 lowercase letters, digits, '.', '_' or '-'"
        )
    return name


def local_name_for(text: str) -> str:
    """A valid local model name derived from `text` (an output name, a file stem)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:64]
    return check_local_name(name or "model")


def _record_path(name: str) -> Path:
    return serve_dir() / f"{check_local_name(name)}.json"


def _is_our_server(pid: int) -> bool:
    """True when `pid` is alive and is a llama_cpp.server process (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return b"llama_cpp.server" in cmdline


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_local_server(name: str) -> LocalServer | None:
    """The recorded server for `name` if it is still running (a stale record is removed)."""
    path = _record_path(name)
    if not path.exists():
        return None
    server = LocalServer.model_validate_json(path.read_text())
    if _is_our_server(server.pid):
        return server
    path.unlink(missing_ok=True)
    return None


def list_local_servers() -> list[LocalServer]:
    servers = (find_local_server(p.stem) for p in sorted(serve_dir().glob("*.json")))
    return [s for s in servers if s is not None]


def start_local_server(
    gguf_path: str,
    name: str,
    *,
    port: int | None = None,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    health_timeout: float = 180,
) -> LocalServer:
    """Serve `gguf_path` as model `name` on 127.0.0.1 and wait until it lists its model.

    Re-serving the same file under the same name returns the running server; a different
    file replaces it.
    """
    check_local_name(name)
    gguf = Path(gguf_path).expanduser().resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist")
    missing = [m for m in SERVER_EXTRAS if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(
            f"llama-cpp-python's server needs {', '.join(missing)}: pip install "
            + " ".join(m.replace("_", "-") for m in missing)
        )
    running = find_local_server(name)
    if running is not None:
        if running.gguf_path == str(gguf) and (port is None or port == running.port):
            return running
        stop_local_server(name)
    port = port or _free_port()
    log_path = serve_dir() / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
    ]
    if n_threads:
        command += ["--n_threads", str(n_threads)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LocalServer(
        name=name,
        pid=process.pid,
        port=port,
        url=f"http://127.0.0.1:{port}",
        gguf_path=str(gguf),
        log_path=str(log_path),
        started_at=datetime.now(UTC),
    )
    _record_path(name).write_text(server.model_dump_json(indent=2))
    try:
        wait_for_health(
            f"{server.url}/v1/models",
            timeout=health_timeout,
            poll_interval=0.5,
            is_alive=lambda: process.poll() is None,
        )
    except SmokeTestFailed as exc:
        stop_local_server(name)
        tail = log_path.read_text(errors="replace")[-1500:]
        raise SmokeTestFailed(f"{exc}\n--- {log_path} (last lines) ---\n{tail}") from None
    return server


def stop_local_server(name: str) -> bool:
    """Stop the local server serving `name`; False when none was running."""
    path = _record_path(name)
    if not path.exists():
        return False
    server = LocalServer.model_validate_json(path.read_text())
    stopped = False
    if _is_our_server(server.pid):
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while _is_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _is_alive(server.pid):
            os.killpg(server.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _is_alive(server.pid) and time.monotonic() < deadline:  # reaps our child
                time.sleep(0.05)
        stopped = True
    path.unlink(missing_ok=True)
    return stopped


def _is_alive(pid: int) -> bool:
    try:
        # Reap it if it is our child; otherwise this raises ChildProcessError.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(") ", 1)[-1].startswith("Z"))
