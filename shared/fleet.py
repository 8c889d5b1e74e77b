"""What each predict worker serves, kept in Redis for the gateway's /metrics: every worker
writes its entry when it loads a model and again every heartbeat_interval_s; entries not
rewritten within heartbeat_timeout_s are of workers that are gone."""

import os
import socket
from datetime import timedelta

import redis
import redis.asyncio
from pydantic import ValidationError

from shared.contracts.serving import ServingWorker
from shared.contracts.times import utcnow
from shared.settings import Settings


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _key(settings: Settings) -> str:
    return f"{settings.redis.key_prefix}:serving-workers"


def announce(client: "redis.Redis", settings: Settings, worker: ServingWorker) -> None:
    client.hset(_key(settings), worker.worker, worker.model_dump_json())


async def serving_workers(client: "redis.asyncio.Redis", settings: Settings) -> list[ServingWorker]:
    """The workers that announced themselves lately; entries of those gone are removed."""
    fresh: list[ServingWorker] = []
    stale: list[str | bytes] = []
    oldest = utcnow() - timedelta(seconds=settings.reaper.heartbeat_timeout_s)
    entries = await client.hgetall(_key(settings))
    for name, value in entries.items():
        try:
            worker = ServingWorker.model_validate_json(value)
        except ValidationError:
            worker = None
        if worker is not None and worker.seen_at >= oldest:
            fresh.append(worker)
        else:
            stale.append(name)
    if stale:
        await client.hdel(_key(settings), *stale)
    return fresh
