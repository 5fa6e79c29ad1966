"""Deploy a GGUF to serverless-llm the way its maintainers do, and prove it serves.

1. Make sure the GGUF is on the Hugging Face Hub (the server downloads it at start-up).
2. Clone the repository, add or update the `config/models.py` entry (its `inference_dir`
   names an image the repository already builds: see `images.py`), run the repository's
   sync scripts, check the result with `python config/models.py NAME`.
3. Commit: on `lmft/deploy-NAME` with a pull request, or straight to the base branch.
   When the repository already holds exactly this change nothing is committed or pushed
   (status `unchanged`).
4. Images are built only by pushes to the base branch matching the Build workflow's paths:
   after a push (or a merge, with `wait_for_merge`) that matches, wait for that Build run.
5. Dispatch `inference.yml` with `model=NAME` (on the deploy branch while the PR is
   unmerged: the workflow reads the branch's config and pulls an image `main` built), then
   wait for `/health` while following the run, and send a chat.
6. If the run fails or the smoke test fails: cancel the run, close the PR (or restore the
   previous entry), record the deployment as `rolled_back` with the reason, fail.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from github import GithubException
from github.PullRequest import PullRequest
from github.Repository import Repository
from github.WorkflowRun import WorkflowRun
from prefect.logging import get_logger

from blocks.serverless_llm import DeployMode, ServerlessLLMTarget
from schemas.serving import ServedModel, ServeStatus
from tasks.serving.endpoints import SmokeTestFailed, smoke_chat, wait_for_health
from tasks.serving.serverless_llm.git_repo import GitClone, GitError
from tasks.serving.serverless_llm.github import (
    GitHubStepFailed,
    cancel_run,
    check_run_alive,
    close_pull,
    dispatch_inference,
    open_or_update_pull,
    open_repository,
    wait_for_merge,
    wait_for_workflow_run,
)
from tasks.serving.serverless_llm.hub import HF_URI_PREFIX, parse_hf_uri, publish_gguf
from tasks.serving.serverless_llm.images import choose_inference_dir, starts_build
from tasks.serving.serverless_llm.models_file import (
    MODELS_FILE,
    ModelEntry,
    ModelsFileError,
    read_entries,
    restore_model_entry,
    run_inference_dirs,
    run_models_script,
    upsert_model_entry,
)
from tasks.serving.serverless_llm.names import check_model_name, deploy_branch
from tasks.serving.serverless_llm.sync import SyncError, run_sync_scripts

logger = get_logger("lmft.serverless_llm")


class DeploymentFailed(RuntimeError):
    """The model did not serve; `record` says why and what was rolled back."""

    def __init__(self, message: str, *, record: ServedModel) -> None:
        super().__init__(message)
        self.record = record


def resolve_gguf_location(
    gguf_path: str, name: str, target: ServerlessLLMTarget, hf_repo: str | None
) -> tuple[str, str]:
    """(hf_repo, hf_file) the server will download, uploading a local file first."""
    if gguf_path.startswith(HF_URI_PREFIX):
        return parse_hf_uri(gguf_path)
    repo = hf_repo or (f"{target.hf_namespace}/{name}-GGUF" if target.hf_namespace else None)
    if repo is None:
        raise ValueError(
            f"{gguf_path} is a local file, but serverless-llm downloads weights from the Hub: set hf_namespace "
            "on the target, pass hf_repo, or give hf://owner/repo/file.gguf"
        )
    return publish_gguf(gguf_path, hf_repo=repo)


def pull_request_body(
    name: str, entry: ModelEntry, quality_report_md: str | None, lineage: dict | None
) -> str:
    """Model card summary, quality report and lineage for the PR description."""
    parts = [
        f"Adds or updates the `{name}` model in `config/models.py` (opened by lm-fine-tuning).",
        "",
        "## Model",
        f"- weights: [`{entry.hf_repo}/{entry.hf_file}`](https://huggingface.co/{entry.hf_repo}/blob/main/{entry.hf_file})",
        f"- image: `{entry.inference_dir}` ({entry.dockerfile}), already built from `main`",
        f"- category: `{entry.category}`, routing: `{entry.routing_category}`, n_ctx: {entry.n_ctx}, n_threads: {entry.n_threads}",
        f"- {entry.description}",
    ]
    if quality_report_md:
        parts += ["", "## Quality report", quality_report_md.strip()]
    if lineage:
        parts += ["", "## Lineage", "```json", json.dumps(lineage, indent=2, default=str), "```"]
    return "\n".join(parts) + "\n"


def _entry(
    name: str,
    target: ServerlessLLMTarget,
    hf: tuple[str, str],
    description: str | None,
    lineage: dict | None,
) -> ModelEntry:
    base = (lineage or {}).get("base_model")
    return ModelEntry(
        name=name,
        category=target.category,
        model_id=name,
        display_name=name,
        description=description
        or (
            f"Fine-tuned from {base} with lm-fine-tuning"
            if base
            else "Fine-tuned with lm-fine-tuning"
        ),
        hf_repo=hf[0],
        hf_file=hf[1],
        owned_by=target.owned_by,
        n_ctx=target.n_ctx,
        n_threads=target.n_threads,
        n_batch=target.n_batch,
        max_concurrent=target.max_concurrent,
        routing_category=target.routing_category,
    ).check()


@dataclass
class CloneEdit:
    """What `edit_clone` wrote: the entry as written, its port and the entry it replaced."""

    entry: ModelEntry
    port: int
    previous_entry: str | None


def edit_clone(clone: GitClone, entry: ModelEntry, target: ServerlessLLMTarget) -> CloneEdit:
    """Write the entry into the clone, run the sync scripts, check it the way the workflows read it.

    Raises:
        ModelsFileError (NoServingImage among them), SyncError: nothing was committed.
    """
    path = clone.path / MODELS_FILE
    if not path.exists():
        raise ModelsFileError(
            f"{MODELS_FILE} does not exist in the repository; is this serverless-llm?"
        )
    source = path.read_text()
    inference_dir, dockerfile = choose_inference_dir(
        read_entries(source, str(MODELS_FILE)), entry.name, target.inference_dir
    )
    entry = entry.model_copy(update={"inference_dir": inference_dir, "dockerfile": dockerfile})
    edit = upsert_model_entry(source, entry, str(MODELS_FILE))
    path.write_text(edit.source)
    run_sync_scripts(clone.path, entry.name, target.inference_workflow)
    printed = run_models_script(clone.path, entry.name)
    wanted = {"model_repo": entry.hf_repo, "model_file": entry.hf_file, "model_dir": inference_dir}
    wrong = {k: printed.get(k) for k, v in wanted.items() if printed.get(k) != v}
    if wrong:
        raise ModelsFileError(
            f"'python config/models.py {entry.name}' reports {wrong}, not {wanted}; nothing was committed"
        )
    built = run_inference_dirs(clone.path)
    if inference_dir not in built:
        raise ModelsFileError(
            f"'python config/models.py --inference-dirs' (the Build matrix) does not list {inference_dir!r}; "
            "nothing was committed"
        )
    return CloneEdit(entry, edit.port, edit.previous_entry)


def _remote_tree_matches(clone: GitClone, branch: str) -> bool:
    """Whether `origin/branch` exists and holds exactly the clone's working tree."""
    try:
        clone.run(
            "fetch", "--quiet", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
        )
    except GitError:
        return False  # the branch does not exist yet
    return not clone.run("diff", f"origin/{branch}", "--name-only")


