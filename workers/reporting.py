"""Runs a job's work against the job store: status, progress, errors and the terminal event."""

import logging
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import JobEnded, error_info
from shared.jobs import EventType, Job, JobStatus
from shared.jobstore import JobStore
from shared.results import JobResult

log = logging.getLogger(__name__)


class JobReporter:
    """The pipeline's Reporter, writing to one job's event stream."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id

    def progress(self, data: Mapping[str, Any]) -> None:
        self.store.progress(self.job_id, data)

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        self.store.event(self.job_id, type_, data)

    def cancelled(self) -> bool:
        return self.store.is_cancelled(self.job_id)

    def stage(self, name: str, state: str, **data: Any) -> None:
        """A stage boundary: every pipeline stage announces its start and end."""
        self.store.event(self.job_id, EventType.log, {"stage": name, "state": state, **data})


def run_step(
    store: JobStore,
    job_id: str,
    step: Callable[[Job, JobReporter], JobResult | None],
) -> JobResult | None:
    """Run one step of a job; a failure ends the job with the error's message.

    The step returns the job's result when it is the last one (the job succeeds with it), or
    None when it has handed the job on to another task. Cancelled or already-ended jobs are
    skipped: their terminal event is written and nothing may follow it.
    """
    try:
        job = store.get(job_id)
        if job.status is JobStatus.queued:
            store.start(job_id)
        elif job.status.terminal:
            return None
        result = step(job, JobReporter(store, job_id))
        if result is not None:
            store.succeed(job_id, result)
        return result
    except JobEnded:
        log.info("job %s ended or was cancelled; step stopped", job_id)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        try:
            store.fail(job_id, error_info(exc))
        except JobEnded:
            log.info("job %s had already ended", job_id)
    return None
