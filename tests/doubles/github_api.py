"""A local HTTP server speaking the workflow-dispatch route of GitHub's REST API.

`POST /repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches` answers 204 and
records the call, as github.com does; PyGithub is pointed at it with `base_url`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Dispatch:
    repository: str
    workflow: str
    ref: str
    inputs: dict
    authorization: str


@dataclass
class GitHubServer:
    url: str
    workflows: set[str]
    dispatches: list[Dispatch] = field(default_factory=list)


@contextmanager
def github_api(
    repository: str = "acme/lmft", workflows: tuple[str, ...] = ("prefect-worker.yml",)
) -> Iterator[GitHubServer]:
    state = GitHubServer(url="", workflows=set(workflows))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            parts = self.path.strip("/").split("/")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if (
                len(parts) == 7
                and parts[0] == "repos"
                and "/".join(parts[1:3]) == repository
                and parts[3:5] == ["actions", "workflows"]
                and parts[6] == "dispatches"
            ):
                if not self.headers.get("Authorization"):
                    return self._reply(401, {"message": "Requires authentication"})
                if parts[5] not in state.workflows:
                    return self._reply(404, {"message": "Not Found"})
                if "ref" not in body:
                    return self._reply(422, {"message": 'Invalid request. "ref" wasn\'t supplied.'})
                state.dispatches.append(
                    Dispatch(
                        repository,
                        parts[5],
                        body["ref"],
                        body.get("inputs", {}),
                        self.headers["Authorization"],
                    )
                )
                return self._reply(204, None)
            return self._reply(404, {"message": "Not Found"})

        def _reply(self, status: int, body: dict | None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
