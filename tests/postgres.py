"""A throw-away PostgreSQL cluster on loopback, for the tests that need a real server.

The ledger and the Prefect server speak PostgreSQL when several workers share them; these
tests run them against a real one. The cluster is Debian's `postgresql` package's own
`initdb` + `pg_ctl`, in a temporary folder, listening on 127.0.0.1 only, trust auth:

    python3 tests/postgres.py start DIR     # prints the server's URL (postgresql://postgres@127.0.0.1:PORT)
    python3 tests/postgres.py stop DIR

`.ci/run` does that around the test run and exports `LMFT_TEST_POSTGRES_URL`; without it the
`postgres` fixture (tests/conftest.py) starts a cluster of its own when the binaries are
installed. As root (CI), the cluster runs as the `postgres` user: PostgreSQL refuses root.
Only the standard library is used, so `.ci/run` can start it before the virtualenv exists.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

POSTGRES_URL_ENV = "LMFT_TEST_POSTGRES_URL"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 120


def postgres_binary(name: str) -> str | None:
    """`initdb`/`pg_ctl`: on PATH, else in Debian's versioned folder (not on PATH by default)."""
    found = shutil.which(name)
    if found:
        return found
    versions = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    newest = sorted(versions, key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    return newest[-1] if newest else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as_owner(command: list[str], directory: Path) -> subprocess.CompletedProcess:
    user = SUPERUSER if os.geteuid() == 0 else None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C"}
    return subprocess.run(
        command, user=user, env=env, cwd=directory, capture_output=True, text=True, check=False
    )


@dataclass(frozen=True)
class PostgresServer:
    """A running server reachable at `url` (`postgresql://user@host:port`, no database)."""

    url: str

    def database_url(self, database: str, driver: str = "psycopg") -> str:
        """SQLAlchemy URL of `database` with `driver` (`psycopg` for the ledger, `asyncpg` for Prefect)."""
        rest = self.url.split("://", 1)[1]
        return f"postgresql+{driver}://{rest.rstrip('/')}/{database}"

    def create_database(self, prefix: str = "lmft") -> str:
        """A new, empty database; returns its name."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"{self.url.rstrip('/')}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


class PostgresCluster:
    """`initdb` a cluster in `directory` and run it with `pg_ctl` on 127.0.0.1:`port`."""

    def __init__(self, directory: Path, *, port: int | None = None, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.data = self.directory / "data"
        self.port = port or _free_port()
        self.fsync = fsync

    @classmethod
    def available(cls) -> str | None:
        """Why a cluster cannot be started here, or None when it can."""
        missing = [name for name in ("initdb", "pg_ctl") if postgres_binary(name) is None]
        if missing:
            return f"{' and '.join(missing)} not found: install PostgreSQL (apt-get install postgresql)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SUPERUSER)
            except KeyError:
                return f"running as root and there is no {SUPERUSER!r} user to run PostgreSQL as"
        return None

    def start(self) -> PostgresServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            done = _run_as_owner(
                [
                    postgres_binary("initdb"),
                    "--pgdata",
                    str(self.data),
                    "--username",
                    SUPERUSER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--no-locale",
                ],
                self.directory,
            )
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data}"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off"
        (self.directory / "port").write_text(str(self.port))
        done = _run_as_owner(
            [
                postgres_binary("pg_ctl"),
                "--pgdata",
                str(self.data),
                "--log",
                str(self.data / "server.log"),
                "--options",
                options,
                "--wait",
                "--timeout",
                str(START_TIMEOUT_SECONDS),
                "start",
            ],
            self.directory,
        )
        if done.returncode != 0:
            log = self.data / "server.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n{tail}")
        return PostgresServer(url=f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            _run_as_owner(
                [
                    postgres_binary("pg_ctl"),
                    "--pgdata",
                    str(self.data),
                    "--mode",
                    "fast",
                    "--wait",
                    "stop",
                ],
                self.directory,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python3 tests/postgres.py start|stop DIR", file=sys.stderr)
        return 2
    action, directory = argv
    if action == "start":
        reason = PostgresCluster.available()
        if reason:
            print(reason, file=sys.stderr)
            return 1
        print(PostgresCluster(Path(directory)).start().url)
    else:
        port_file = Path(directory) / "port"
        port = int(port_file.read_text()) if port_file.exists() else None
        PostgresCluster(Path(directory), port=port).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
