"""A local Hugging Face service: the Jobs API, buckets and model repositories, as `huggingface_hub`
2.4 and `hf_xet` 1.8 speak to it (read from their code: `hf_api.py`, `_jobs_api.py`,
`_commit_api.py`, `_upload_pipeline.py`, `file_download.py`, and xet-core's formats).

Tests point the real client at it (`HfApi(endpoint=server.url, token=server.token)`). A created
job **runs its command** on this machine (`job_runner.py`: `uv run --with … /data/train.py ARGS`
becomes this environment's Python running the uploaded script, with the job's environment and
secrets, `HF_ENDPOINT` pointing here; its output is the job's log, its exit status its final
stage). Tests that play a scripted life instead set `autoplay` (or `run_jobs=False` and drive it
with `set_stage`, `append_log`, `set_metrics`). Routes, as `huggingface_hub/hf_api.py` calls them:

    GET  /api/whoami-v2
    GET  /api/jobs/hardware
    POST /api/jobs/{ns}                       create (run_job / run_uv_job)
    GET  /api/jobs/{ns}?label=k=v&stage=S     list, paginated with `Link: <…>; rel="next"`
    GET  /api/jobs/{ns}/{id}                  inspect
    GET  /api/jobs/{ns}/{id}/logs             SSE: `data: {"data": line, "timestamp": …}`
    GET  /api/jobs/{ns}/{id}/metrics          SSE: `event: metric` / `data: {…}`; 406 once finished
    POST /api/jobs/{ns}/{id}/cancel           kills the job's process
    PUT  /api/jobs/{ns}/{id}/labels
    POST /api/buckets/{ns}/{name}             run_uv_job ships local files through a bucket …
    GET  /api/buckets/{ns}/{name}/xet-write-token   … uploaded with hf_xet to the CAS routes below
    POST /api/buckets/{ns}/{name}/batch
    /cas/v1/chunks|xorb-grants|xorbs|shards, /cas/v2/shards (404: the client falls back to v1);
        xorbs and shards are decoded (`xet_cas.py`) so files can be read back
    model/dataset repositories: create, preupload, commit, revision, tree, commits, resolve
        (`hub_repos.py`)

Faults: `fail_next(route, status, times, retry_after=…, after_commit=…)`, `drop_log_stream`
(cut the chunked SSE response mid-stream), `slow(route, seconds)`.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlparse

from tests.doubles.hub_repos import Commit, Repo, RepoStore, etag, is_lfs, tree_entry
from tests.doubles.job_runner import JobProcess
from tests.doubles.xet_cas import XetStore

TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")

HARDWARE = [
    {
        "name": "cpu-basic",
        "prettyName": "CPU Basic",
        "cpu": "2 vCPU",
        "ram": "16 GB",
        "unitCostMicroUSD": 167,
        "unitCostUSD": 0.000167,
        "unitLabel": "minute",
    },
    {
        "name": "t4-small",
        "prettyName": "Nvidia T4 - small",
        "cpu": "4 vCPU",
        "ram": "15 GB",
        "accelerator": {
            "type": "gpu",
            "model": "T4",
            "quantity": "1",
            "vram": "16 GB",
            "manufacturer": "Nvidia",
        },
        "unitCostMicroUSD": 6667,
        "unitCostUSD": 0.006667,
        "unitLabel": "minute",
    },
    {
        "name": "a10g-small",
        "prettyName": "Nvidia A10G - small",
        "cpu": "4 vCPU",
        "ram": "15 GB",
        "accelerator": {
            "type": "gpu",
            "model": "A10G",
            "quantity": "1",
            "vram": "24 GB",
            "manufacturer": "Nvidia",
        },
        "unitCostMicroUSD": 16667,
        "unitCostUSD": 0.016667,
        "unitLabel": "minute",
    },
]


_DEFAULT_METRICS = {
    "cpu_usage_pct": 12,
    "cpu_millicores": 4000,
    "memory_used_bytes": 2 * 2**30,
    "memory_total_bytes": 15 * 2**30,
    "rx_bps": 0,
    "tx_bps": 0,
    "replica": "r0",
    "gpus": {
        "gpu0": {
            "utilization": 87,
            "memory_used_bytes": 18 * 10**9,
            "memory_total_bytes": 24 * 10**9,
        }
    },
}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@dataclass
class FakeJobRecord:
    """A job as the server holds it."""

    id: str
    namespace: str
    spec: dict
    created_at: datetime
    stage: str = "SCHEDULING"
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)  # (timestamp, line)
    metrics: dict | None = None
    stage_changed_at: dict[str, float] = field(default_factory=dict)  # stage -> time.monotonic()
    pid: int | None = None  # the process running the job's command (run_jobs)

    def info(self) -> dict:
        now = _now()
        running = None
        if self.started_at is not None:
            running = int(((self.finished_at or now) - self.started_at).total_seconds())
        return {
            "id": self.id,
            "createdAt": _iso(self.created_at),
            "startedAt": _iso(self.started_at),
            "finishedAt": _iso(self.finished_at),
            "dockerImage": self.spec.get("dockerImage"),
            "spaceId": self.spec.get("spaceId"),
            "command": self.spec.get("command"),
            "arguments": self.spec.get("arguments", []),
            "environment": self.spec.get("environment", {}),
            # The Hub never returns secret values.
            "secrets": dict.fromkeys(self.spec.get("secrets") or {}),
            "flavor": self.spec.get("flavor"),
            "labels": self.spec.get("labels") or {},
            "volumes": self.spec.get("volumes"),
            "status": {"stage": self.stage, "message": self.message},
            "durations": {
                "schedulingSecs": int(
                    ((self.started_at or self.finished_at or now) - self.created_at).total_seconds()
                ),
                "runningSecs": running,
                "totalSecs": int((now - self.created_at).total_seconds()),
            },
            "owner": {"id": "0" * 24, "name": self.namespace, "type": "user"},
            "initiator": {"type": "user", "id": "0" * 24, "name": self.namespace},
        }


@dataclass
class _Fault:
    method: str
    route: re.Pattern
    status: int
    times: int
    retry_after: float | None
    after_commit: bool


class HfJobsServer:
    """The server: start it as a context manager; `url`, `token` and `namespace` to give the client."""

    def __init__(
        self,
        *,
        namespace: str = "lmft-tests",
        token: str = "hf_test_" + "s3cr3t" * 4,
        page_size: int = 5,
        keepalive_seconds: float = 0.5,
        metrics_interval: float = 0.2,
        run_jobs: bool = True,
        scheduling_seconds: float = 0.3,
    ) -> None:
        self.namespace = namespace
        self.token = token
        self.page_size = page_size
        self.keepalive_seconds = keepalive_seconds
        self.metrics_interval = metrics_interval
        self.jobs: dict[str, FakeJobRecord] = {}
        self.buckets: dict[str, dict[str, str]] = {}  # bucket id -> {path: xet hash}
        self.xet = XetStore()
        self.repos = RepoStore()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.autoplay: Callable[[HfJobsServer, str], None] | None = None
        self.run_jobs = run_jobs
        self.scheduling_seconds = scheduling_seconds
        self.processes: dict[str, JobProcess] = {}
        self._faults: list[_Fault] = []
        self._slow: list[tuple[re.Pattern, float]] = []
        self._drop_streams: dict[
            str, int
        ] = {}  # job id -> events to send before cutting the stream
        self._changed = threading.Condition()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def start(self) -> HfJobsServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, daemon=True, name="hf-jobs-server"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        for process in list(self.processes.values()):
            process.remove()
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HfJobsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    _stopping = False

    # -- driving jobs ------------------------------------------------------------------------
    def set_stage(self, job_id: str, stage: str, message: str | None = None) -> None:
        with self._changed:
            job = self.jobs[job_id]
            if job.stage in TERMINAL:
                return
            job.stage, job.message = stage, message
            job.stage_changed_at[stage] = time.monotonic()
            if stage == "RUNNING" and job.started_at is None:
                job.started_at = _now()
            if stage in TERMINAL:
                job.finished_at = _now()
            self._changed.notify_all()

    def append_log(self, job_id: str, *lines: str) -> None:
        with self._changed:
            for line in lines:
                self.jobs[job_id].logs.append((_iso(_now()), line))
            self._changed.notify_all()

    def set_metrics(self, job_id: str, metrics: dict) -> None:
        with self._changed:
            self.jobs[job_id].metrics = metrics
            self._changed.notify_all()

    def wait_for_jobs(self, count: int = 1, timeout: float = 60.0) -> list[str]:
        """Block until at least `count` jobs exist; return their ids in creation order."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.jobs) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self.jobs)} job(s) created, expected {count}")
                self._changed.wait(remaining)
            return list(self.jobs)

    # -- faults ------------------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        route: str,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        after_commit: bool = False,
    ) -> None:
        """Answer the next `times` matching requests with `status` (`after_commit`: do the work first)."""
        self._faults.append(
            _Fault(method, re.compile(route), status, times, retry_after, after_commit)
        )

    def slow(self, route: str, seconds: float) -> None:
        """Delay every answer on `route` by `seconds`."""
        self._slow.append((re.compile(route), seconds))

    def drop_log_stream(self, job_id: str, after_events: int) -> None:
        """Cut the next log stream of `job_id` after `after_events` events, mid chunked body."""
        self._drop_streams[job_id] = after_events

    def take_fault(self, method: str, path: str) -> _Fault | None:
        with self._changed:
            for fault in self._faults:
                if fault.method == method and fault.times > 0 and fault.route.search(path):
                    fault.times -= 1
                    return fault
        return None

    def delay_for(self, path: str) -> float:
        return sum(seconds for pattern, seconds in self._slow if pattern.search(path))

    # -- server side -------------------------------------------------------------------------
    def create_job(self, namespace: str, spec: dict) -> FakeJobRecord:
        with self._changed:
            job = FakeJobRecord(
                id=secrets.token_hex(12), namespace=namespace, spec=spec, created_at=_now()
            )
            job.stage_changed_at["SCHEDULING"] = time.monotonic()
            self.jobs[job.id] = job
            self._changed.notify_all()
        if self.autoplay is not None:
            threading.Thread(target=self.autoplay, args=(self, job.id), daemon=True).start()
        elif self.run_jobs:
            self.processes[job.id] = process = JobProcess(self, job)
            process.start()
        return job

    def cancel_job(self, job_id: str) -> None:
        """What the cancel route does: end the job's process, then mark it CANCELED."""
        if (process := self.processes.get(job_id)) is not None:
            process.cancel()
        self.set_stage(job_id, "CANCELED", "Canceled by user")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence the stderr access log
        pass

    @property
    def hub(self) -> HfJobsServer:
        return self.server.hub  # type: ignore[attr-defined]

    # -- plumbing ----------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self, status: int, body: object = None, headers: dict[str, str] | None = None
    ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.hub.requests.append((self.command, self.path, status))

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": message}, headers)

    def _dispatch(self) -> None:
        parsed = urlparse(self.path)
        path, query = parsed.path, parse_qs(parsed.query)
        body = self._read_body()
        if delay := self.hub.delay_for(path):
            time.sleep(delay)
        authorization = self.headers.get("Authorization")
        self.authenticated = authorization == f"Bearer {self.hub.token}"
        if (
            authorization is not None
            and not self.authenticated
            and not path.startswith(("/cas/", "/v1/telemetry"))
        ):
            return self._error(401, "Invalid credentials in Authorization header")
        fault = self.hub.take_fault(self.command, path)
        if fault is not None and not fault.after_commit:
            return self._fault(fault)
        for method, pattern, handler in _ROUTES:
            if method == self.command and (match := re.fullmatch(pattern, path)):
                if not self.authenticated and handler not in _OPEN_ROUTES:
                    return self._error(401, "Invalid credentials in Authorization header")
                if fault is not None:  # after_commit: do the work, then lose the answer
                    self._silently(handler, match, query, body)
                    return self._fault(fault)
                return handler(self, match, query, body)
        return self._error(404, f"no route for {self.command} {path}")

    def _fault(self, fault: _Fault) -> None:
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        self._error(fault.status, f"injected {fault.status}", headers)

    def _silently(self, handler, match, query, body) -> None:
        wfile = self.wfile

        class _Discard:
            def write(self, data: bytes) -> int:
                return len(data)

            def flush(self) -> None:
                pass

        self.wfile = _Discard()  # type: ignore[assignment]
        try:
            handler(self, match, query, body)
        finally:
            self.wfile = wfile
            self._headers_buffer = []

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    # -- routes ------------------------------------------------------------------------------
    def whoami(self, match, query, body) -> None:
        self._send(
            200,
            {
                "type": "user",
                "name": self.hub.namespace,
                "fullname": "Test User",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"role": "write"}},
            },
        )

    def hardware(self, match, query, body) -> None:
        self._send(200, HARDWARE)

    def create_job(self, match, query, body) -> None:
        spec = json.loads(body)
        if not spec.get("command") or not (spec.get("dockerImage") or spec.get("spaceId")):
            return self._error(400, "command and dockerImage (or spaceId) are required")
        for key, value in (spec.get("labels") or {}).items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", key) or not re.fullmatch(
                r"[A-Za-z0-9_-]{0,100}", value
            ):
                return self._error(
                    400, f"invalid label {key}={value}: alphanumerics, '-' and '_' only"
                )
        job = self.hub.create_job(match["ns"], spec)
        self._send(200, job.info())

    def list_jobs(self, match, query, body) -> None:
        wanted = dict(item.split("=", 1) for item in query.get("label", []))
        stages = set(query.get("stage", []))
        with self.hub._changed:
            jobs = [j for j in self.hub.jobs.values() if j.namespace == match["ns"]]
        jobs = [
            j
            for j in jobs
            if all((j.spec.get("labels") or {}).get(k) == v for k, v in wanted.items())
            and (not stages or j.stage in stages)
        ]
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        start = int(query.get("cursor", ["0"])[0])
        page = jobs[start : start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(jobs):
            params = [(k, v) for k, values in query.items() if k != "cursor" for v in values]
            params.append(("cursor", str(start + self.hub.page_size)))
            headers["Link"] = (
                f'<{self.hub.url}/api/jobs/{match["ns"]}?{urlencode(params)}>; rel="next"'
            )
        self._send(200, [j.info() for j in page], headers)

    def _job(self, match) -> FakeJobRecord | None:
        job = self.hub.jobs.get(match["id"])
        if job is None or job.namespace != match["ns"]:
            self._error(404, f"Job {match['id']} not found")
            return None
        return job

    def inspect_job(self, match, query, body) -> None:
        if job := self._job(match):
            self._send(200, job.info())

    def cancel_job(self, match, query, body) -> None:
        if job := self._job(match):
            self.hub.cancel_job(job.id)
            self._send(200)

    def update_labels(self, match, query, body) -> None:
        if job := self._job(match):
            job.spec["labels"] = json.loads(body)["labels"]
            self._send(200, job.info())

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.hub.requests.append((self.command, self.path, 200))

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut_stream(self) -> None:
        # Half a chunk, then the socket goes away: the client sees an incomplete chunked body.
        self.wfile.write(b'40\r\ndata: {"data": "trunc')
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    def job_logs(self, match, query, body) -> None:
        job = self._job(match)
        if job is None:
            return
        hub = self.hub
        drop_after = hub._drop_streams.pop(job.id, None)
        self._start_stream()
        started = _iso(job.created_at)
        events = [(started, f"===== Job started at {started} =====")]
        sent = 0
        tail = int(query["tail"][0]) if "tail" in query else None
        first = True
        try:
            while True:
                with hub._changed:
                    pending = (events + job.logs)[sent:]
                    if first and tail is not None:
                        pending = pending[-tail:]
                        sent = len(events) + len(job.logs) - len(pending)
                    first = False
                    if not pending and job.stage not in TERMINAL and not hub._stopping:
                        hub._changed.wait(hub.keepalive_seconds)
                        pending = (events + job.logs)[sent:]
                    finished = job.stage in TERMINAL or hub._stopping
                for timestamp, line in pending:
                    if drop_after is not None and drop_after <= 0:
                        return self._cut_stream()
                    self._chunk(
                        "data: " + json.dumps({"data": line, "timestamp": timestamp}) + "\n\n"
                    )
                    sent += 1
                    if drop_after is not None:
                        drop_after -= 1
                if not pending:
                    if finished:
                        return self._end_stream()
                    self._chunk(": keep-alive\n\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def job_metrics(self, match, query, body) -> None:
        job = self._job(match)
        if job is None:
            return
        hub = self.hub
        if job.stage in TERMINAL:
            return self._error(406, "Job has finished")
        self._start_stream()
        try:
            while True:
                with hub._changed:
                    if job.stage in TERMINAL or hub._stopping:
                        return self._end_stream()
                    metrics = job.metrics or _DEFAULT_METRICS
                if job.stage == "RUNNING":
                    self._chunk("event: metric\ndata: " + json.dumps(metrics) + "\n\n")
                else:
                    self._chunk(": keep-alive\n\n")
                time.sleep(hub.metrics_interval)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # Buckets and the Xet CAS: run_uv_job ships a local script through `{ns}/jobs-artifacts`.
    def create_bucket(self, match, query, body) -> None:
        bucket_id = f"{match['ns']}/{match['name']}"
        answer = {"url": f"{self.hub.url}/buckets/{bucket_id}", "id": bucket_id}
        if (
            bucket_id in self.hub.buckets
        ):  # the Hub's 409 still names the bucket (create_bucket reads it)
            return self._send(409, {**answer, "error": "You already created this bucket"})
        self.hub.buckets[bucket_id] = {}
        self._send(200, answer)

    def xet_write_token(self, match, query, body) -> None:
        cas, token, exp = (
            f"{self.hub.url}/cas",
            "xet-" + secrets.token_hex(8),
            int(time.time()) + 3600,
        )
        self._send(
            200,
            {"casUrl": cas, "accessToken": token, "exp": exp},
            {
                "X-Xet-Cas-Url": cas,
                "X-Xet-Access-Token": token,
                "X-Xet-Token-Expiration": str(exp),
            },
        )

    def bucket_batch(self, match, query, body) -> None:
        files = self.hub.buckets.setdefault(f"{match['ns']}/{match['name']}", {})
        for line in body.splitlines():
            if line.strip():
                op = json.loads(line)
                if op["type"] == "addFile":
                    files[op["path"]] = op["xetHash"]
                elif op["type"] == "deleteFile":
                    files.pop(op["path"], None)
        self._send(200, {"failed": []})

    def cas_not_found(self, match, query, body) -> None:
        self._send(404, {})

    def cas_xorb(self, match, query, body) -> None:
        inserted = self.hub.xet.put_xorb(match["hash"], body)
        self._send(200, {"was_inserted": inserted})

    def cas_shard(self, match, query, body) -> None:
        self.hub.xet.put_shard(body)
        self._send(200, {"result": 1})

    # -- model / dataset repositories (see hub_repos.py) ------------------------------------
    def _repo(self, match, *, write: bool = False) -> Repo | None:
        repo_type = match["type"].rstrip("s") if match["type"] else "model"
        repo = self.hub.repos.get(match["repo"], repo_type)
        if repo is None or (repo.private or write) and not self.authenticated:
            # The Hub does not tell a private repo from a missing one.
            status = 404 if self.authenticated else 401
            self._error(
                status,
                f"Repository Not Found for url: {self.hub.url}{self.path}.",
                {"X-Error-Code": "RepoNotFound"},
            )
            return None
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit | None:
        commit = repo.at(unquote(revision))
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", {"X-Error-Code": "RevisionNotFound"})
        return commit

    def create_repo(self, match, query, body) -> None:
        request = json.loads(body)
        namespace = request.get("organization") or self.hub.namespace
        repo_id = f"{namespace}/{request['name']}"
        repo_type = request.get("type") or "model"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        answer = {"url": f"{self.hub.url}/{prefix}{repo_id}", "name": repo_id, "id": repo_id}
        private = request.get("visibility", "private" if request.get("private") else "public")
        if not self.hub.repos.create(repo_id, repo_type, private=private != "public"):
            return self._send(409, {**answer, "error": "You already created this model repo"})
        self._send(200, answer)

    def repo_info(self, match, query, body) -> None:
        if (repo := self._repo(match)) is None:
            return
        if (commit := self._commit_at(repo, match["rev"] or "main")) is None:
            return
        self._send(
            200,
            {
                "_id": "0" * 24,
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": _iso(commit.date),
                "createdAt": _iso(repo.commits[0].date),
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            },
        )

    def repo_tree(self, match, query, body) -> None:
        if (repo := self._repo(match)) is None:
            return
        if (commit := self._commit_at(repo, match["rev"])) is None:
            return
        base = (match["path"] or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for path in sorted(commit.files):
            if base and not path.startswith(base + "/"):
                continue
            rest = path[len(base) + 1 :] if base else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(([base] if base else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder}
                    )
            if recursive or len(parts) == 1:
                entries.append(tree_entry(path, commit.files[path]))
        self._send(200, entries)

    def repo_commits(self, match, query, body) -> None:
        if (repo := self._repo(match)) is None:
            return
        if (head := self._commit_at(repo, match["rev"])) is None:
            return
        history = repo.commits[: repo.commits.index(head) + 1]
        self._send(
            200,
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "date": _iso(c.date),
                    "authors": [{"user": self.hub.namespace}],
                }
                for c in reversed(history)
            ],
        )

    def preupload(self, match, query, body) -> None:
        if (repo := self._repo(match, write=True)) is None:
            return
        current = repo.at(unquote(match["rev"]))
        files = []
        for item in json.loads(body)["files"]:
            existing = current.files.get(item["path"]) if current else None
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if is_lfs(item["path"], item["size"]) else "regular",
                    "shouldIgnore": False,
                    "oid": None if existing is None else etag(item["path"], existing),
                }
            )
        self._send(200, {"files": files, "commitOid": current.oid if current else None})

    def repo_xet_write_token(self, match, query, body) -> None:
        if self._repo(match, write=True) is not None:
            self.xet_write_token(match, query, body)

    def repo_commit(self, match, query, body) -> None:
        if (repo := self._repo(match, write=True)) is None:
            return
        title, message, added, deleted, deleted_folders = "", "", {}, [], []
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            value = entry["value"]
            if entry["key"] == "header":
                title, message = value.get("summary", ""), value.get("description", "")
            elif entry["key"] == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif entry["key"] == "lfsFile":
                try:
                    added[value["path"]] = self.hub.xet.read_sha256(value["oid"])
                except KeyError:
                    return self._error(
                        422,
                        f"Your push was rejected because an LFS pointer pointed to a file that does not exist ({value['path']})",
                    )
            elif entry["key"] == "deletedFile":
                deleted.append(value["path"])
            elif entry["key"] == "deletedFolder":
                deleted_folders.append(value["path"])
        commit = self.hub.repos.commit(repo, title, message, added, deleted, deleted_folders)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._send(
            200,
            {
                "commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{commit.oid}",
                "commitOid": commit.oid,
                "success": True,
            },
        )

    def resolve_file(self, match, query, body) -> None:
        if (repo := self._repo(match)) is None:
            return
        if (commit := self._commit_at(repo, match["rev"])) is None:
            return
        path = unquote(match["path"])
        if path not in commit.files:
            return self._error(404, f"Entry not found: {path}", {"X-Error-Code": "EntryNotFound"})
        data = commit.files[path]
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{etag(path, data)}"',
            "Accept-Ranges": "bytes",
        }
        status = 200
        if (
            wanted := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        ) is not None:
            start = int(wanted[1])
            end = min(len(data) - 1, int(wanted[2])) if wanted[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.hub.requests.append((self.command, self.path, status))

    def validate_yaml(self, match, query, body) -> None:
        self._send(200, {"errors": [], "warnings": []})

    def telemetry(self, match, query, body) -> None:
        self._send(200, {})


_NS = r"(?P<ns>[A-Za-z0-9_.-]+)"
_TYPE = r"(?P<type>models|datasets|spaces)"
_REPO = r"(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)"
_ID = r"(?P<id>[A-Za-z0-9]+)"
_ROUTES: list[tuple[str, str, Callable]] = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("GET", r"/api/jobs/hardware", _Handler.hardware),
    ("POST", rf"/api/jobs/{_NS}", _Handler.create_job),
    ("GET", rf"/api/jobs/{_NS}", _Handler.list_jobs),
    ("GET", rf"/api/jobs/{_NS}/{_ID}", _Handler.inspect_job),
    ("GET", rf"/api/jobs/{_NS}/{_ID}/logs", _Handler.job_logs),
    ("GET", rf"/api/jobs/{_NS}/{_ID}/metrics", _Handler.job_metrics),
    ("POST", rf"/api/jobs/{_NS}/{_ID}/cancel", _Handler.cancel_job),
    ("PUT", rf"/api/jobs/{_NS}/{_ID}/labels", _Handler.update_labels),
    ("POST", rf"/api/buckets/{_NS}/(?P<name>[A-Za-z0-9_.-]+)", _Handler.create_bucket),
    (
        "GET",
        rf"/api/buckets/{_NS}/(?P<name>[A-Za-z0-9_.-]+)/xet-write-token",
        _Handler.xet_write_token,
    ),
    ("POST", rf"/api/buckets/{_NS}/(?P<name>[A-Za-z0-9_.-]+)/batch", _Handler.bucket_batch),
    ("GET", r"/cas/v1/chunks/.*", _Handler.cas_not_found),
    ("POST", r"/cas/v1/xorb-grants/.*", _Handler.cas_not_found),
    ("POST", r"/cas/v2/shards", _Handler.cas_not_found),
    ("POST", r"/cas/v1/xorbs/(?P<prefix>[a-z]+)/(?P<hash>[0-9a-f]+)", _Handler.cas_xorb),
    ("POST", r"/cas/(v1/)?shards", _Handler.cas_shard),
    ("POST", r"/v1/telemetry", _Handler.telemetry),
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("POST", rf"/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)", _Handler.preupload),
    ("GET", rf"/api/{_TYPE}/{_REPO}/xet-write-token/(?P<rev>[^/]+)", _Handler.repo_xet_write_token),
    ("POST", rf"/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)", _Handler.repo_commit),
    ("GET", rf"/api/{_TYPE}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", _Handler.repo_info),
    ("GET", rf"/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", _Handler.repo_tree),
    ("GET", rf"/api/{_TYPE}/{_REPO}/commits/(?P<rev>[^/]+)", _Handler.repo_commits),
    (
        "HEAD",
        rf"/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
        _Handler.resolve_file,
    ),
    (
        "GET",
        rf"/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
        _Handler.resolve_file,
    ),
]
# Routes that answer without a token (they refuse private repositories themselves).
_OPEN_ROUTES = {
    _Handler.repo_info,
    _Handler.repo_tree,
    _Handler.repo_commits,
    _Handler.resolve_file,
    _Handler.cas_not_found,
    _Handler.cas_xorb,
    _Handler.cas_shard,
    _Handler.telemetry,
}