@dataclass
class Published:
    """Where the change went: the pull request (if any), the ref to run, and whether anything moved."""

    pull: PullRequest | None
    ref: str
    changed: bool


def publish_change(
    clone: GitClone,
    repo: Repository,
    target: ServerlessLLMTarget,
    entry: ModelEntry,
    record: ServedModel,
    *,
    body: str,
) -> Published:
    """Bring the edited clone to GitHub (pull request or push); push nothing the remote already holds."""
    name = entry.name
    message = f"Deploy {name} ({entry.hf_repo}/{entry.hf_file}) with lm-fine-tuning"
    base = target.base_branch
    if not clone.has_changes():
        record.commit_sha, record.branch = clone.head(), base
        return Published(None, base, changed=False)
    if target.mode is DeployMode.PUSH:
        parent = clone.head()
        record.commit_sha, record.branch = clone.commit_all(message), base
        clone.push(base)
        wait_for_build(clone, repo, target, record, base=parent, head=record.commit_sha)
        return Published(None, base, changed=True)
    ref = deploy_branch(name)
    changed = not _remote_tree_matches(clone, ref)
    clone.switch_to_new_branch(ref)
    if changed:
        record.commit_sha = clone.commit_all(message)
        clone.push(ref, force=True)
    else:
        record.commit_sha = clone.run("rev-parse", f"origin/{ref}")
    pull = open_or_update_pull(repo, head=ref, base=base, title=f"Deploy model {name}", body=body)
    record.branch, record.pull_request_url = ref, pull.html_url
    logger.info("pull request %s", pull.html_url)
    if target.wait_for_merge and not pull.merged:
        merged = wait_for_merge(
            pull, timeout=target.merge_timeout_seconds, poll_interval=target.poll_seconds
        )
        clone.run("fetch", "--quiet", "origin", merged)
        record.commit_sha = merged
        wait_for_build(clone, repo, target, record, base=f"{merged}^1", head=merged)
        return Published(pull, base, changed)
    return Published(pull, ref, changed)


