"""`HuggingFaceCredentials`: the token and namespace that training jobs run and push under."""

from __future__ import annotations

import os

from cachetools.func import ttl_cache
from huggingface_hub import HfApi
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from blocks import load_block

DEFAULT_BLOCK_NAME = "huggingface"
BLOCK_NAME_ENV = "LMFT_HF_CREDENTIALS_BLOCK"
NAMESPACE_ENV = "LMFT_HF_NAMESPACE"


class HuggingFaceCredentials(Block):
    """A Hugging Face token (kept secret) and the namespace that owns jobs and model repos.

    Example:
        ```python
        HuggingFaceCredentials(token="hf_…", namespace="my-org").save("huggingface")
        ```
    """

    _block_type_name = "Hugging Face Credentials"
    _description = "Token and namespace for Hugging Face Jobs and the Hub repos a run pushes to."

    token: SecretStr = Field(
        description="A Hugging Face access token with write access to the namespace."
    )
    namespace: str = Field(
        min_length=1, description="User or organisation that runs the jobs and owns the repos."
    )
    endpoint: str | None = Field(
        default=None, description="Hub endpoint; empty for https://huggingface.co."
    )
    trackio_space_id: str | None = Field(
        default=None,
        description="Trackio Space ('namespace/name') the training job syncs its metrics to.",
    )

    def api(self) -> HfApi:
        """An `HfApi` client for this endpoint and token."""
        return HfApi(endpoint=self.endpoint or None, token=self.token.get_secret_value())

    @property
    def hub_url(self) -> str:
        return (self.endpoint or "https://huggingface.co").rstrip("/")


def load_hf_credentials() -> HuggingFaceCredentials:
    """The credentials of this worker: from the environment when `LMFT_HF_NAMESPACE` and `HF_TOKEN`
    are set (scripts, CI), otherwise from the Block named by `LMFT_HF_CREDENTIALS_BLOCK`
    (default `huggingface`)."""
    namespace, token = os.environ.get(NAMESPACE_ENV), os.environ.get("HF_TOKEN")
    if namespace and token:
        return HuggingFaceCredentials(
            token=SecretStr(token),
            namespace=namespace,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            trackio_space_id=os.environ.get("TRACKIO_SPACE_ID") or None,
        )
    return _load_block(os.environ.get(BLOCK_NAME_ENV, DEFAULT_BLOCK_NAME))


# A monitor reads the credentials at every poll; a worker lives for hours. Cached for a few
# minutes, so a token rotated (or a Block deleted) in Prefect reaches a running worker.
BLOCK_CACHE_SECONDS = 300


@ttl_cache(maxsize=8, ttl=BLOCK_CACHE_SECONDS)
def _load_block(name: str) -> HuggingFaceCredentials:
    try:
        return load_block(HuggingFaceCredentials, name)
    except ValueError as exc:
        raise RuntimeError(
            f"no Hugging Face credentials: the Prefect block {name!r} does not exist ({exc}). Create it with "
            f"`HuggingFaceCredentials(token=..., namespace=...).save({name!r})`, or set {NAMESPACE_ENV} and HF_TOKEN"
        ) from None


def hub_api() -> HfApi:
    """The Hub client that every worker-side Hub call of a run goes through (tokenizer and model
    downloads, model sizes, prices, GGUF uploads): the token and endpoint of
    `load_hf_credentials()`; without credentials, huggingface_hub's own (HF_TOKEN,
    `hf auth login` or anonymous; HF_ENDPOINT), which public repos are enough for.

    Example:
        ```python
        api = hub_api()
        snapshot_download("me/private-model", token=api.token, endpoint=api.endpoint)
        ```
    """
    try:
        return load_hf_credentials().api()
    except RuntimeError:  # no Block and no environment: not an error until a private repo says so
        return HfApi()
