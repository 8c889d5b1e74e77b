"""No job stuck forever: what to do with jobs whose worker vanished or that no worker took.

`verdicts` is a plain function of the jobs and the time; `reap_once` applies them to the store
and the broker. The gateway runs `Reaper` in a thread (every gateway does: a Redis lock lets one
of them reap per round), so no extra process has to be deployed anywhere.

- A running job whose task a worker took (its delivery was counted) and whose heartbeat is
  older than `heartbeat_timeout_s` lost its worker: its task is sent again under a new call id
  (the broker would redeliver it only after the queue's visibility timeout, six hours for
  training), unless it was delivered `max_deliveries` times already: then the job fails with
  "worker lost N times".
- A job that no worker took within `queued_timeout_s` fails, naming the queue it waited on.
- Predict jobs are redelivered by the broker itself (late acknowledgement, 15 s visibility);
  one still unanswered after `predict_redeliver_s` is sent again (the first answer written wins),
  and one not answered within `predict_job_timeout_s` fails.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import redis

from shared.contracts.errors import ErrorInfo, JobEnded, NotFound
from shared.contracts.jobs import Job, JobStatus, JobType, TaskCall
from shared.contracts.stages import PREDICT, first_task, queue_of
from shared.contracts.times import utcnow
from shared.jobstore import JobStore
from shared.settings import ReaperSettings

log = logging.getLogger(__name__)

WORKER_LOST = "worker_lost"
JOB_TIMEOUT = "job_timeout"
SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class Verdict:
    job_id: str
    action: Literal["resend", "fail"]
    reason: str
    task: TaskCall | None = None
    error: ErrorInfo | None = None


def worker_lost(task: str, max_deliveries: int) -> ErrorInfo:
    return ErrorInfo(
        code=WORKER_LOST,
        message=f"worker lost {max_deliveries} times running {task}; not retried again (a task "
        "that kills its worker, e.g. by running out of memory, or workers that keep dying)",
        details={"task": task, "deliveries": max_deliveries},
    )


def _older(moment: datetime | None, now: datetime, seconds: float) -> bool:
    return moment is not None and now - moment > timedelta(seconds=seconds)


def verdict(job: Job, now: datetime, settings: ReaperSettings) -> Verdict | None:
    if job.status.terminal:
        return None
    if job.type is JobType.predict:
        if _older(job.created_at, now, settings.predict_job_timeout_s):
            message = (
                f"no predict worker answered within {settings.predict_job_timeout_s:.0f}s "
                "(are predict workers running?)"
            )
            return Verdict(
                job.id, "fail", message, error=ErrorInfo(code=JOB_TIMEOUT, message=message)
            )
        if _older(job.heartbeat_at or job.created_at, now, settings.predict_redeliver_s):
            # The broker brings back what a dead worker held, but not a message it had popped
            # and not yet recorded (kombu's emulated acknowledgements leave that window).
            reason = f"not answered after {settings.predict_redeliver_s:.0f}s; sending it again"
            return Verdict(job.id, "resend", reason, task=TaskCall(name=PREDICT))
        return None
    task = job.task
    if job.status is JobStatus.queued or task is None or job.deliveries.get(task.name, 0) == 0:
        # Waiting for a worker to take its first task (or the next stage's).
        waiting_since = job.heartbeat_at or job.created_at
        if _older(waiting_since, now, settings.queued_timeout_s):
            name = task.name if task is not None else first_task(job.type)
            queue = queue_of(name)
            message = (
                f"no worker took {name} from the {queue} queue within "
                f"{settings.queued_timeout_s:.0f}s (are {queue} workers running?)"
            )
            return Verdict(
                job.id, "fail", message, error=ErrorInfo(code=JOB_TIMEOUT, message=message)
            )
        return None
    beat = job.heartbeat_at or job.started_at or job.updated_at
    if not _older(beat, now, settings.heartbeat_timeout_s):
        return None
    delivered = job.deliveries.get(task.name, 0)
    if delivered >= settings.max_deliveries:
        error = worker_lost(task.name, settings.max_deliveries)
        return Verdict(job.id, "fail", error.message, error=error)
    again = TaskCall(name=task.name, arguments=task.arguments)
    reason = (
        f"no heartbeat for {settings.heartbeat_timeout_s:.0f}s: the worker running {task.name} "
        f"vanished; sending it again (delivery {delivered + 1} of {settings.max_deliveries})"
    )
    return Verdict(job.id, "resend", reason, task=again)


def verdicts(jobs: Sequence[Job], now: datetime, settings: ReaperSettings) -> list[Verdict]:
    found = (verdict(job, now, settings) for job in jobs)
    return [v for v in found if v is not None]


Send = Callable[[str, TaskCall], None]


def reap_once(store: JobStore, send: Send, settings: ReaperSettings) -> list[Verdict]:
    done = verdicts(store.active(SCAN_LIMIT), utcnow(), settings)
    for item in done:
        log.warning("reaper: job %s: %s", item.job_id, item.reason)
        try:
            if item.action == "fail" and item.error is not None:
                store.fail(item.job_id, item.error)
            # The new call id first: the copy the broker may restore later is then stale.
            elif item.task is not None and store.heartbeat(item.job_id, item.task):
                send(item.job_id, item.task)
        except (JobEnded, NotFound):
            log.info("reaper: job %s ended meanwhile", item.job_id)
    return done


class Reaper:
    """`reap_once` every `reaper_interval_s` in a daemon thread, and a sweep of the job indexes
    for jobs that have expired; one reaper per round across processes (a Redis lock that
    expires with the round)."""

    def __init__(self, store: JobStore, send: Send, settings: ReaperSettings) -> None:
        self.store = store
        self.send = send
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.store.redis.close()

    def _run(self) -> None:
        interval = self.settings.interval_s
        lock = f"{self.store.keys.prefix}:reaper"
        while not self._stop.wait(interval):
            try:
                if self.store.redis.set(lock, "1", nx=True, px=int(interval * 900)):
                    reap_once(self.store, self.send, self.settings)
                    self.store.sweep_indexes(self.store.settings.index_sweep)
            except redis.RedisError as exc:
                log.warning("reaper: Redis unavailable (%s); next round in %.0fs", exc, interval)
            except Exception:
                log.exception("reaper: a round failed")
