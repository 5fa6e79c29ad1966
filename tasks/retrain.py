"""Decide whether a stored fine-tune request needs retraining, and remember what was trained.

A dataset's fingerprint is its Hub commit sha when it lives on the Hub (a moving branch
such as `main` resolves to the commit it points at now), or a SHA-256 of the local files
(names and bytes) when it is a local file or folder.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from prefect import task
from pydantic import BaseModel, Field

from blocks import load_block
from blocks.huggingface import hub_api
from blocks.retrain import RetrainSpec
from schemas.request import DatasetSource, FineTuneRequest
from tasks.reporting.summary import FineTuneSummary

_READ_CHUNK = 1 << 20
BLOCK_TIMEOUT_SECONDS = 120
"""Reading or saving a Prefect Block: one API call, retried by the client."""


class FingerprintKind(str, Enum):
    """How a dataset fingerprint was taken."""

    HUB_REVISION = "hub-revision"
    CONTENT_SHA256 = "content-sha256"


class DatasetFingerprint(BaseModel):
    """What identifies one version of a dataset."""

    kind: FingerprintKind
    value: str = Field(description="Hub commit sha, or hex SHA-256 of the local files.")
    dataset: str

    @property
    def token(self) -> str:
        """The string stored in `RetrainSpec.last_fingerprint`."""
        return f"{self.kind.value}:{self.value}"


class RetrainOutcome(str, Enum):
    SKIPPED = "skipped"
    TRAINED = "trained"


class RetrainResult(BaseModel):
    """What the `retrain` flow did, and why."""

    outcome: RetrainOutcome
    reason: str
    spec_name: str
    fingerprint: DatasetFingerprint
    previous_fingerprint: str | None
    summary: FineTuneSummary | None = None

    @property
    def deployed(self) -> bool:
        """Whether the retrained model now serves (False when the promotion gate kept it back)."""
        return bool(self.summary and self.summary.deployment_status)


def trained_reason(fingerprint: DatasetFingerprint, summary: FineTuneSummary) -> str:
    """Why the run trained, and what became of the model (deployed, or kept and why)."""
    reason = f"dataset changed to {fingerprint.token}"
    if summary.promotion is not None:
        reason += f"; {summary.promotion.reason}"
    if summary.registry_id:
        reason += f" (registry entry {summary.registry_id})"
    return reason


def local_content_hash(path: Path) -> str:
    """SHA-256 over the relative names and bytes of a file, or of every file under a folder."""
    path = path.expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        digest.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def hub_dataset_revision(source: DatasetSource, *, api: HfApi) -> str:
    """The commit sha the dataset's revision (default: the main branch) points at now."""
    try:
        info = api.dataset_info(source.path, revision=source.revision)
    except RepositoryNotFoundError:
        raise ValueError(
            f"dataset.path: Hub dataset {source.path!r} was not found (or is private: set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise ValueError(
            f"dataset.revision: {source.revision!r} does not exist in {source.path!r}"
        ) from None
    if not info.sha:
        raise RuntimeError(f"the Hub returned no commit sha for dataset {source.path!r}")
    return info.sha


@task(
    name="fingerprint-dataset",
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    timeout_seconds=300,  # one Hub call, or hashing local files
    retry_condition_fn=lambda task, run, state: isinstance(
        state.result(raise_on_failure=False), HfHubHTTPError
    ),
)
def fingerprint_dataset(
    source: DatasetSource, *, endpoint: str | None = None
) -> DatasetFingerprint:
    """Fingerprint the dataset as it is now: Hub commit sha or local content hash."""
    if source.is_local:
        return DatasetFingerprint(
            kind=FingerprintKind.CONTENT_SHA256,
            value=local_content_hash(Path(source.path)),
            dataset=source.path,
        )
    hub = hub_api()
    sha = hub_dataset_revision(
        source, api=HfApi(endpoint=endpoint or hub.endpoint, token=hub.token)
    )
    return DatasetFingerprint(kind=FingerprintKind.HUB_REVISION, value=sha, dataset=source.path)


@task(name="load-retrain-spec", timeout_seconds=BLOCK_TIMEOUT_SECONDS)
def load_retrain_spec(spec_name: str) -> tuple[RetrainSpec, FineTuneRequest]:
    """The stored spec named `spec_name` and its validated fine-tune request."""
    try:
        spec = load_block(RetrainSpec, spec_name)
    except ValueError:
        raise ValueError(
            f"spec_name: no RetrainSpec block named {spec_name!r}; create one with "
            f"RetrainSpec(request=...).save({spec_name!r}) (see blocks/retrain.py)"
        ) from None
    promotion = {"promotion": spec.promotion.value}
    if spec.promotion_margin is not None:
        promotion["promotion_margin"] = spec.promotion_margin  # type: ignore[assignment]
    try:
        # The spec's promotion policy wins over the stored request's: a retrained model replaces
        # the served one only when it is better, unless the spec says otherwise.
        request = FineTuneRequest.model_validate({**spec.request, **promotion})
    except ValueError as exc:
        raise ValueError(
            f"RetrainSpec {spec_name!r}: its stored request is not a valid FineTuneRequest: {exc}"
        ) from None
    return spec, request


@task(name="record-retraining", timeout_seconds=BLOCK_TIMEOUT_SECONDS)
def record_retraining(
    spec_name: str, fingerprint: DatasetFingerprint, summary: FineTuneSummary, *, flow_run_id: str
) -> RetrainSpec:
    """Store the fingerprint of a successful training, so an unchanged dataset is skipped next time."""
    spec = load_block(RetrainSpec, spec_name)
    spec.last_fingerprint = fingerprint.token
    spec.last_trained_at = datetime.now(UTC)
    spec.last_flow_run_id = flow_run_id
    spec.last_model = summary.hub_repo or summary.model_dir
    spec.last_final_loss = summary.final_loss
    spec.save(spec_name, overwrite=True)
    return spec
