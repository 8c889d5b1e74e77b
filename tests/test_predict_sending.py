"""The gateway's predict jobs stored together: a message per few jobs submitted at once, every job
named once, and a failed transaction failing each submit it took."""

import asyncio
import base64
import json

import pytest
import redis
import redis.asyncio

from gateway.sending import PredictSender
from shared.broker import make_celery, predict_message
from shared.contracts.jobs import Job, JobType, new_job_id
from shared.jobstore import AsyncJobStore, Message
from shared.settings import Settings


def predict_job() -> Job:
    return Job(id=new_job_id(), type=JobType.predict, params={"texts": ["Stocks rally"]})


def named_jobs(raw: str) -> list[str]:
    body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    args: list[str] = body[0]
    return args


async def submit_all(settings: Settings, url: str, bursts: list[int]) -> list[list[Job]]:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    celery = make_celery(settings)
    queue = f"{settings.redis.key_prefix}:predict"
    sender = PredictSender(
        AsyncJobStore(client, settings.redis.key_prefix, settings.jobs),
        lambda job_ids: Message(queue, predict_message(celery, job_ids)),
        per_message=8,
    )
    submitted = []
    try:
        for size in bursts:
            jobs = [predict_job() for _ in range(size)]
            submitted.append(list(await asyncio.gather(*(sender.submit(job) for job in jobs))))
    finally:
        await client.aclose()
    return submitted


def test_jobs_submitted_together_share_messages_each_job_named_once(
    settings: Settings, redis_client: "redis.Redis[str]"
) -> None:
    burst, lone = asyncio.run(submit_all(settings, settings.redis.url, [20, 1]))
    queue = f"{settings.redis.key_prefix}:predict"
    messages = [named_jobs(raw) for raw in reversed(redis_client.lrange(queue, 0, -1))]
    # 20 jobs at once: three messages of at most 8; then a lone job in its own message.
    assert [len(named) for named in messages] == [8, 8, 4, 1]
    assert [job_id for named in messages[:3] for job_id in named] == [job.id for job in burst]
    assert messages[3] == [lone[0].id]
    for job in burst + lone:
        assert redis_client.hget(f"{settings.redis.key_prefix}:job:{job.id}", "status") == "queued"


def test_a_failed_transaction_fails_every_submit_it_took(settings: Settings) -> None:
    unreachable = settings.replace(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(submit_all(unreachable, unreachable.redis.url, [5]))
