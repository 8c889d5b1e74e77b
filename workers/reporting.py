"""Runs a job's work against the job store: status, progress, errors and the terminal event."""

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import redis

from shared.contracts.errors import JobEnded, error_info
from shared.contracts.jobs import EventType, Job, JobStatus, TaskCall
from shared.contracts.results import JobResult
from shared.contracts.times import utcnow
from shared.jobstore import JobStore
from shared.logs import bound
from shared.reaper import worker_lost
from shared.settings import ReaperSettings

log = logging.getLogger(__name__)
DEFAULT_POLICY = ReaperSettings()


class JobReporter:
    """The pipeline's Reporter, writing to one job's event stream."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id

    def progress(self, data: Mapping[str, Any]) -> None:
        # Progress is advisory: Redis away past the client's retries costs this one report,
        # never the job (a terminal write still fails loudly).
        try:
            self.store.progress(self.job_id, data)
        except redis.RedisError as exc:
            log.warning("progress of job %s not written (%s); going on", self.job_id, exc)

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        self.store.event(self.job_id, type_, data)

    def cancelled(self) -> bool:
        return self.store.is_cancelled(self.job_id)

    def stage(self, name: str, state: str, **data: Any) -> None:
        """A stage boundary: every pipeline stage announces its start and end."""
        self.store.event(self.job_id, EventType.log, {"stage": name, "state": state, **data})


def stale_delivery(
    job: Job, name: str, call_id: str | None, now: datetime, timeout_s: float
) -> str | None:
    """Why a delivered task must do nothing, or None: the job has moved on to another call (a
    copy the broker restored after the reaper sent the task again, or after a later stage
    began), or this call runs on a worker that still beats (a restore racing a live worker).

    A message without a call id is a job's first task, as the gateway and listener send it."""
    current = job.task
    if current is None:
        return None
    if current.name != name or (call_id is not None and call_id != current.id):
        return f"superseded by call {current.id} of {current.name}"
    if (
        job.running_call == current.id
        and job.heartbeat_at is not None
        and now - job.heartbeat_at < timedelta(seconds=timeout_s)
    ):
        return "running on a live worker"
    return None


@contextlib.contextmanager
def heartbeat(store: JobStore, job_id: str, task: TaskCall, interval_s: float) -> Iterator[None]:
    """Name the job's task and beat for it every `interval_s` while the block runs; a failed
    beat is logged, never raised (a Redis blip must not fail a long training)."""
    stop = threading.Event()
    store.heartbeat(job_id, task, running=True)

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                if not store.heartbeat(job_id):
                    return
            except redis.RedisError as exc:
                log.warning("heartbeat of job %s failed: %s", job_id, exc)

    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(beat,), name=f"heartbeat-{job_id}", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def run_step(
    store: JobStore,
    job_id: str,
    step: Callable[[Job, JobReporter], JobResult | None],
    task: TaskCall | None = None,
    policy: ReaperSettings = DEFAULT_POLICY,
    call_id: str | None = None,
) -> JobResult | None:
    """Run one step of a job; a failure ends the job with the error's message.

    The step returns the job's result when it is the last one (the job succeeds with it), or
    None when it has handed the job on to another task. Cancelled or already-ended jobs are
    skipped: their terminal event is written and nothing may follow it. With `task`, each
    delivery is counted (the job fails once it lost its worker `max_deliveries` times) and the
    worker heartbeats for the job while the step runs.
    """
    with bound(job_id=job_id, task=task.name if task is not None else None):
        return _run_step(store, job_id, step, task, policy, call_id)


def _run_step(
    store: JobStore,
    job_id: str,
    step: Callable[[Job, JobReporter], JobResult | None],
    task: TaskCall | None,
    policy: ReaperSettings,
    call_id: str | None,
) -> JobResult | None:
    try:
        job = store.get(job_id)
        if job.status.terminal:
            return None
        if task is not None:
            stale = stale_delivery(job, task.name, call_id, utcnow(), policy.heartbeat_timeout_s)
            if stale is not None:
                log.warning("job %s: this delivery of %s does nothing: %s", job_id, task, stale)
                return None
            if store.count_delivery(job_id, task.name) > policy.max_deliveries:
                store.fail(job_id, worker_lost(task.name, policy.max_deliveries))
                return None
        if job.status is JobStatus.queued:
            store.start(job_id)
        name = task.name if task is not None else "step"
        log.info("job %s: %s running", job_id, name)
        with (
            heartbeat(store, job_id, task, policy.heartbeat_interval_s)
            if task is not None
            else contextlib.nullcontext()
        ):
            result = step(job, JobReporter(store, job_id))
        if result is not None:
            store.succeed(job_id, result)
        log.info("job %s: %s done%s", job_id, name, ", job succeeded" if result else "")
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
