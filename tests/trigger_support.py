"""What the S3-event trigger left on the broker and in the job store, for its tests."""

import base64
import json
from collections.abc import Iterator
from typing import Any

import redis

from shared.contracts.jobs import Job, JobType
from shared.jobstore import JobStore
from shared.settings import Settings


def _messages(client: Any, queue: str) -> Iterator[tuple[str, str, list[Any]]]:
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        yield raw, message["headers"]["task"], args


def sent_tasks(settings: Settings, job_id: str, queue: str = "evaluate") -> list[str]:
    """The names of the tasks waiting on `queue` for one job, one entry per message."""
    client: Any = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        return [task for _, task, args in _messages(client, queue) if args == [job_id]]
    finally:
        client.close()


def drop_tasks(settings: Settings, job_ids: set[str], queue: str = "evaluate") -> None:
    """Take a test's messages off the shared broker, so that no other test counts them."""
    client: Any = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        for raw, _, args in _messages(client, queue):
            if args and args[0] in job_ids:
                client.lrem(queue, 0, raw)
    finally:
        client.close()


def pipeline_jobs(settings: Settings) -> list[Job]:
    store = JobStore.from_settings(settings)
    try:
        return store.recent(JobType.pipeline)
    finally:
        store.redis.close()
