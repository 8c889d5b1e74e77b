"""The Celery app's configuration and how a job's tasks are sent, for senders (gateway, listener)
and workers alike.

Senders never import the workers' code: they send tasks by name (`shared.contracts.stages`).
"""

import base64
import json
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.serialization import dumps

from shared.contracts.jobs import Job, TaskCall
from shared.contracts.stages import PREDICT, QUEUES, ROUTES, first_task
from shared.settings import Settings


def make_celery(settings: Settings, name: str = "agnews") -> Celery:
    app = Celery(name, broker=settings.redis.url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_routes={task: {"queue": queue} for task, queue in ROUTES.items()},
        task_default_queue="predict",
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Redis restarting: workers reconnect with backoff rather than exit (then the
        # supervisor would restart them).
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport_options(settings, settings.broker.worker_queue),
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def transport_options(settings: Settings, queue: str | None) -> dict[str, Any]:
    """kombu's Redis options for a worker of `queue` (senders: None).

    Unacknowledged messages come back after the queue's visibility timeout. The timeout is per
    connection but the record of unacknowledged messages is per key, so each queue has its own
    keys: a predict worker's sweep after 15 s never restores a training that runs for hours.
    The train queue keeps kombu's default keys, so messages held before this split still return.
    """
    options: dict[str, Any] = {
        "visibility_timeout": settings.broker.visibility_timeout_s(queue),
        # A dead connection (Redis restarted) is noticed and replaced within this long.
        "health_check_interval": settings.redis.health_check_s,
        "unacked_restore_interval": settings.broker.restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    if queue in ("predict", "evaluate"):
        options |= {
            "unacked_key": f"unacked:{queue}",
            "unacked_index_key": f"unacked_index:{queue}",
            "unacked_mutex_key": f"unacked_mutex:{queue}",
        }
    return options


def dispatch(app: Celery, job: Job) -> None:
    """Send the first task of a job; its only argument is the job id, parameters live in Redis."""
    task = first_task(job.type)
    app.send_task(task, args=[job.id], queue=ROUTES[task])


def send_call(app: Celery, job_id: str, call: TaskCall) -> None:
    """Send a job's task under its call id (see `workers.reporting.stale_delivery`); a predict
    message names only its job, as the gateway sends it."""
    kwargs = {} if call.name == PREDICT else {**call.arguments, "call_id": call.id}
    app.send_task(call.name, args=[job_id], kwargs=kwargs, queue=ROUTES[call.name])


def predict_message(app: Celery, job_ids: Sequence[str]) -> str:
    """The message `dispatch` sends for a predict job, naming here one or more jobs, as kombu's
    Redis transport stores it on the predict queue's list: the gateway pushes it in the
    transaction that stores the jobs (one round trip, no job without its message) instead of
    going through kombu's producer."""
    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(
        task_id,
        PREDICT,
        args=list(job_ids),
        kwargs={},
        reply_to=app.thread_oid,
        argsrepr=repr(list(job_ids)),
        kwargsrepr="{}",
    )
    content_type, encoding, body = dumps(message.body, serializer="json")  # type: ignore[no-untyped-call]
    properties = {
        **message.properties,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": ROUTES[PREDICT]},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": message.headers,
            "properties": properties,
        }
    )


def queue_depths(app: Celery) -> dict[str, int]:
    with app.connection_for_write() as connection:
        client: Any = connection.default_channel.client
        return {queue: int(client.llen(queue)) for queue in QUEUES}
