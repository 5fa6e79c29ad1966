"""The GitHub side of a deployment, through PyGithub: pull requests and Actions workflows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from github import Auth, Github, GithubException
from github.PullRequest import PullRequest
from github.Repository import Repository
from github.WorkflowRun import WorkflowRun

from blocks.serverless_llm import ServerlessLLMTarget
from tasks.serving.serverless_llm.names import (
    check_branch_name,
    check_model_name,
    check_repository,
    check_workflow_file,
)


class GitHubStepFailed(RuntimeError):
    """A pull request was closed unmerged, or a workflow run did not succeed in time."""


def open_repository(target: ServerlessLLMTarget) -> Repository:
    """The target repository through an authenticated PyGithub client."""
    token = target.token()
    client = Github(
        base_url=target.api_base_url, auth=Auth.Token(token) if token else None, retry=None
    )
    try:
        return client.get_repo(check_repository(target.repository))
    except GithubException as exc:
        raise GitHubStepFailed(
            f"cannot open {target.repository} at {target.api_base_url} (HTTP {exc.status}); "
            "check the repository name and that the token can read it"
        ) from None


def open_or_update_pull(
    repo: Repository, *, head: str, base: str, title: str, body: str
) -> PullRequest:
    """The open pull request from `head` into `base`, created or with its body refreshed."""
    check_branch_name(head)
    check_branch_name(base)
    owner = repo.owner.login
    for pull in repo.get_pulls(state="open", head=f"{owner}:{head}", base=base):
        if (pull.title, pull.body) != (title, body):
            pull.edit(title=title, body=body)
        return pull
    return repo.create_pull(
        base=base, head=head, title=title, body=body, maintainer_can_modify=True
    )


def close_pull(pull: PullRequest, *, comment: str) -> None:
    """Close `pull` with an explanation (its branch is deleted with git by the caller)."""
    pull.create_issue_comment(comment)
    pull.edit(state="closed")


def wait_for_merge(pull: PullRequest, *, timeout: float, poll_interval: float = 30) -> str:
    """Wait until `pull` is merged; return the merge commit. Fails if it is closed unmerged."""
    deadline = time.monotonic() + timeout
    while True:
        pull.update()
        if pull.merged:
            return pull.merge_commit_sha
        if pull.state == "closed":
            raise GitHubStepFailed(f"pull request {pull.html_url} was closed without being merged")
        if time.monotonic() >= deadline:
            raise GitHubStepFailed(
                f"pull request {pull.html_url} was not merged within {timeout:.0f}s"
            )
        time.sleep(poll_interval)


def wait_for_workflow_run(
    repo: Repository, workflow: str, *, head_sha: str, timeout: float, poll_interval: float = 15
) -> WorkflowRun:
    """Wait for the run of `workflow` on commit `head_sha` to complete successfully."""
    check_workflow_file(workflow)
    deadline = time.monotonic() + timeout
    while True:
        runs = list(repo.get_workflow(workflow).get_runs(head_sha=head_sha))
        if runs:
            run = runs[0]
            if run.status == "completed":
                if run.conclusion != "success":
                    raise GitHubStepFailed(f"{workflow} run {run.html_url} ended {run.conclusion}")
                return run
        if time.monotonic() >= deadline:
            state = f"{runs[0].status}" if runs else "no run started"
            raise GitHubStepFailed(
                f"{workflow} did not finish for {head_sha[:12]} within {timeout:.0f}s ({state})"
            )
        time.sleep(poll_interval)


def dispatch_inference(
    repo: Repository,
    workflow: str,
    *,
    ref: str,
    model: str,
    timeout: float = 120,
    poll_interval: float = 3,
) -> WorkflowRun:
    """Dispatch `workflow` with `model=NAME` on `ref`; return the run it started.

    GitHub returns the run with `return_run_details`; servers that answer 204 without
    it (older GitHub Enterprise) are covered by taking the newest workflow_dispatch
    run of that workflow created after the call.
    """
    check_workflow_file(workflow)
    check_model_name(model)
    check_branch_name(ref)
    handle = repo.get_workflow(workflow)
    # GitHub stores created_at with second precision; leave some slack for clock skew.
    since = datetime.now(UTC) - timedelta(seconds=5)
    try:
        started = handle.create_dispatch(
            ref=ref, inputs={"model": model}, throw=True, return_run_details=True
        )
    except GithubException as exc:
        raise GitHubStepFailed(
            f"GitHub refused to dispatch {workflow} with model={model} on {ref} (HTTP {exc.status}): {exc.data}"
        ) from None
    if isinstance(started, WorkflowRun):
        started.update()
        return started
    deadline = time.monotonic() + timeout
    while True:
        for run in handle.get_runs(event="workflow_dispatch", branch=ref):
            if run.created_at >= since:
                return run
        if time.monotonic() >= deadline:
            raise GitHubStepFailed(
                f"{workflow} was dispatched but no run appeared within {timeout:.0f}s"
            )
        time.sleep(poll_interval)


class InferenceRunFailed(GitHubStepFailed):
    """The dispatched inference run ended before the model served."""


def _failed_step(run: WorkflowRun) -> str:
    """' at step S of job J' for the first failed step of `run`, or '' when GitHub does not say."""
    try:
        for job in run.jobs():
            for step in job.steps:
                if step.conclusion == "failure":
                    return f" at step {step.name!r} of job {job.name!r}"
    except GithubException:
        pass  # the jobs list only refines the message; the run's conclusion is the fact
    return ""


def check_run_alive(run: WorkflowRun) -> bool:
    """True while `run` is queued or in progress; once it has ended, raise `InferenceRunFailed` naming it.

    The inference workflow keeps its server up for hours, so a run that completed, whatever
    its conclusion, means the model is not being served.
    """
    run.update()
    if run.status != "completed":
        return True
    raise InferenceRunFailed(
        f"inference run {run.html_url} concluded {run.conclusion}{_failed_step(run)} "
        "before the model became healthy"
    )


def cancel_run(run: WorkflowRun) -> bool:
    """Cancel `run`; False when it had already ended (GitHub answers 409, PyGithub returns False)."""
    return run.cancel()
