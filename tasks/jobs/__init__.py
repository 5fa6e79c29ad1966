"""Training jobs: one record shape for every backend (local subprocess, Hugging Face Jobs)."""

from schemas.jobs import (
    TERMINAL_STATES,
    JobHandle,
    JobState,
    JobStatus,
    ProgressUpdate,
    TrainingFailed,
    TrainingResult,
    parse_progress_line,
    parse_result_line,
)

__all__ = [
    "TERMINAL_STATES",
    "JobHandle",
    "JobState",
    "JobStatus",
    "ProgressUpdate",
    "TrainingFailed",
    "TrainingResult",
    "parse_progress_line",
    "parse_result_line",
]