def wait_for_build(
    clone: GitClone,
    repo: Repository,
    target: ServerlessLLMTarget,
    record: ServedModel,
    *,
    base: str,
    head: str,
) -> None:
    """Wait for the image Build run of commit `head` on the base branch, when that push starts one."""
    if not starts_build(
        clone, target.build_workflow, branch=target.base_branch, base=base, head=head
    ):
        logger.info(
            "the push of %s does not match %s's on.push filters: no image build to wait for",
            head[:12],
            target.build_workflow,
        )
        return
    build = wait_for_workflow_run(
        repo,
        target.build_workflow,
        head_sha=head,
        timeout=target.build_timeout_seconds,
        poll_interval=target.poll_seconds,
    )
    record.build_run_url = build.html_url


def deploy_to_serverless_llm(
    gguf_path: str,
    name: str,
    target: ServerlessLLMTarget,
    *,
    target_name: str,
    quality_report_md: str | None = None,
    lineage: dict | None = None,
    hf_repo: str | None = None,
    description: str | None = None,
) -> ServedModel:
    """Register `name` in the serverless-llm repository, start it, and check it answers.

    Raises:
        ModelsFileError, SyncError: the repository could not be edited; nothing was pushed.
        DeploymentFailed: the model did not serve; `exc.record` is the ROLLED_BACK or FAILED record.
    """
    check_model_name(name)
    hf = resolve_gguf_location(gguf_path, name, target, hf_repo)
    entry = _entry(name, target, hf, description, lineage)
    token = target.token()
    record = ServedModel(
        target=target_name,
        name=name,
        status=ServeStatus.DISPATCHED,
        gguf_path=gguf_path,
        repository=target.repository,
        hf_repo=hf[0],
        hf_file=hf[1],
    )
    with tempfile.TemporaryDirectory(prefix="lmft-serverless-") as tmp:
        clone = GitClone.clone(
            target.resolved_clone_url(), Path(tmp) / "repo", branch=target.base_branch, token=token
        )
        edit = edit_clone(clone, entry, target)
        record.port, record.inference_dir = edit.port, edit.entry.inference_dir
        repo = open_repository(target)
        body = pull_request_body(name, edit.entry, quality_report_md, lineage)
        try:
            published = publish_change(clone, repo, target, edit.entry, record, body=body)
        except GitHubStepFailed as exc:
            raise _failed(record, str(exc)) from None
        record.models_entry_changed = published.changed
        if not published.changed:
            logger.info(
                "%s already holds this entry for %s: nothing committed or pushed",
                target.repository,
                name,
            )
        try:
            serve_and_check(repo, target, record, published.ref)
        except (GitHubStepFailed, SmokeTestFailed) as exc:  # InferenceRunFailed among them
            raise _roll_back(
                target, clone, record, published, edit, token=token, reason=str(exc)
            ) from None
    if not published.changed:
        record.status = ServeStatus.UNCHANGED
    elif (
        record.status is ServeStatus.SERVING
        and published.pull is not None
        and not published.pull.merged
    ):
        record.status = ServeStatus.AWAITING_MERGE
    return record


def serve_and_check(
    repo: Repository, target: ServerlessLLMTarget, record: ServedModel, ref: str
) -> None:
    """Dispatch the inference workflow on `ref`, follow its run until the model serves, send a chat.

    An unchanged entry whose server already answers with these weights is not restarted.

    Raises:
        InferenceRunFailed: the run ended (failure, cancelled, ...) before the model served.
        SmokeTestFailed: the model did not become healthy in time or did not answer.
    """
    name = record.name
    health_url = (
        target.health_url_pattern.format(name=name, port=record.port, subdomain=name)
        if target.health_url_pattern
        else None
    )
    if health_url:
        record.url = health_url.rsplit("/health", 1)[0]
    if health_url and not record.models_entry_changed and _answers(health_url, record):
        record.smoke = smoke_chat(record.url, model=name)
        record.status = ServeStatus.SERVING
        return
    run = dispatch_inference(
        repo, target.inference_workflow, ref=ref, model=name, poll_interval=target.poll_seconds
    )
    record.inference_run_url = run.html_url
    if health_url is None:
        logger.warning(
            "no health_url_pattern on the target: dispatched %s, not checking that it serves",
            run.html_url,
        )
        return
    try:
        wait_until_serving(health_url, record, run, target)
        record.smoke = smoke_chat(record.url, model=name)
    except SmokeTestFailed:
        cancel_run(run)
        raise
    record.status = ServeStatus.SERVING


