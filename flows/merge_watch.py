"""The `merge_watch` flow: resume the deploys waiting for a pull request that is now merged or closed.

A deploy to serverless-llm whose target waits for the merge is suspended until then (it holds no
worker). Scheduled every 5 minutes by `prefect.yaml`; run it by hand with
`python -m flows.merge_watch`.
"""

from __future__ import annotations

from prefect import flow

from tasks.serving.serverless_llm.github import resume_merged_deploys


@flow(name="merge_watch", log_prints=True)
def merge_watch() -> list[str]:
    """Resume every suspended deploy whose pull request was merged or closed; their run ids."""
    resumed = [str(run_id) for run_id in resume_merged_deploys()]
    print(f"resumed {len(resumed)} deploy run(s) waiting for a merge: {', '.join(resumed) or '-'}")
    return resumed


if __name__ == "__main__":
    merge_watch()
