"""Celery configuration and the names of tasks, shared by senders (gateway, listener) and workers.

Senders never import the workers' code: they send tasks by name through `make_celery`.
"""

from typing import Any

from celery import Celery

from shared.jobs import Job, JobType
from shared.settings import Settings

PREDICT = "agnews.predict"
TRAIN = "agnews.train"
EVALUATE = "agnews.evaluate"
INGEST = "agnews.ingest"
PROMOTE = "agnews.promote"

QUEUES = ("predict", "train", "evaluate")

ROUTES: dict[str, str] = {
    PREDICT: "predict",
    TRAIN: "train",
    EVALUATE: "evaluate",
    INGEST: "evaluate",
    PROMOTE: "evaluate",
}

# The first task of each job type. A pipeline job's stages send their successors themselves:
# ingest -> train -> evaluate -> promote.
FIRST_TASK: dict[JobType, str] = {
    JobType.predict: PREDICT,
    JobType.train: INGEST,
    JobType.evaluate: EVALUATE,
    JobType.pipeline: INGEST,
}


def make_celery(settings: Settings, name: str = "agnews") -> Celery:
    app = Celery(name, broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_routes={task: {"queue": queue} for task, queue in ROUTES.items()},
        task_default_queue="predict",
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # A train task holds its message unacknowledged for hours; Redis redelivers it only
        # after this long, so it must exceed the longest training.
        broker_transport_options={
            "visibility_timeout": settings.train_visibility_timeout_s,
            "ack_emulation": settings.broker_ack_emulation,
        },
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def dispatch(app: Celery, job: Job) -> None:
    """Send the first task of a job; its only argument is the job id, parameters live in Redis."""
    app.send_task(FIRST_TASK[job.type], args=[job.id], queue=ROUTES[FIRST_TASK[job.type]])


def queue_depths(app: Celery) -> dict[str, int]:
    with app.connection_for_write() as connection:
        client: Any = connection.default_channel.client
        return {queue: int(client.llen(queue)) for queue in QUEUES}
