"""A local HTTP server speaking the slice of GitHub's REST API that a deployment uses.

It is backed by a real bare git repository and behaves like GitHub with the real
serverless-llm workflows (read from `build-push-images.yml`, `inference.yml` and
`.github/actions/inference/action.yml` of `jonasneves/serverless-llm`):

- Pull requests point at real branches; merging one is a real `git merge` pushed to the base.
- Every push reaches the double through the bare repository's `post-receive` hook, as a push
  event reaches GitHub. A push starts a Build run only when the pushed workflow's
  `on.push` filters match: the branch is in `branches` and a changed file matches `paths`
  (git's `:(glob)` pathspecs, which read `*` and `**` as GitHub's filters do). The run
  executes what the real Build does: its matrix is `python config/models.py --inference-dirs`
  when `config/` or `app/shared/` changed; each directory's recipe is the `dockerfile` of the
  model named like the directory without `-inference`; the image
  `lm-arena/DIR` goes into `registry`. A directory that is `null` fails the run.
- Dispatching `inference.yml` starts a run that executes the inference action's first steps
  on the dispatched ref: `python config/models.py NAME` (Read inference config), then
  `docker pull ghcr.io/OWNER/lm-arena/${model_dir}:latest` (Pull inference image, fails when
  the registry has no such image), then starts the model server: `model_server` (when given)
  becomes healthy for that model while the run is in progress. `crash_inference` makes the
  container exit, as a GGUF that does not load does; the run then concludes `failure`.
- Cancelling a completed run answers 409, as GitHub does.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

WORKFLOWS = {"inference.yml": 101, "build-push-images.yml": 102}
ZERO_SHA = "0" * 40
HOOK_ROUTE = "/_double/post-receive"

POST_RECEIVE = """#!{python}
# Installed by the GitHub double: forwards each pushed ref to it, as GitHub's push event.
import json, sys, urllib.request
updates = [line.split() for line in sys.stdin if line.strip()]
request = urllib.request.Request({url!r}, data=json.dumps(updates).encode(), method="POST")
urllib.request.urlopen(request, timeout=60).read()
"""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=check, env=env
    )


def _export(bare: Path, sha: str, tree: Path) -> None:
    """The files of commit `sha` in `tree`, as actions/checkout leaves them."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", sha], cwd=bare, capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")


