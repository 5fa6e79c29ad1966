"""Evaluations reach `get_job_status` through the run's status, not through log lines."""

from __future__ import annotations

from mcp_adapter.models import JobStatus
from schemas.jobs import ProgressUpdate
from schemas.status import TrainingProgress
from tasks.jobs.training import evaluation_line, saved_model_evaluation


def test_evaluations_set_the_status_fields_the_tool_returns():
    progress = TrainingProgress(job_id="local-1")
    for step, loss in [(0, 2.5), (10, 1.5), (20, 1.25), (30, 1.75)]:
        progress = progress.with_evaluation(step, loss, 2.5 if step else None)
    status = JobStatus(progress=progress).model_dump(mode="json")["progress"]
    assert (status["eval_loss"], status["eval_step"], status["base_eval_loss"]) == (1.75, 30, 2.5)
    assert (status["best_step"], status["best_eval_loss"]) == (20, 1.25)


def test_the_base_model_is_never_the_best_step():
    progress = TrainingProgress().with_evaluation(0, 1.0).with_evaluation(5, 1.5, 1.0)
    assert (progress.base_eval_loss, progress.best_step, progress.best_eval_loss) == (1.0, 5, 1.5)


def test_the_saved_model_replaces_the_live_best():
    result = {"eval_loss": 1.5, "base_eval_loss": 1.0, "best_step": None}
    final = TrainingProgress(best_step=5, best_eval_loss=1.5).model_copy(
        update=saved_model_evaluation(result)
    )
    assert (final.best_step, final.best_eval_loss) == (None, 1.5)  # the last step's weights
    assert saved_model_evaluation({"eval_loss": None}) == {}  # no evaluation: nothing to say


def test_evaluation_log_line_names_the_base_model_after_step_0():
    line = evaluation_line(
        ProgressUpdate(step=12, total_steps=30, eval_loss=1.25, base_eval_loss=2.5)
    )
    assert line == "eval loss 1.2500 at step 12/30 (base model 2.5000)"
    assert "base model" not in evaluation_line(
        ProgressUpdate(step=0, total_steps=30, eval_loss=2.5, base_eval_loss=2.5)
    )
