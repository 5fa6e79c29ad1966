"""A clone of the serverless-llm repository, driven with the `git` CLI.

The token never goes into a URL, an argument list or a file: git reads it from
`GIT_CONFIG_*` environment variables (an `http.extraheader`, as actions/checkout does),
and every error message is scrubbed of it before it leaves this module.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

from tasks.serving.serverless_llm.names import check_branch_name

COMMITTER = ("lm-fine-tuning", "lm-fine-tuning@users.noreply.github.com")


class GitError(RuntimeError):
    """A git command failed; the message carries git's stderr with secrets removed."""


class GitClone:
    """A working copy at `path`; `token` authenticates HTTPS fetches and pushes."""

    def __init__(self, path: Path, *, token: str | None = None) -> None:
        self.path = path
        self._token = token

    def _env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "LC_ALL": "C",
        }
        if self._token:
            basic = base64.b64encode(f"x-access-token:{self._token}".encode()).decode()
            env.update(
                {
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": "http.extraheader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
                }
            )
        return env

    def _scrub(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
            text = text.replace(
                base64.b64encode(f"x-access-token:{self._token}".encode()).decode(), "***"
            )
        return text

    def run(self, *args: str, cwd: Path | None = None) -> str:
        """Run `git ARGS` in the clone; return stdout."""
        completed = subprocess.run(
            ["git", *args],
            cwd=cwd or self.path,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if completed.returncode != 0:
            raise GitError(
                f"git {args[0]} failed (exit {completed.returncode}): {self._scrub(completed.stderr.strip())[-800:]}"
            )
        return completed.stdout.rstrip()

    @classmethod
    def clone(cls, url: str, dest: Path, *, branch: str, token: str | None = None) -> GitClone:
        """Clone `branch` of `url` into `dest` (which must not exist)."""
        check_branch_name(branch)
        if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError(
                "the clone URL must not carry credentials; put the token in the GitHub credentials block"
            )
        repo = cls(dest, token=token)
        repo.run(
            "clone",
            "--quiet",
            "--single-branch",
            "--branch",
            branch,
            "--",
            url,
            str(dest),
            cwd=dest.parent,
        )
        return repo

    def head(self) -> str:
        return self.run("rev-parse", "HEAD")

    def switch_to_new_branch(self, branch: str) -> None:
        self.run("checkout", "--quiet", "-B", check_branch_name(branch))

    def has_changes(self) -> bool:
        return bool(self.run("status", "--porcelain"))

    def commit_all(self, message: str) -> str:
        """Stage every change and commit it; return the commit id."""
        self.run("add", "--all")
        name, email = COMMITTER
        self.run(
            "-c",
            f"user.name={name}",
            "-c",
            f"user.email={email}",
            "commit",
            "--quiet",
            "-m",
            message,
        )
        return self.head()

    def push(self, branch: str, *, force: bool = False) -> None:
        """Push HEAD to `branch` on origin (`force` only for this project's own deploy branches)."""
        args = ["push", "--quiet", "origin", f"HEAD:refs/heads/{check_branch_name(branch)}"]
        if force:
            args.insert(1, "--force")
        self.run(*args)

    def changed_files(self) -> list[str]:
        return [line[3:] for line in self.run("status", "--porcelain").splitlines()]
