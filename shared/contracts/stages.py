"""The tasks of each job type, declared once: each task's name, its queue, and the task after it.

The task chaining of the workers, the routes of every sender and the reaper all read this.
"""

from dataclasses import dataclass
from enum import StrEnum

from shared.contracts.jobs import Job, JobType, TrainParams


class Queue(StrEnum):
    predict = "predict"
    train = "train"
    evaluate = "evaluate"


QUEUES: tuple[str, ...] = tuple(queue.value for queue in Queue)

PREDICT = "agnews.predict"
INGEST = "agnews.ingest"
TRAIN = "agnews.train"
EVALUATE = "agnews.evaluate"
PROMOTE = "agnews.promote"
BATCH_PREDICT = "agnews.batch_predict"


@dataclass(frozen=True)
class Stage:
    task: str
    queue: Queue
    name: str


STAGES: dict[str, Stage] = {
    stage.task: stage
    for stage in (
        Stage(PREDICT, Queue.predict, "predict"),
        Stage(INGEST, Queue.evaluate, "ingest"),
        Stage(TRAIN, Queue.train, "train"),
        Stage(EVALUATE, Queue.evaluate, "evaluate"),
        Stage(PROMOTE, Queue.evaluate, "promote"),
        Stage(BATCH_PREDICT, Queue.evaluate, "batch_predict"),
    )
}
ROUTES: dict[str, str] = {task: stage.queue.value for task, stage in STAGES.items()}

# A train job promotes only when asked; a pipeline job always does.
_CHAINS: dict[JobType, tuple[str, ...]] = {
    JobType.predict: (PREDICT,),
    JobType.evaluate: (EVALUATE,),
    JobType.train: (INGEST, TRAIN, EVALUATE, PROMOTE),
    JobType.pipeline: (INGEST, TRAIN, EVALUATE, PROMOTE),
    JobType.batch_predict: (BATCH_PREDICT,),
}


def chain(job: Job) -> tuple[str, ...]:
    """The tasks a job runs, in order."""
    tasks = _CHAINS[job.type]
    if isinstance(job.params, TrainParams) and not job.params.promote:
        return tuple(task for task in tasks if task != PROMOTE)
    return tasks


def first_task(job_type: JobType) -> str:
    return _CHAINS[job_type][0]


def next_task(job: Job, task: str) -> str | None:
    """The task after `task` in the job's chain; None when `task` is its last."""
    tasks = chain(job)
    following = tasks.index(task) + 1
    return tasks[following] if following < len(tasks) else None


def queue_of(task: str) -> str:
    return ROUTES[task]
