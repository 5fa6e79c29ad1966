"""Model and dataset repositories as the Hub keeps them: commits of files, read back by revision.

The server in `hf_jobs_server.py` answers the repository routes with this store:

    POST /api/repos/create                          create_repo (409 with the url when it exists)
    POST /api/{type}s/{repo}/preupload/{rev}        upload modes: "lfs" for what the Hub's default
                                                    .gitattributes sends to LFS, else "regular"
    GET  /api/{type}s/{repo}/xet-write-token/{rev}  LFS files go up through Xet (hf_xet)
    POST /api/{type}s/{repo}/commit/{rev}           NDJSON: header, file (base64), lfsFile (sha256),
                                                    deletedFile, deletedFolder
    GET  /api/{type}s/{repo}[/revision/{rev}]       repo_info (sha, siblings, private)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]    list_repo_tree (lfs files carry their sha256)
    GET  /api/{type}s/{repo}/commits/{rev}          list_repo_commits, newest first
    HEAD/GET /{repo}/resolve/{rev}/{path}           downloads (`X-Repo-Commit`, `ETag`, `Range`)
    POST /api/validate-yaml                         model card front matter

A private repository answers an anonymous read as the Hub does: 401 with `X-Error-Code:
RepoNotFound`. Files are served over plain HTTP (no `X-Xet-Hash` header): what the Hub does for
clients without `hf_xet`, so downloads stay readable in tests.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# The patterns of the .gitattributes the Hub puts in every new model repository (LFS-tracked).
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.mlmodel *.model *.msgpack *.npy "
    "*.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar *.tflite "
    "*.tgz *.wasm *.xz *.zip *.zst *tfevents* *.gguf"
).split()
LFS_SIZE = 10 * 1024 * 1024  # larger files go to LFS whatever their name


def is_lfs(path: str, size: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_SIZE or any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    date: datetime
    files: dict[str, bytes]  # the whole tree after this commit


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: list[Commit] = field(default_factory=list)  # oldest first

    def at(self, revision: str) -> Commit | None:
        if revision in ("main", "HEAD") and self.commits:
            return self.commits[-1]
        return next((c for c in self.commits if c.oid == revision), None)


class RepoStore:
    """Every repository of the double's Hub."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}

    def create(self, repo_id: str, repo_type: str = "model", *, private: bool) -> bool:
        """Create an empty repository (one "initial commit" with .gitattributes); False if it exists."""
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                return False
            repo = Repo(repo_id, repo_type, private)
            attributes = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
            repo.commits.append(
                Commit(
                    secrets.token_hex(20),
                    "initial commit",
                    "",
                    datetime.now(UTC),
                    {".gitattributes": attributes.encode()},
                )
            )
            self.repos[(repo_type, repo_id)] = repo
            return True

    def get(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def commit(
        self,
        repo: Repo,
        title: str,
        message: str,
        added: dict[str, bytes],
        deleted: list[str],
        deleted_folders: list[str],
    ) -> Commit:
        with self._lock:
            files = dict(repo.commits[-1].files)
            for path in deleted:
                files.pop(path, None)
            for folder in deleted_folders:
                prefix = folder.rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            files.update(added)
            commit = Commit(secrets.token_hex(20), title, message, datetime.now(UTC), files)
            repo.commits.append(commit)
            return commit

    def seed_folder(
        self, repo_id: str, folder: Path, *, private: bool = True, repo_type: str = "model"
    ) -> Commit:
        """Put a local folder in a new repository, as if someone had uploaded it (test setup)."""
        self.create(repo_id, repo_type, private=private)
        files = {
            str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        return self.commit(self.get(repo_id, repo_type), "Upload folder", "", files, [], [])


def tree_entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
    if is_lfs(path, len(data)):
        entry["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": 134,
        }
    return entry


def etag(path: str, data: bytes) -> str:
    """What the Hub sends as ETag: the sha256 for LFS files, the git blob id for the others."""
    return hashlib.sha256(data).hexdigest() if is_lfs(path, len(data)) else git_blob_oid(data)
