"""A local HTTP server speaking the slice of GitHub's REST API that a deployment uses.

It is backed by a real bare git repository: pull requests point at real branches,
"merging" one is a real `git merge` into the base branch, and a push to the base
branch gets a completed Build workflow run, as on GitHub. Dispatching the inference
workflow records an in-progress run, as GitHub does.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

WORKFLOWS = {"inference.yml": 101, "build-push-images.yml": 102}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGitHub:
    """State of one repository `owner/name` plus the HTTP server serving it."""

    def __init__(
        self, bare: Path, repository: str = "acme/serverless-llm", token: str = "ghp_test_token_123"
    ) -> None:
        self.bare = bare
        self.repository = repository
        self.token = token
        self.pulls: list[dict] = []
        self.runs: list[dict] = []
        self.comments: list[dict] = []
        self.dispatches: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGitHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- git-backed helpers -------------------------------------------------
    def branch_sha(self, branch: str) -> str | None:
        done = subprocess.run(
            ["git", "rev-parse", "--verify", f"refs/heads/{branch}"],
            cwd=self.bare,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip() if done.returncode == 0 else None

    def merge(self, number: int) -> str:
        """Merge pull request `number` into its base with a real merge commit; return it."""
        pull = self.pulls[number - 1]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "w"

            def run(*args: str) -> str:
                cwd = work if work.exists() else tmp
                done = subprocess.run(
                    ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
                )
                return done.stdout.strip()

            run("clone", "-q", "--branch", pull["base"]["ref"], str(self.bare), str(work))
            run("fetch", "-q", "origin", pull["head"]["ref"])
            run(
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
            run("push", "-q", "origin", f"HEAD:{pull['base']['ref']}")
            sha = run("rev-parse", "HEAD")
        pull.update(state="closed", merged=True, merge_commit_sha=sha)
        self.add_run(
            "build-push-images.yml",
            head_sha=sha,
            branch=pull["base"]["ref"],
            event="push",
            status="completed",
        )
        return sha

    def add_run(
        self, workflow: str, *, head_sha: str, branch: str, event: str, status: str
    ) -> dict:
        run_id = 5000 + len(self.runs)
        run = {
            "id": run_id,
            "name": workflow,
            "workflow_id": WORKFLOWS[workflow],
            "head_sha": head_sha,
            "head_branch": branch,
            "event": event,
            "status": status,
            "conclusion": "success" if status == "completed" else None,
            "created_at": _now(),
            "updated_at": _now(),
            "url": f"{self.base_url}/repos/{self.repository}/actions/runs/{run_id}",
            "html_url": f"https://github.example/{self.repository}/actions/runs/{run_id}",
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
                if (
                    self.headers.get("Authorization") != f"token {hub.token}"
                    and self.headers.get("Authorization") != f"Bearer {hub.token}"
                ):
                    self._send(401, {"message": "Bad credentials"})
                    return False
                return True

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def _route(self, method: str) -> None:
                if not self._authorized():
                    return
                url = urlparse(self.path)
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
                    run = next((r for r in hub.runs if r["id"] == int(parts[2])), None)
                    if run is None:
                        return self._send(404, {"message": "Not Found"})
                    if method == "POST" and parts[3:] == ["cancel"]:
                        run.update(status="completed", conclusion="cancelled")
                        return self._send(202, {})
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
                            or query["head"] == f"{hub.repository.split('/')[0]}:{p['head']['ref']}"
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
                        for r in reversed(hub.runs)
                        if r["workflow_id"] == WORKFLOWS[file]
                        and all(
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
                        file,
                        head_sha=sha,
                        branch=ref,
                        event="workflow_dispatch",
                        status="in_progress",
                    )
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
    """What a serverless-llm model server answers: /health and /v1/chat/completions."""

    def __init__(self, *, healthy: bool = True) -> None:
        self.healthy = healthy
        self.requests: list[dict] = []
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
                    return self._send(200, {"status": "healthy", "model": "test"})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
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
