"""What both stores share: the keys, the scripts, creating jobs and reading the newest."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from shared.contracts.errors import AgNewsError
from shared.contracts.jobs import EventType, Job, JobStatus, JobType
from shared.jobstore import scripts
from shared.jobstore.changes import refusal
from shared.jobstore.codec import decode_job, encode_job, pairs
from shared.jobstore.keys import JobKeys
from shared.settings import JobSettings

# Index entries one listing looks at, at most, for jobs that match its filters.
RECENT_SCAN_LIMIT = 2_000


@dataclass(frozen=True)
class Message:
    """A broker message as its queue's Redis list holds it."""

    queue: str
    body: str


@dataclass(frozen=True)
class Claim:
    """A job a worker took: its parameters (JSON) and how often its task was delivered; or why
    it was not taken."""

    job_id: str
    params: str = ""
    deliveries: int = 0
    refused: AgNewsError | None = None


@dataclass(frozen=True)
class PredictLoad:
    """Predict texts not yet answered, and texts answered since the store began."""

    pending: int
    answered: int


def claim_of(job_id: str, deliveries: Any, params: Any, started: Any) -> Claim:
    if isinstance(started, redis.ResponseError):
        refused = refusal(job_id, started)
        if not isinstance(refused, AgNewsError):
            raise refused
        return Claim(job_id, refused=refused)
    for reply in (deliveries, params):
        if isinstance(reply, Exception):
            raise reply
    return Claim(job_id, params=str(params), deliveries=int(deliveries))


def queue_create(pipe: Any, keys: JobKeys, job: Job, settings: JobSettings) -> None:
    """A new job's writes: its hash, its indexes, the active set, and for a predict job its
    expiry and texts, else its event stream. A predict index forgets what has expired."""
    hash_key, score = keys.job(job.id), job.created_at.timestamp()
    predict = job.type is JobType.predict
    pipe.hset(hash_key, mapping=encode_job(job))
    for index in keys.indexes(job):
        pipe.zadd(index, {job.id: score})
    if predict:
        pipe.zremrangebyscore(keys.predict_index, "-inf", f"({score - settings.predict_ttl_s}")
    if not job.status.terminal:
        pipe.zadd(keys.active, {hash_key: score})
    if predict:
        pipe.expire(hash_key, settings.predict_ttl_s)
        pipe.incrby(keys.pending, job.texts or 0)
        return
    if job.owner is not None:
        pipe.sadd(keys.owners, job.owner)
    pipe.xadd(
        keys.events(job.id),
        {"type": EventType.status.value, "data": json.dumps({"status": job.status.value})},
        maxlen=settings.event_stream_maxlen,
        approximate=True,
    )


def listed_indexes(keys: JobKeys, type_: JobType | None, owner: str | None) -> list[str]:
    """The indexes a listing reads: predict jobs, the others (an owner's own), or both."""
    predict = [] if type_ not in (None, JobType.predict) else [keys.predict_index]
    others = [] if type_ is JobType.predict else [keys.index(owner)]
    return [*predict, *others]


def recent_args(
    keys: JobKeys,
    type_: JobType | None,
    status: JobStatus | None,
    limit: int,
    owner: str | None,
) -> list[str]:
    return [
        keys.job(""),
        type_.value if type_ else "",
        status.value if status else "",
        str(limit),
        str(RECENT_SCAN_LIMIT),
        owner or "",
    ]


def newest(rows_per_index: Sequence[Sequence[Sequence[str]]], limit: int) -> list[Job]:
    """Each index's newest matches, merged: the newest `limit` of them all."""
    jobs = [decode_job("", pairs(row)) for rows in rows_per_index for row in rows]
    return sorted(jobs, key=lambda job: job.created_at, reverse=True)[:limit]


class Scripts:
    """A client, the keys and the store's scripts registered on it."""

    def __init__(
        self, client: "redis.Redis | redis.asyncio.Redis", prefix: str, settings: JobSettings
    ) -> None:
        # redis-py's annotations ignore decode_responses; every reply here is str.
        self.redis: Any = client
        self.settings = settings
        self.keys = JobKeys(prefix)
        self._emit: Any = client.register_script(scripts.EMIT)
        self._recent: Any = client.register_script(scripts.RECENT)
        self._touch: Any = client.register_script(scripts.TOUCH)
        self._sweep: Any = client.register_script(scripts.SWEEP)
