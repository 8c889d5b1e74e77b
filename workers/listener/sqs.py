"""The AWS adapter: long-polls the SQS queue the bucket sends its event notifications to.

A message is deleted only once every upload it reports has its job created and sent. A message
that cannot be read is left alone: each receive counts, and the queue's redrive policy moves it
to the dead-letter queue after maxReceiveCount of them.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from shared.contracts.errors import MalformedEvent
from shared.settings import Settings
from shared.storage import client_options
from workers.listener.events import parse_notification
from workers.listener.trigger import TRANSIENT_ERRORS, PipelineTrigger

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIED: tuple[type[Exception], ...] = (BotoCoreError, ClientError, *TRANSIENT_ERRORS)


@dataclass(frozen=True)
class Poll:
    received: int
    deleted: int


class SqsListener:
    """`async with SqsListener(settings, trigger) as sqs: await sqs.poll_once()`, or `run()`."""

    def __init__(self, settings: Settings, trigger: PipelineTrigger) -> None:
        if not settings.listener.sqs_queue_url:
            raise ValueError("the SQS listener needs sqs_queue_url")
        self.settings = settings
        self.queue_url = settings.listener.sqs_queue_url
        self.trigger = trigger
        self._stack = AsyncExitStack()
        self._sqs: Any = None

    async def __aenter__(self) -> Self:
        # Few retries inside the client: the backoff of run() takes over, and logs it.
        config = AioConfig(
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=self.settings.listener.sqs_wait_time_s + 10,
        )
        client = get_session().create_client(
            "sqs", config=config, **client_options(self.settings.storage)
        )
        self._sqs = await self._stack.enter_async_context(client)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set, backing off while SQS or Redis is away."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RETRIED),
            wait=wait_exponential_jitter(multiplier=0.5, max=self.settings.listener.backoff_max_s),
            sleep=lambda seconds: _unless_stopped(asyncio.sleep(seconds), stop),
            before_sleep=_log_retry,
        )
        async with self:
            log.info("polling %s", self.queue_url)
            while not stop.is_set():
                await retrying(self._poll_until, stop)

    async def poll_once(self) -> Poll:
        messages = await self.receive()
        return Poll(len(messages), await self.process(messages))

    async def receive(self) -> list[dict[str, Any]]:
        response = await self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.settings.listener.sqs_batch_size,
            WaitTimeSeconds=self.settings.listener.sqs_wait_time_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    async def process(self, messages: list[dict[str, Any]]) -> int:
        """Handle messages in order; delete those that are done with, even if a later one fails."""
        done: list[dict[str, Any]] = []
        try:
            for message in messages:
                if await self._handle(message):
                    done.append(message)
        finally:
            await self._delete(done)
        return len(done)

    async def _poll_until(self, stop: asyncio.Event) -> None:
        # Only the wait for messages is cut short; received ones are always handled.
        messages = await _unless_stopped(self.receive(), stop)
        if messages:
            await self.process(messages)

    async def _handle(self, message: dict[str, Any]) -> bool:
        try:
            events = parse_notification(message["Body"])
        except MalformedEvent as exc:
            receives = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
            log.warning(
                "message %s is malformed (receive %s), left for the dead-letter queue: %s %s",
                message["MessageId"],
                receives,
                exc.message,
                exc.details,
            )
            return False
        done = True
        for event in events:
            handled = await asyncio.to_thread(self.trigger.handle, event)
            done = done and handled.outcome.acknowledged
        return done

    async def _delete(self, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
        ]
        response = await self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        for failure in response.get("Failed", []):
            # Harmless: the message comes again and is a duplicate then.
            log.warning("could not delete message %s: %s", failure["Id"], failure.get("Message"))


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None as soon as `stop` is set (work is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning("SQS or Redis unavailable (%s); retrying in %.1fs", error, delay)
