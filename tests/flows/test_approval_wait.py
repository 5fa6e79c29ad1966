"""Approval waits that free the worker, and the approval form in a real browser.

Everything runs against a real `prefect server start` (the test harness serves no UI and runs
none of the server's services, and it is the pause-expiration service that fails a suspended
run nobody resumed). Deployments are served by `tests/flows/approval_worker.py` in a
subprocess; the browser is Debian's chromium driven by Playwright.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run

from blocks.budget import BudgetPolicy
from tasks.costs.ledger import Decision, Ledger, ReservationStatus
from tests.flows.approval_worker import FINETUNE, GATE_PROBE
from tests.flows.conftest import Server, stop, wait_for_state
from tests.mcp_adapter.conftest import CHAT_ROWS

CHROMIUM = os.environ.get("LMFT_CHROMIUM", "/usr/bin/chromium")  # Debian's; CI may name another


def save_policy(name: str, ledger: Path, **options) -> Ledger:
    """Save a BudgetPolicy ($100/month, approval above $10, at most $50 a job) on its own ledger."""
    url = f"sqlite:///{ledger}"
    limits = dict(monthly_limit_usd=100, approval_threshold_usd=10, per_job_max_usd=50)
    BudgetPolicy(ledger_url=url, **{**limits, **options}).save(name, overwrite=True)
    return Ledger(url)


def run_probe(tmp_path: Path, policy: str, run_key: str, high_usd: float):
    return run_deployment(
        GATE_PROBE,
        parameters={
            "high_usd": high_usd,
            "run_key": run_key,
            "policy_name": policy,
            "marker": str(tmp_path / f"{run_key}.log"),
        },
        timeout=0,
    )


def is_suspended(state: State) -> bool:
    return state.is_paused() and state.name == "Suspended"


def test_a_suspended_run_frees_its_worker_and_resumes_on_another(server: Server, tmp_path: Path):
    policy = f"suspend-{uuid.uuid4().hex[:8]}"
    ledger = save_policy(
        policy,
        tmp_path / "ledger.sqlite",
        approval_timeout_seconds=600,
    )
    first = server.start_worker()
    waiting = run_probe(tmp_path, policy, "expensive", 20)
    state = wait_for_state(waiting.id, lambda s: s.is_paused())
    assert state.name == "Suspended" and state.state_details.pause_reschedule

    # The worker runs one flow at a time and the deployment takes one run at a time: the next
    # run can only finish if the suspended one gave back both its process and its slot.
    cheap = run_probe(tmp_path, policy, "cheap", 5)
    assert wait_for_state(cheap.id, lambda s: s.is_final()).is_completed()
    assert wait_for_state(waiting.id, lambda s: True).name == "Suspended"

    stop(first)  # the worker that started the run is gone; another one finishes it
    second = server.start_worker()
    resume_flow_run(
        waiting.id, run_input={"decision": "approve", "approver": "ana", "note": "fits"}
    )
    final = wait_for_state(waiting.id, lambda s: s.is_final())
    assert final.is_completed(), final.message
    assert final.result() == {"status": "approved", "worker": second.pid}
    # The work before the gate ran once: the resumed run read its persisted result.
    assert len((tmp_path / "expensive.log").read_text().splitlines()) == 1
    (entry,) = [e for e in ledger.entries() if e.run_key == "expensive"]
    assert (entry.decision, entry.approver, entry.note, entry.reserved_usd) == (
        Decision.APPROVED,
        "ana",
        "fits",
        20,
    )


def test_a_suspended_run_rejected_or_unanswered_fails_and_releases_its_hold(
    server: Server, tmp_path: Path
):
    policy = f"timeout-{uuid.uuid4().hex[:8]}"
    ledger = save_policy(
        policy,
        tmp_path / "ledger.sqlite",
        approval_timeout_seconds=4,
    )
    if not any(w.poll() is None for w in server.workers):
        server.start_worker()
    rejected = run_probe(tmp_path, policy, "rejected", 20)
    wait_for_state(rejected.id, is_suspended)
    resume_flow_run(
        rejected.id, run_input={"decision": "reject", "approver": "bo", "note": "not this month"}
    )
    unanswered = run_probe(tmp_path, policy, "unanswered", 20)

    final = wait_for_state(rejected.id, lambda s: s.is_final())
    assert final.is_failed() and "bo rejected the $20.00 run: not this month" in final.message
    # Nobody answers the second one: Prefect's server fails it at the timeout.
    wait_for_state(unanswered.id, is_suspended)
    final = wait_for_state(unanswered.id, lambda s: s.is_final(), timeout=60)
    assert final.is_failed() and "never resumed" in final.message
    # No process of ours saw it end: the next gate releases its hold, as a timeout.
    following = run_probe(tmp_path, policy, "following", 5)
    assert wait_for_state(following.id, lambda s: s.is_final()).is_completed()
    entries = {e.run_key: e for e in ledger.entries()}
    assert (entries["rejected"].decision, entries["rejected"].note) == (
        Decision.REJECTED,
        "not this month",
    )
    assert (entries["unanswered"].decision, entries["unanswered"].status) == (
        Decision.TIMED_OUT,
        ReservationStatus.RELEASED,
    )
    assert entries["unanswered"].note == "no decision within 4 s"
    assert ledger.totals().reserved_usd == 5  # only the following run's hold is left


# -- the approval form, in a browser ------------------------------------------------------------


def decide_in_the_ui(server: Server, run_id, verdict: str, note: str, shots: Path) -> None:
    """Open the run in the Prefect UI, press Resume, choose `verdict`, write the note, Submit.

    Playwright's sync API runs an event loop in this thread while it is open (Prefect's
    sync-or-async functions would then return coroutines), so it is opened only here.
    """
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            _decide(browser, server, run_id, verdict, note, shots)
        finally:
            browser.close()


def _decide(browser, server: Server, run_id, verdict: str, note: str, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url.removesuffix('/api')}/runs/flow-run/{run_id}")
    page.get_by_role("button", name="Resume").first.click()
    form = page.get_by_role("dialog")
    form.get_by_text("Approve a free training run on the local backend?").wait_for()
    form.get_by_role("button", name="Submit").click()  # no choice made yet: refused
    form.get_by_text("'decision' is a required property").wait_for()
    choice = form.locator(".p-select-button__control")
    choice.press("ArrowDown")  # opens the list of choices
    options = page.get_by_role("option")
    options.first.wait_for()
    assert options.all_inner_texts() == ["approve", "reject"]
    page.screenshot(path=shots / f"{verdict}-choices.png")
    page.get_by_role("option", name=verdict, exact=True).click()
    form.locator("textarea").nth(0).fill(note)
    form.locator("textarea").nth(1).fill("ana@example.com")
    page.screenshot(path=shots / f"{verdict}-filled.png")
    form.get_by_role("button", name="Submit").click()
    form.wait_for(state="hidden")


@pytest.mark.parametrize("verdict", ["approve", "reject"])
def test_the_approval_form_in_the_prefect_ui(
    server: Server, tiny_llama: Path, tmp_path: Path, verdict: str
):
    """A free local finetune under a policy that approves every run: suspended at the gate, then
    decided in the UI's form; approve → it trains, reject → it fails with the note."""
    dataset = tmp_path / "chat.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in CHAT_ROWS))
    ledger = save_policy(
        "default",
        tmp_path / "ledger.sqlite",
        require_approval_for_all_runs=True,
    )
    if not any(w.poll() is None for w in server.workers):
        server.start_worker()
    request = {
        "base_model": str(tiny_llama),
        "dataset": {"path": str(dataset)},
        "output_name": f"tiny-{verdict}",
        "gguf": None,
        "deploy": None,
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "max_length": 64},
    }
    run = run_deployment(FINETUNE, parameters={"request": request}, timeout=0)
    wait_for_state(run.id, is_suspended, timeout=300)

    shots = Path(os.environ.get("LMFT_SCREENSHOTS") or tmp_path)
    note = "fits the budget" if verdict == "approve" else "wrong dataset"
    decide_in_the_ui(server, run.id, verdict, note, shots)

    final = wait_for_state(run.id, lambda s: s.is_final(), timeout=600)
    (entry,) = ledger.entries(flow_run_id=str(run.id))
    assert (entry.approver, entry.note) == ("ana@example.com", note)
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    trained = {t.name.rsplit("-", 1)[0] for t in tasks if t.state and t.state.is_completed()}
    if verdict == "approve":
        assert final.is_completed(), final.message
        assert entry.decision is Decision.APPROVED
        assert {"submit-training", "monitor-training"} <= trained
        assert final.result().steps == 2
    else:
        assert final.is_failed()
        assert "ana@example.com rejected the $0.00 run: wrong dataset" in final.message
        assert entry.decision is Decision.REJECTED
        assert "submit-training" not in trained