class FakeGitHub:
    """State of one repository `owner/name` plus the HTTP server serving it."""

    def __init__(
        self,
        bare: Path,
        repository: str = "acme/serverless-llm",
        token: str = "ghp_test_token_123",
        *,
        model_server: FakeModelServer | None = None,
        build_seconds: float = 0.2,
    ) -> None:
        self.bare = bare
        self.repository = repository
        self.owner = repository.split("/")[0]
        self.token = token
        self.model_server = model_server
        self.build_seconds = build_seconds
        self.crash_inference: str | None = None
        self.pulls: list[dict] = []
        self.runs: list[dict] = []
        self.jobs: dict[int, list[dict]] = {}
        self.comments: list[dict] = []
        self.dispatches: list[dict] = []
        self.pushes: list[tuple[str, str, str]] = []
        self.registry: dict[str, dict] = {}
        self.completed_at: dict[int, float] = {}  # run id -> time.monotonic() when it ended
        self._lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGitHub:
        self.thread.start()
        if self.model_server is not None:
            self.model_server.serving = None
        hook = self.bare / "hooks" / "post-receive"
        hook.write_text(POST_RECEIVE.format(python=sys.executable, url=self.base_url + HOOK_ROUTE))
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        # The images the repository's earlier Build runs pushed.
        head = self.branch_sha("main")
        if head:
            for directory, recipe in self._build_matrix(head, everything=True):
                if directory:
                    self.registry[directory] = {"dockerfile": recipe, "sha": head}
        return self

    def __exit__(self, *exc) -> None:
        (self.bare / "hooks" / "post-receive").unlink(missing_ok=True)
        self.server.shutdown()
        self.server.server_close()

    # -- git-backed helpers -------------------------------------------------
    def branch_sha(self, branch: str) -> str | None:
        done = _git(self.bare, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def file_at(self, sha: str, path: str) -> str | None:
        done = _git(self.bare, "show", f"{sha}:{path}", check=False)
        return done.stdout if done.returncode == 0 else None

    def merge(self, number: int) -> str:
        """Merge pull request `number` into its base with a real merge commit; return it."""
        pull = self.pulls[number - 1]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "w"
            _git(
                Path(tmp), "clone", "-q", "--branch", pull["base"]["ref"], str(self.bare), str(work)
            )
            _git(work, "fetch", "-q", "origin", pull["head"]["ref"])
            _git(
                work,
                "-c",
                "user.name=maintainer",
                "-c",
                "user.email=m@example.org",
                "merge",
                "-q",
                "--no-ff",
                "-m",
                f"Merge pull request #{number}",
                "FETCH_HEAD",
            )
            _git(work, "push", "-q", "origin", f"HEAD:{pull['base']['ref']}")
            sha = _git(work, "rev-parse", "HEAD").stdout.strip()
        pull.update(state="closed", merged=True, merge_commit_sha=sha)
        return sha

    def runs_of(self, workflow: str) -> list[dict]:
        return [r for r in self.runs if r["workflow_id"] == WORKFLOWS[workflow]]

    # -- push events ------------------------------------------------------------
    def on_push(self, old: str, new: str, ref: str) -> None:
        """What GitHub does with a pushed ref: start the push-triggered workflows that match."""
        self.pushes.append((old, new, ref))
        if new == ZERO_SHA or not ref.startswith("refs/heads/"):
            return
        branch = ref.removeprefix("refs/heads/")
        text = self.file_at(new, ".github/workflows/build-push-images.yml")
        if text is None:
            return
        data = yaml.safe_load(text) or {}
        push = ((data.get("on") or data.get(True) or {}).get("push")) or {}
        if branch not in (push.get("branches") or [branch]):
            return
        if not self._touches(old, new, push.get("paths"), push.get("paths-ignore")):
            return
        run = self.add_run(
            "build-push-images.yml", head_sha=new, branch=branch, event="push", status="queued"
        )
        threading.Thread(target=self._execute_build, args=(run, old, new), daemon=True).start()

    def _touches(self, old: str, new: str, paths: list | None, ignore: list | None) -> bool:
        base = old if old != ZERO_SHA else (self.branch_sha("main") or new)
        specs = []
        for pattern in paths or ["**"]:
            if pattern.startswith("!"):
                specs.append(f":(exclude,glob){pattern[1:]}")
            else:
                specs.append(f":(glob){pattern}")
        specs += [f":(exclude,glob){pattern}" for pattern in ignore or []]
        changed = _git(self.bare, "diff", "--name-only", base, new, "--", *specs).stdout
        return bool(changed.strip())

    def _build_matrix(self, sha: str, *, everything: bool, changed: list[str] = ()) -> list[tuple]:
        """(directory, recipe) pairs, as the Build workflow's detect-changes and config steps do."""
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp)
            _export(self.bare, sha, tree)
            if everything or any(f.startswith(("app/shared/", "config/")) for f in changed):
                listed = self._python(tree, "config/models.py", "--inference-dirs")
                directories = json.loads(listed.stdout) if listed.returncode == 0 else [None]
            else:
                directories = sorted(
                    {
                        f.split("/")[1]
                        for f in changed
                        if f.startswith("app/") and f.split("/")[1].endswith("-inference")
                    }
                )
            matrix = []
            for directory in directories:
                recipe = None
                if directory:
                    shown = self._python(
                        tree, "config/models.py", directory.removesuffix("-inference")
                    )
                    recipe = (
                        json.loads(shown.stdout).get("dockerfile")
                        if shown.returncode == 0
                        else None
                    )
                matrix.append((directory, recipe or "inference"))
            return matrix

    @staticmethod
    def _python(tree: Path, *args: str) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run(
            [sys.executable, *args], cwd=tree, capture_output=True, text=True, env=env, timeout=60
        )

    def _execute_build(self, run: dict, old: str, new: str) -> None:
        self._set(run, status="in_progress")
        base = old if old != ZERO_SHA else new
        changed = _git(self.bare, "diff", "--name-only", base, new).stdout.split()
        matrix = self._build_matrix(new, everything=False, changed=changed)
        time.sleep(self.build_seconds)
        jobs, failed = [], False
        for index, (directory, recipe) in enumerate(matrix):
            ok = bool(directory)
            if ok:
                self.registry[directory] = {"dockerfile": recipe, "sha": new}
            failed = failed or not ok
            jobs.append(
                self._job(
                    run, f"build-and-push ({directory})", [("Build and push", ok)], index=index
                )
            )
        self.jobs[run["id"]] = jobs
        self._set(run, status="completed", conclusion="failure" if failed else "success")

    # -- the inference action --------------------------------------------------
    def _execute_inference(self, run: dict, model: str) -> None:
        self._set(run, status="in_progress")
        steps: list[tuple[str, bool]] = []

        def finish(conclusion: str) -> None:
            self.jobs[run["id"]] = [self._job(run, model, steps)]
            self._set(run, status="completed", conclusion=conclusion)

        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp)
            _export(self.bare, run["head_sha"], tree)
            shown = self._python(tree, "config/models.py", model)
        steps.append(("Read inference config", shown.returncode == 0))
        if shown.returncode != 0:
            return finish("failure")
        model_dir = json.loads(shown.stdout).get("model_dir")
        # jq -r prints null as the text "null": the action then pulls lm-arena/null.
        image = "null" if model_dir is None else model_dir
        steps.append(("Pull inference image", image in self.registry))
        if image not in self.registry:
            return finish("failure")
        steps.append(("Start inference server", self.crash_inference is None))
        if self.crash_inference is not None:
            return finish("failure")
        self.jobs[run["id"]] = [self._job(run, model, steps, status="in_progress")]
        if self.model_server is not None:
            config = json.loads(shown.stdout)
            self.model_server.serving = model
            self.model_server.details = {"repo": config["model_repo"], "file": config["model_file"]}
        # "Cancel previous workflow": the new server took over from the model's older run.
        for other in self.runs_of("inference.yml"):
            if (
                other is not run
                and other.get("display_title") == model
                and other["status"] != "completed"
            ):
                self._set(other, status="completed", conclusion="cancelled")
        # The server keeps running (5 h on GitHub) until the run is cancelled.

    def _job(
        self,
        run: dict,
        name: str,
        steps: list[tuple[str, bool]],
        *,
        status: str = "completed",
        index: int = 0,
    ) -> dict:
        job_id = run["id"] * 100 + index
        return {
            "id": job_id,
            "run_id": run["id"],
            "name": name,
            "status": status,
            "conclusion": None
            if status != "completed"
            else ("success" if all(ok for _, ok in steps) else "failure"),
            "html_url": f"{run['html_url']}/job/{job_id}",
            "url": f"{self.base_url}/repos/{self.repository}/actions/jobs/{job_id}",
            "steps": [
                {
                    "name": step,
                    "number": i + 1,
                    "status": "completed",
                    "conclusion": "success" if ok else "failure",
                }
                for i, (step, ok) in enumerate(steps)
            ],
        }

    def _set(self, run: dict, **fields) -> None:
        with self._lock:
            run.update(fields, updated_at=_now())
            if fields.get("status") == "completed":
                self.completed_at[run["id"]] = time.monotonic()

    def add_run(
        self, workflow: str, *, head_sha: str, branch: str, event: str, status: str
    ) -> dict:
        with self._lock:
            run_id = 5000 + len(self.runs)
            run = {
                "id": run_id,
                "name": workflow,
                "workflow_id": WORKFLOWS[workflow],
                "head_sha": head_sha,
                "head_branch": branch,
                "event": event,
                "status": status,
                "conclusion": None,
                "created_at": _now(),
                "updated_at": _now(),
                "url": f"{self.base_url}/repos/{self.repository}/actions/runs/{run_id}",
                "html_url": f"https://github.example/{self.repository}/actions/runs/{run_id}",
                "jobs_url": f"{self.base_url}/repos/{self.repository}/actions/runs/{run_id}/jobs",
                "cancel_url": f"{self.base_url}/repos/{self.repository}/actions/runs/{run_id}/cancel",
            }
            self.runs.append(run)
        return run

    # -- JSON documents -------------------------------------------------------
    def repo_json(self) -> dict:
        owner, name = self.repository.split("/")
        return {
            "id": 1,
            "name": name,
            "full_name": self.repository,
            "owner": {"login": owner, "type": "User"},
            "url": f"{self.base_url}/repos/{self.repository}",
            "default_branch": "main",
            "private": False,
            "html_url": f"https://github.example/{self.repository}",
        }

    def workflow_json(self, file: str) -> dict:
        wid = WORKFLOWS[file]
        return {
            "id": wid,
            "name": file,
            "path": f".github/workflows/{file}",
            "state": "active",
            "url": f"{self.base_url}/repos/{self.repository}/actions/workflows/{wid}",
        }

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body=None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") not in (
                    f"token {hub.token}",
                    f"Bearer {hub.token}",
                ):
                    self._send(401, {"message": "Bad credentials"})
                    return False
                return True

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                if method == "POST" and url.path == HOOK_ROUTE:
                    for old, new, ref in self._body():
                        hub.on_push(old, new, ref)
                    return self._send(204)
                if not self._authorized():
                    return
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                prefix = f"/repos/{hub.repository}"
                if not url.path.startswith(prefix):
                    return self._send(404, {"message": "Not Found"})
                path = url.path[len(prefix) :]
                parts = [p for p in path.split("/") if p]
                if method == "GET" and not parts:
                    return self._send(200, hub.repo_json())
                if parts[:1] == ["pulls"]:
                    return self._pulls(method, parts[1:], query)
                if parts[:1] == ["issues"] and method == "POST" and parts[2:] == ["comments"]:
                    body = self._body()
                    hub.comments.append({"issue": int(parts[1]), "body": body["body"]})
                    return self._send(201, {"id": len(hub.comments), "body": body["body"]})
                if parts[:2] == ["actions", "workflows"]:
                    return self._workflows(method, parts[2:], query)
                if parts[:2] == ["actions", "runs"]:
                    return self._run(method, parts[2:])
                return self._send(404, {"message": "Not Found"})

            def _run(self, method: str, rest: list[str]) -> None:
                run = next((r for r in hub.runs if r["id"] == int(rest[0])), None)
                if run is None:
                    return self._send(404, {"message": "Not Found"})
                if method == "POST" and rest[1:] == ["cancel"]:
                    if run["status"] == "completed":
                        return self._send(
                            409, {"message": "Cannot cancel a workflow run that is completed."}
                        )
                    hub._set(run, status="completed", conclusion="cancelled")
                    if hub.model_server is not None and run["name"] == "inference.yml":
                        hub.model_server.serving = hub.model_server.details = None
                    return self._send(202, {})
                if method == "GET" and rest[1:] == ["jobs"]:
                    jobs = hub.jobs.get(run["id"], [])
                    return self._send(200, {"total_count": len(jobs), "jobs": jobs})
                if method == "GET" and not rest[1:]:
                    return self._send(200, run)
                return self._send(404, {"message": "Not Found"})

            def _pulls(self, method: str, rest: list[str], query: dict) -> None:
                if method == "GET" and not rest:
                    found = [
                        p
                        for p in hub.pulls
                        if p["state"] == query.get("state", "open")
                        and (
                            "head" not in query
                            or query["head"] == f"{hub.owner}:{p['head']['ref']}"
                        )
                        and ("base" not in query or query["base"] == p["base"]["ref"])
                    ]
                    return self._send(200, found)
                if method == "POST" and not rest:
                    body = self._body()
                    sha = hub.branch_sha(body["head"])
                    if sha is None:
                        return self._send(
                            422, {"message": "Validation Failed", "errors": [{"field": "head"}]}
                        )
                    number = len(hub.pulls) + 1
                    pull = {
                        "id": number,
                        "number": number,
                        "state": "open",
                        "title": body["title"],
                        "body": body["body"],
                        "merged": False,
                        "merge_commit_sha": None,
                        "head": {"ref": body["head"], "sha": sha},
                        "base": {"ref": body["base"]},
                        "url": f"{hub.base_url}/repos/{hub.repository}/pulls/{number}",
                        "issue_url": f"{hub.base_url}/repos/{hub.repository}/issues/{number}",
                        "html_url": f"https://github.example/{hub.repository}/pull/{number}",
                    }
                    hub.pulls.append(pull)
                    return self._send(201, pull)
                number = int(rest[0])
                if number > len(hub.pulls):
                    return self._send(404, {"message": "Not Found"})
                pull = hub.pulls[number - 1]
                if method == "PATCH":
                    pull.update(
                        {k: v for k, v in self._body().items() if k in {"title", "body", "state"}}
                    )
                pull["head"]["sha"] = hub.branch_sha(pull["head"]["ref"]) or pull["head"]["sha"]
                return self._send(200, pull)

            def _workflows(self, method: str, rest: list[str], query: dict) -> None:
                key = rest[0]
                file = next((f for f, wid in WORKFLOWS.items() if key in (f, str(wid))), None)
                if file is None:
                    return self._send(404, {"message": "Not Found"})
                if method == "GET" and len(rest) == 1:
                    return self._send(200, hub.workflow_json(file))
                if method == "GET" and rest[1:] == ["runs"]:
                    runs = [
                        r
                        for r in reversed(hub.runs_of(file))
                        if all(
                            r[field] == query[param]
                            for param, field in (
                                ("event", "event"),
                                ("branch", "head_branch"),
                                ("head_sha", "head_sha"),
                            )
                            if param in query
                        )
                    ]
                    return self._send(200, {"total_count": len(runs), "workflow_runs": runs})
                if method == "POST" and rest[1:] == ["dispatches"]:
                    body = self._body()
                    ref = body.get("ref")
                    sha = hub.branch_sha(ref)
                    if sha is None:
                        return self._send(422, {"message": f"No ref found for: {ref}"})
                    hub.dispatches.append(body)
                    run = hub.add_run(
                        file, head_sha=sha, branch=ref, event="workflow_dispatch", status="queued"
                    )
                    if file == "inference.yml":
                        model = (body.get("inputs") or {}).get("model")
                        run["display_title"] = model  # run-name: "${{ inputs.model }}"
                        threading.Thread(
                            target=hub._execute_inference, args=(run, model), daemon=True
                        ).start()
                    if body.get("return_run_details"):
                        return self._send(
                            200,
                            {
                                "workflow_run_id": run["id"],
                                "run_url": run["url"],
                                "html_url": run["html_url"],
                            },
                        )
                    return self._send(204)
                return self._send(404, {"message": "Not Found"})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PATCH(self) -> None:
                self._route("PATCH")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        return Handler


