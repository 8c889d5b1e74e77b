"""The SQS adapter against moto's real HTTP server: S3 notifies the queue, the listener polls it."""

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from boto3.s3.transfer import TransferConfig

from shared.contracts.stages import INGEST
from shared.settings import Settings
from shared.storage import client_options, s3_client
from testkit.servers import free_port
from tests.trigger_support import drop_tasks, pipeline_jobs, sent_tasks
from workers.listener.sqs import Poll, SqsListener
from workers.listener.trigger import PipelineTrigger


@dataclass
class Queues:
    settings: Settings
    sqs: Any
    url: str
    dead_letters: str

    def depth(self, url: str | None = None) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url or self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())


@pytest.fixture
def queues(settings: Settings) -> Iterator[Queues]:
    """A queue with a dead-letter queue (2 receives), notified of the bucket's new objects."""
    sqs: Any = boto3.client("sqs", **client_options(settings.storage))
    name = settings.storage.bucket
    dead_letters = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dead_letters, AttributeNames=["QueueArn"])
    redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": "2"}
    url = sqs.create_queue(
        QueueName=name,
        Attributes={"VisibilityTimeout": "1", "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    s3_client(settings.storage).put_bucket_notification_configuration(
        Bucket=settings.storage.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn["QueueArn"], "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    configured = settings.replace(sqs_queue_url=url, sqs_wait_time_s=1)
    yield Queues(configured, sqs, url, dead_letters)
    drop_tasks(settings, {job.id for job in pipeline_jobs(settings)})
    sqs.close()


def poll(settings: Settings, rounds: int = 1, trigger: PipelineTrigger | None = None) -> list[Poll]:
    async def polls() -> list[Poll]:
        async with SqsListener(settings, trigger or PipelineTrigger.from_settings(settings)) as sqs:
            return [await sqs.poll_once() for _ in range(rounds)]

    return asyncio.run(polls())


def drain(queues: Queues) -> None:
    """Poll until the queue is empty (bounded)."""
    for _ in range(10):
        poll(queues.settings)
        if queues.depth() == 0:
            return
    raise AssertionError("the listener left messages in the queue")


def put(settings: Settings, key: str, body: bytes = b"PK\x05\x06" + bytes(18)) -> None:
    s3_client(settings.storage).put_object(Bucket=settings.storage.bucket, Key=key, Body=body)


def test_an_upload_starts_one_job_and_its_message_is_deleted(queues: Queues) -> None:
    settings = queues.settings
    put(settings, "incoming/one/archive.zip")

    [first] = poll(settings)
    assert first.received == first.deleted == 2  # the configuration's test event and the upload
    assert queues.depth() == 0

    [job] = pipeline_jobs(settings)
    assert job.params.dataset == f"s3://{settings.storage.bucket}/incoming/one/archive.zip"
    assert job.params.source.key == "incoming/one/archive.zip"
    assert job.params.source.etag
    assert sent_tasks(settings, job.id) == [INGEST]


def test_an_event_delivered_three_times_starts_one_job(queues: Queues) -> None:
    settings, sqs = queues.settings, queues.sqs
    drain(queues)
    put(settings, "incoming/thrice/archive.zip")
    [message] = sqs.receive_message(QueueUrl=queues.url, WaitTimeSeconds=1)["Messages"]
    sqs.delete_message(QueueUrl=queues.url, ReceiptHandle=message["ReceiptHandle"])
    for _ in range(3):
        sqs.send_message(QueueUrl=queues.url, MessageBody=message["Body"])

    drain(queues)
    [job] = pipeline_jobs(settings)
    assert sent_tasks(settings, job.id) == [INGEST]


def test_a_multipart_upload_starts_one_job(queues: Queues, tmp_path: Path) -> None:
    settings = queues.settings
    archive = tmp_path / "archive.zip"
    archive.write_bytes(os.urandom(11 * 1024 * 1024))
    parts = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3_client(settings.storage).upload_file(
        str(archive), settings.storage.bucket, "incoming/big/archive.zip", Config=parts
    )

    drain(queues)
    [job] = pipeline_jobs(settings)
    assert job.params.source.size == 11 * 1024 * 1024
    assert job.params.source.etag.endswith("-3")


def test_other_objects_start_nothing_and_their_messages_are_deleted(queues: Queues) -> None:
    settings = queues.settings
    put(settings, "incoming/one/readme.txt")
    put(settings, "datasets/abc/archive.zip")

    drain(queues)
    assert pipeline_jobs(settings) == []


def test_a_malformed_message_goes_to_the_dead_letter_queue_and_the_next_upload_is_served(
    queues: Queues,
) -> None:
    settings, sqs = queues.settings, queues.sqs
    drain(queues)
    sqs.send_message(QueueUrl=queues.url, MessageBody="this is not an S3 event")
    trigger = PipelineTrigger.from_settings(settings)
    for _ in range(10):
        poll(settings, trigger=trigger)
        if queues.depth(queues.dead_letters):
            break
    [dead] = sqs.receive_message(QueueUrl=queues.dead_letters)["Messages"]
    assert dead["Body"] == "this is not an S3 event"

    put(settings, "incoming/after/archive.zip")
    drain(queues)
    [job] = pipeline_jobs(settings)
    assert job.params.source.key == "incoming/after/archive.zip"


def test_while_redis_is_away_messages_stay_in_the_queue(queues: Queues) -> None:
    settings = queues.settings
    drain(queues)
    put(settings, "incoming/later/archive.zip")
    away = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    with pytest.raises(redis.ConnectionError):
        poll(away)
    assert queues.depth() == 1

    drain(queues)
    assert len(pipeline_jobs(settings)) == 1


def test_run_serves_until_stopped(queues: Queues) -> None:
    settings = queues.settings

    async def serve_one_upload() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(
            SqsListener(settings, PipelineTrigger.from_settings(settings)).run(stop)
        )
        await asyncio.to_thread(put, settings, "incoming/run/archive.zip")
        for _ in range(100):
            if pipeline_jobs(settings):
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(running, 5)

    asyncio.run(serve_one_upload())
    assert len(pipeline_jobs(settings)) == 1
