"""Session-wide fixtures: an isolated LMFT_HOME, a Prefect test server, PostgreSQL, tiny models."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import POSTGRES_URL_ENV, PostgresCluster, PostgresServer
from tests.tiny_models import build_tiny_llama, save_tokenizer


@pytest.fixture(scope="session", autouse=True)
def lmft_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own $LMFT_HOME (jobs, models, ledgers); the embedded
    model is materialised into the user's cache once and reused, as the CLI does."""
    home = tmp_path_factory.mktemp("lmft-home")
    os.environ["LMFT_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRACKIO_DIR", str(home / "trackio"))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return home


@pytest.fixture(autouse=True)
def fresh_hf_credentials() -> Iterator[None]:
    """No test sees the Hugging Face credentials Block another test loaded (the cache lives for
    minutes in a worker, for the whole session here)."""
    import sys

    yield
    if module := sys.modules.get("blocks.huggingface"):
        module._load_block.cache_clear()


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server: the one `.ci/run` started (`$LMFT_TEST_POSTGRES_URL`), else a
    throw-away cluster of this session when PostgreSQL is installed. Where there is none the
    tests that need it skip, saying why; under CI they fail instead: CI must provide it."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _postgres_unavailable("the PostgreSQL driver is missing: pip install -e '.[postgres]'")
    if url := os.environ.get(POSTGRES_URL_ENV):
        yield PostgresServer(url)
        return
    if reason := PostgresCluster.available():
        _postgres_unavailable(reason)
    # Not under tmp_path: pytest's folder is private to this user, and the server runs as `postgres`.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="lmft-test-pg-")), fsync=False)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _postgres_unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide PostgreSQL for these tests: {reason}")
    pytest.skip(f"no PostgreSQL here: {reason}")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty budget ledger, in SQLite and in PostgreSQL (where workers on several machines share it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.database_url(server.create_database("ledger"))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tokenizer(tmp_path_factory.mktemp("smollm2-tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A random 2-layer llama with SmolLM2's tokenizer and chat template."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir)


@pytest.fixture
def hf_server(monkeypatch: pytest.MonkeyPatch):
    """A local Hugging Face Jobs server; the worker's credentials (env) point at it."""
    from huggingface_hub import constants

    from tests.doubles.hf_jobs_server import HfJobsServer

    monkeypatch.setattr(
        constants, "HF_HUB_OFFLINE", False
    )  # the session is offline; this Hub is local
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HfJobsServer() as server:
        monkeypatch.setenv("LMFT_HF_NAMESPACE", server.namespace)
        monkeypatch.setenv("HF_TOKEN", server.token)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="session")
def embedded_base_model(lmft_home: Path) -> Path:
    """The embedded default (SmolLM2-135M) materialised in $LMFT_HOME, so estimates of paid
    runs of `smollm2-135m-instruct` read its config locally instead of from the Hub."""
    from tasks.jobs.base_model import materialize_embedded_model

    return materialize_embedded_model()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs: room for a run's small files, not for a saved model (mounting needs root)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)