class FakeModelServer:
    """What a serverless-llm model server answers through its tunnel: /health and chat.

    Standalone it serves from the start. Given to `FakeGitHub(model_server=...)`, it serves
    only while an inference run started it (502 before, as the gateway answers without a
    tunnel), and its `/health/details` names the repo and file that run loaded, as
    serverless-llm's llama-server wrapper does. `healthy=False` makes the loaded model fail
    its chat requests.
    """

    def __init__(self, *, healthy: bool = True) -> None:
        self.healthy = healthy
        self.serving: str | None = "any"
        self.details: dict | None = None  # repo and file, once an inference run started it
        self.requests: list[dict] = []
        self.health_checks: list[float] = []  # time.monotonic() of each GET /health
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health":
                    owner.health_checks.append(time.monotonic())
                if owner.serving is None:
                    return self._send(502, {"error": "no tunnel registered"})
                if self.path == "/health":
                    return self._send(200, {"status": "healthy", "model": owner.serving})
                if self.path == "/health/details" and owner.details is not None:
                    return self._send(200, {"status": "healthy", **owner.details})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                if owner.serving is None:
                    return self._send(502, {"error": "no tunnel registered"})
                if not owner.healthy:
                    return self._send(500, {"error": "model failed to load"})
                self._send(
                    200,
                    {
                        "id": "c1",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "Paris."},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