def wait_until_serving(
    health_url: str, record: ServedModel, run: WorkflowRun, target: ServerlessLLMTarget
) -> None:
    """Wait for `/health` while following `run`; the answer must come from these weights.

    The model's previous run keeps answering until the new one takes over (the inference
    action cancels it once its own server is up), so a healthy `/health` is only accepted
    when serverless-llm's `/health/details` reports this deploy's `hf_repo`/`hf_file`.
    """
    deadline = time.monotonic() + target.health_timeout_seconds
    while True:
        wait_for_health(
            health_url,
            timeout=max(deadline - time.monotonic(), 0),
            poll_interval=target.poll_seconds,
            is_alive=lambda: check_run_alive(run),
        )
        check_run_alive(run)
        if _reports_these_weights(record):
            return
        if time.monotonic() >= deadline:
            raise SmokeTestFailed(
                f"{record.url}/health/details still reports other weights than {record.hf_repo}/{record.hf_file} "
                f"after {target.health_timeout_seconds:.0f}s: run {run.html_url} never took over"
            )
        time.sleep(target.poll_seconds)


def _reports_these_weights(record: ServedModel) -> bool:
    """Whether the server's `/health/details` names this deploy's weights (True when it does not say)."""
    try:
        response = httpx.get(f"{record.url}/health/details", timeout=10)
        details = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return True
    if not isinstance(details, dict) or "file" not in details:
        return True
    return details.get("file") == record.hf_file and details.get("repo") in (None, record.hf_repo)


def _answers(health_url: str, record: ServedModel) -> bool:
    try:
        wait_for_health(health_url, timeout=0, poll_interval=0)
    except SmokeTestFailed:
        return False
    return _reports_these_weights(record)


def _failed(record: ServedModel, reason: str) -> DeploymentFailed:
    record.status, record.reason = ServeStatus.FAILED, reason
    return DeploymentFailed(f"{record.name} was not deployed: {reason}", record=record)


def _roll_back(
    target: ServerlessLLMTarget,
    clone: GitClone,
    record: ServedModel,
    published: Published,
    edit: CloneEdit,
    *,
    token: str | None,
    reason: str,
) -> DeploymentFailed:
    """Undo what this deployment changed; the ROLLED_BACK (or FAILED) record as the error to raise."""
    name = record.name
    if not published.changed:
        return _failed(
            record, f"{reason} (the repository already held this entry; nothing to roll back)"
        )
    pull = published.pull
    try:
        if pull is not None and not pull.merged:
            close_pull(pull, comment=f"Closing: the model did not serve.\n\n> {reason}")
            clone.run("push", "--quiet", "origin", "--delete", deploy_branch(name))
            record.rolled_back_by = pull.html_url
        else:
            record.rolled_back_by = roll_back_entry(
                target, name, edit.previous_entry, token=token, reason=reason
            )
    except (GitError, GithubException, GitHubStepFailed, ModelsFileError, SyncError) as exc:
        return _failed(record, f"{reason}; the rollback failed too: {exc}")
    record.status, record.reason = ServeStatus.ROLLED_BACK, reason
    return DeploymentFailed(
        f"{name} did not serve on serverless-llm and was rolled back ({record.rolled_back_by}): {reason}",
        record=record,
    )


def roll_back_entry(
    target: ServerlessLLMTarget, name: str, previous: str | None, *, token: str | None, reason: str
) -> str:
    """Restore the entry as it was before the deployment (or remove it); return the commit or PR URL."""
    with tempfile.TemporaryDirectory(prefix="lmft-rollback-") as tmp:
        clone = GitClone.clone(
            target.resolved_clone_url(), Path(tmp) / "repo", branch=target.base_branch, token=token
        )
        path = clone.path / MODELS_FILE
        path.write_text(restore_model_entry(path.read_text(), name, previous, str(MODELS_FILE)))
        run_sync_scripts(
            clone.path, name, target.inference_workflow, require_choice=previous is not None
        )
        if not clone.has_changes():
            return clone.head()
        message = f"Roll back {name}: it did not serve"
        if target.mode is DeployMode.PUSH:
            commit = clone.commit_all(message)
            clone.push(target.base_branch)
            return commit
        branch = f"lmft/rollback-{name}"
        clone.switch_to_new_branch(branch)
        clone.commit_all(message)
        clone.push(branch, force=True)
        pull = open_or_update_pull(
            open_repository(target),
            head=branch,
            base=target.base_branch,
            title=f"Roll back model {name}",
            body=f"The deployment of `{name}` did not serve:\n\n> {reason}\n",
        )
        return pull.html_url
