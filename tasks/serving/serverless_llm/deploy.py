"""Deploy a GGUF to serverless-llm the way its maintainers do, and prove it serves.

1. Make sure the GGUF is on the Hugging Face Hub (the server downloads it at start-up).
2. Clone the repository, add or update the `config/models.py` entry, run the repository's
   sync scripts, check the result with `python config/models.py NAME`.
3. Commit: on `lmft/deploy-NAME` with a pull request, or straight to the base branch.
4. Optionally wait for the merge and the image Build workflow. In a flow run that can be
   suspended the wait happens in the flow body instead (`tasks.serving.deploy.deploy_model`):
   this stops at the pull request (`stop_at_pull_request`), and the deploy is run again
   once merged (`merged_commit`), when the entry is already on the base branch.
5. Dispatch `inference.yml` with `model=NAME` (on the deploy branch while the PR is
   unmerged: the workflow reads the branch's config), wait for `/health`, send a chat.
6. If the smoke test fails: close the PR (or restore the previous entry), cancel the run, fail.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from github.PullRequest import PullRequest
from github.Repository import Repository
from prefect.logging import get_logger

from blocks.serverless_llm import DeployMode, ServerlessLLMTarget
from schemas.serving import ServedModel, ServeStatus
from tasks.serving.endpoints import SmokeTestFailed, smoke_chat, wait_for_health
from tasks.serving.serverless_llm.git_repo import GitClone, GitError
from tasks.serving.serverless_llm.github import (
    close_pull,
    dispatch_inference,
    open_or_update_pull,
    open_repository,
    wait_for_merge,
    wait_for_workflow_run,
)
from tasks.serving.serverless_llm.hub import HF_URI_PREFIX, parse_hf_uri, publish_gguf
from tasks.serving.serverless_llm.models_file import (
    MODELS_FILE,
    ModelEntry,
    ModelsFileError,
    restore_model_entry,
    run_models_script,
    upsert_model_entry,
)
from tasks.serving.serverless_llm.names import check_model_name, deploy_branch
from tasks.serving.serverless_llm.sync import run_sync_scripts

logger = get_logger("lmft.serverless_llm")


class DeploymentFailed(RuntimeError):
    """The model did not serve; the change was rolled back."""


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


def edit_clone(clone: GitClone, entry: ModelEntry, workflow: str) -> tuple[int, str | None]:
    """Write the entry into the clone, run the sync scripts, check it; return (port, previous entry)."""
    path = clone.path / MODELS_FILE
    if not path.exists():
        raise ModelsFileError(
            f"{MODELS_FILE} does not exist in the repository; is this serverless-llm?"
        )
    edit = upsert_model_entry(path.read_text(), entry, str(MODELS_FILE))
    path.write_text(edit.source)
    run_sync_scripts(clone.path, entry.name, workflow)
    printed = run_models_script(clone.path, entry.name)
    if printed.get("model_repo") != entry.hf_repo or printed.get("model_file") != entry.hf_file:
        raise ModelsFileError(
            f"'python config/models.py {entry.name}' reports {printed.get('model_repo')}/{printed.get('model_file')}, "
            f"not {entry.hf_repo}/{entry.hf_file}; nothing was committed"
        )
    return edit.port, edit.previous_entry


def _same_tree_as_remote(clone: GitClone, branch: str) -> bool:
    try:
        clone.run(
            "fetch", "--quiet", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
        )
    except GitError:
        return False  # the branch does not exist yet
    return clone.run("rev-parse", "HEAD^{tree}") == clone.run(
        "rev-parse", f"origin/{branch}^{{tree}}"
    )


def publish_change(
    clone: GitClone,
    repo: Repository,
    target: ServerlessLLMTarget,
    entry: ModelEntry,
    record: ServedModel,
    *,
    body: str,
    merge_here: bool,
) -> tuple[PullRequest | None, str]:
    """Commit the edited clone and bring it to GitHub (pull request or push); return (pull, ref to run)."""
    name = entry.name
    message = f"Deploy {name} ({entry.hf_repo}/{entry.hf_file}) with lm-fine-tuning"
    pull, ref = None, target.base_branch
    if target.mode is DeployMode.PULL_REQUEST:
        ref = deploy_branch(name)
        clone.switch_to_new_branch(ref)
        record.commit_sha = clone.commit_all(message)
        if _same_tree_as_remote(clone, ref):
            record.commit_sha = clone.run("rev-parse", f"origin/{ref}")
        else:
            clone.push(ref, force=True)
        pull = open_or_update_pull(
            repo, head=ref, base=target.base_branch, title=f"Deploy model {name}", body=body
        )
        record.branch, record.pull_request_url = ref, pull.html_url
        logger.info("pull request %s", pull.html_url)
        if merge_here:  # wait for the merge in this call (else the caller waits, or nobody)
            record.commit_sha = wait_for_merge(
                pull, timeout=target.merge_timeout_seconds, poll_interval=target.poll_seconds
            )
            ref = target.base_branch
    else:
        record.commit_sha = clone.commit_all(message)
        clone.push(target.base_branch)
        record.branch = target.base_branch
    if ref == target.base_branch and target.build_workflow:
        build = wait_for_workflow_run(
            repo,
            target.build_workflow,
            head_sha=record.commit_sha,
            timeout=target.build_timeout_seconds,
            poll_interval=target.poll_seconds,
        )
        record.build_run_url = build.html_url
    return pull, ref


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
    stop_at_pull_request: bool = False,
    merged_commit: str | None = None,
) -> ServedModel:
    """Register `name` in the serverless-llm repository, start it, and check it answers.

    With `stop_at_pull_request` a target that waits for the merge returns the record as
    `awaiting_merge` once its pull request is open, without waiting; the caller runs the
    deploy again with the `merged_commit`: then the entry is already on the base branch, and
    the deploy waits for that commit's image build, serves it, and rolls the entry back to
    what it was before the merge if it does not answer.

    Raises:
        ModelsFileError, SyncError: the repository could not be edited; nothing was pushed.
        DeploymentFailed: the model did not serve; the change was rolled back.
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
        record.port, previous = edit_clone(clone, entry, target.inference_workflow)
        record.models_entry_changed = clone.has_changes()
        repo = open_repository(target)
        if record.models_entry_changed:
            body = pull_request_body(name, entry, quality_report_md, lineage)
            pull, ref = publish_change(
                clone,
                repo,
                target,
                entry,
                record,
                body=body,
                merge_here=target.wait_for_merge and not stop_at_pull_request,
            )
            if stop_at_pull_request and pull is not None and not pull.merged:
                record.status = ServeStatus.AWAITING_MERGE
                return record
        else:
            pull, ref = None, target.base_branch
            record.commit_sha = clone.head()
            logger.info("%s is already up to date for %s; nothing to commit", MODELS_FILE, name)
            if merged_commit is not None:
                previous = _entry_before(clone, merged_commit, entry)
                if target.build_workflow:
                    build = wait_for_workflow_run(
                        repo,
                        target.build_workflow,
                        head_sha=merged_commit,
                        timeout=target.build_timeout_seconds,
                        poll_interval=target.poll_seconds,
                    )
                    record.build_run_url = build.html_url
        run = dispatch_inference(
            repo, target.inference_workflow, ref=ref, model=name, poll_interval=target.poll_seconds
        )
        record.inference_run_url = run.html_url
        if not target.health_url_pattern:
            logger.warning(
                "no health_url_pattern on the target: dispatched %s, not checking that it serves",
                run.html_url,
            )
            return record
        health_url = target.health_url_pattern.format(name=name, port=record.port, subdomain=name)
        record.url = health_url.rsplit("/health", 1)[0]
        try:
            wait_for_health(
                health_url, timeout=target.health_timeout_seconds, poll_interval=target.poll_seconds
            )
            record.smoke = smoke_chat(record.url, model=name)
        except SmokeTestFailed as exc:
            run.cancel()
            if pull is not None and not pull.merged:
                close_pull(
                    pull, comment=f"Closing: the model did not pass its smoke test.\n\n> {exc}"
                )
                clone.run("push", "--quiet", "origin", "--delete", deploy_branch(name))
            elif record.models_entry_changed or merged_commit is not None:
                roll_back_entry(target, name, previous, token=token, reason=str(exc))
            raise DeploymentFailed(
                f"{name} did not serve on serverless-llm and was rolled back: {exc}"
            ) from None
    record.status = (
        ServeStatus.SERVING if pull is None or pull.merged else ServeStatus.AWAITING_MERGE
    )
    return record


def _entry_before(clone: GitClone, merged_commit: str, entry: ModelEntry) -> str | None:
    """The source of `entry`'s model in the base branch before `merged_commit` (None: it was new)."""
    before = clone.run("show", f"{merged_commit}^1:{MODELS_FILE}")
    return upsert_model_entry(before, entry, str(MODELS_FILE)).previous_entry


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
        message = f"Roll back {name}: smoke test failed"
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
            body=f"The deployment of `{name}` failed its smoke test:\n\n> {reason}\n",
        )
        return pull.html_url
