"""The GitHub side of a deployment, through PyGithub: pull requests and Actions workflows.

A deploy that waits for its pull request's merge (hours, a maintainer's review) waits in the
flow body (`await_merge`): a run of a deployment is suspended, holding no worker, and
`resume_merged_deploys` (the scheduled `merge_watch` flow) resumes it once the pull request is
merged or closed; a run called in-process polls instead (`wait_for_merge`).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from github import Auth, Github, GithubException
from github.PullRequest import PullRequest
from github.Repository import Repository
from github.WorkflowRun import WorkflowRun
from prefect import task

from blocks import load_block
from blocks.serverless_llm import ServerlessLLMTarget
from tasks.serving.serverless_llm.names import (
    check_branch_name,
    check_model_name,
    check_repository,
    check_workflow_file,
)
from tasks.suspension import can_suspend

MERGE_WAIT_KEY = "lmft-merge-wait"
"""Flow-run input naming the pull request a suspended deploy waits for (read by the watcher)."""


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


def merge_commit(pull: PullRequest, *, out_of_time: bool, timeout: float) -> str | None:
    """`pull`'s merge commit once merged, None while it may still be; fails when it was closed
    unmerged, or is still open when `out_of_time`."""
    pull.update()
    if pull.merged:
        return pull.merge_commit_sha
    if pull.state == "closed":
        raise GitHubStepFailed(f"pull request {pull.html_url} was closed without being merged")
    if out_of_time:
        raise GitHubStepFailed(f"pull request {pull.html_url} was not merged within {timeout:.0f}s")
    return None


def wait_for_merge(pull: PullRequest, *, timeout: float, poll_interval: float = 30) -> str:
    """Wait until `pull` is merged; return the merge commit. Fails if it is closed unmerged."""
    deadline = time.monotonic() + timeout
    while True:
        merged = merge_commit(pull, out_of_time=time.monotonic() >= deadline, timeout=timeout)
        if merged is not None:
            return merged
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


def pull_number(url: str) -> int:
    """The number of a pull request from its URL (`https://github.com/OWNER/REPO/pull/N`)."""
    try:
        return int(url.rstrip("/").rsplit("/pull/", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"{url!r} is not a pull request URL") from None


def await_merge(target_name: str, target: ServerlessLLMTarget, pull_request_url: str) -> str:
    """In a flow body: wait until the pull request is merged; return the merge commit.

    A run of a deployment is suspended between checks: it gives back its worker, and the
    `merge_watch` flow (or anyone, e.g. `prefect flow-run resume`) resumes it when the pull
    request was merged or closed; resumed, it runs again from the start (persisted results)
    and checks the pull request here. The wait lasts at most `merge_timeout_seconds` from its
    first check. Fails if the pull request is closed unmerged or the time is up.
    """
    from prefect.flow_runs import suspend_flow_run
    from prefect.input import create_flow_run_input, read_flow_run_input

    pull = open_repository(target).get_pull(pull_number(pull_request_url))
    if not can_suspend():
        return wait_for_merge(
            pull, timeout=target.merge_timeout_seconds, poll_interval=target.poll_seconds
        )
    waiting: Any = read_flow_run_input(MERGE_WAIT_KEY)
    if not waiting:
        waiting = {
            "target": target_name,
            "pull_request": pull.number,
            "url": pull.html_url,
            "since": datetime.now(UTC).isoformat(),
        }
        create_flow_run_input(MERGE_WAIT_KEY, waiting)
    deadline = datetime.fromisoformat(waiting["since"]) + timedelta(
        seconds=target.merge_timeout_seconds
    )
    check = 0
    while True:
        left = (deadline - datetime.now(UTC)).total_seconds()
        merged = merge_commit(pull, out_of_time=left <= 0, timeout=target.merge_timeout_seconds)
        if merged is not None:
            return merged
        # Each check has its own key: a fired one returns at once when the run is replayed.
        suspend_flow_run(timeout=math.ceil(left), key=f"merge-{pull.number}-{check}")
        check += 1


@task(name="resume-merged-deploys", timeout_seconds=600)  # GitHub and Prefect API reads
def resume_merged_deploys() -> list[UUID]:
    """Resume the deploy runs suspended for a pull request that is now merged or closed."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run
    from prefect.input import read_flow_run_input

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            )
        )
    resumed = []
    for run in runs:
        waiting: Any = read_flow_run_input(MERGE_WAIT_KEY, flow_run_id=run.id)
        if not waiting:
            continue  # paused for something else (an approval)
        target = load_block(ServerlessLLMTarget, waiting["target"])
        pull = open_repository(target).get_pull(waiting["pull_request"])
        if pull.merged or pull.state == "closed":
            resume_flow_run(run.id)
            resumed.append(run.id)
    return resumed
