"""A few Redis readers per process that fan job events out to every subscriber.

Each reader task runs XREAD BLOCK over its share of the subscribed jobs' streams at once, plus a
private wake stream: subscribing to a stream the reader does not follow yet appends to the wake
stream, so the blocked read returns and the next one includes the new stream. Streams are shared
out by hash over `HubTuning.readers` readers, because every XREAD names all of its reader's
streams: the cost of each wake-up grows with that number, not with the whole process's.

Each subscriber owns a queue and a cursor (the last entry id it has seen); anything at or before
its cursor is dropped, so catching up and joining never repeat an event. A subscriber joining a
stream its reader already follows first reads what it missed, (its id, the reader's position],
with XRANGE.

One stream never holds up the others. A subscriber whose queue holds more than
`HubTuning.max_queued_events` (a client that stopped reading) is dropped: its stream ends, and
it reconnects with Last-Event-ID and loses nothing. When a reader's XREAD fails with a Redis
error (a key of the wrong type where a job's events should be, a position out of range), the
reader reads each stream alone to find the ones at fault, ends their subscriptions (their
clients see the stream fail), stops following them and goes on with the rest.
"""

import asyncio
import contextlib
import logging
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions

from shared.contracts.errors import ServiceUnavailable
from shared.contracts.jobs import Event
from shared.jobstore import AsyncJobStore, decode_event

log = logging.getLogger("gateway.hub")


@dataclass(frozen=True)
class HubTuning:
    readers: int = 8
    block_ms: int = 5_000
    batch: int = 500
    retry_min_s: float = 0.05
    retry_max_s: float = 2.0
    wake_ttl_s: int = 24 * 3600
    # Events a subscriber may leave unread before it is dropped: at least two full reads (a
    # burst after an outage is no reason to drop anyone), and well under what a job's stream
    # keeps (AGNEWS_EVENT_STREAM_MAXLEN, 2000), so that the reconnect still finds what it
    # missed; about a megabyte of decoded events at most.
    max_queued_events: int = 1_000


def entry_order(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


class SubscriptionEnded(Exception):
    """The hub ended a subscription before its job's events did."""


class SubscriberLagging(SubscriptionEnded):
    """The subscriber left too many events unread; it resumes from its cursor (Last-Event-ID)
    with nothing lost."""


class StreamUnreadable(ServiceUnavailable):
    """Redis refuses to read the job's event stream (a key of the wrong type, say)."""


class Subscription:
    """One subscriber's view of one job's events, each delivered once, in stream order."""

    def __init__(
        self,
        store: AsyncJobStore,
        tuning: HubTuning,
        job_id: str,
        after: str,
        until: str | None,
    ) -> None:
        self.job_id = job_id
        self.cursor = entry_order(after)
        self._store = store
        self._batch = tuning.batch
        self._max_queued = tuning.max_queued_events
        self._after = after
        self._until = until
        self._pending: deque[Event] = deque()
        self._queue: asyncio.Queue[Sequence[Event]] = asyncio.Queue()
        self._queued = 0  # events in _queue
        self._ended: Exception | None = None

    @property
    def ended(self) -> bool:
        return self._ended is not None

    def push(self, events: Sequence[Event]) -> bool:
        """Queue events for the subscriber; False once it is ended (dropped now if it has more
        than max_queued_events unread: one batch is always taken)."""
        if self._ended is not None:
            return False
        if self._queued and self._queued + len(events) > self._max_queued:
            self.end(
                SubscriberLagging(
                    f"the subscriber to job {self.job_id} left {self._queued} events unread"
                )
            )
            return False
        self._queued += len(events)
        self._queue.put_nowait(events)
        return True

    def end(self, error: Exception) -> None:
        """End the subscription: what it holds is let go, and next() raises `error` from now on
        (at once, if it is waiting)."""
        if self._ended is not None:
            return
        self._ended = error
        self._pending.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued = 0
        self._queue.put_nowait(())  # wakes a waiting next()

    async def next(self, wait_s: float) -> Event | None:
        """The next unseen event; None when none arrives within `wait_s` seconds; raises what
        ended the subscription (SubscriberLagging, StreamUnreadable) once it is ended."""
        while True:
            if self._ended is not None:
                raise self._ended
            while self._pending:
                event = self._pending.popleft()
                if entry_order(event.id) > self.cursor:
                    self.cursor = entry_order(event.id)
                    return event
            if self._until is not None:
                await self._catch_up()
                continue
            try:
                events = await asyncio.wait_for(self._queue.get(), wait_s)
            except TimeoutError:
                return None
            if self._ended is None:
                self._queued -= len(events)
                self._pending.extend(events)

    async def _catch_up(self) -> None:
        assert self._until is not None
        events = await self._store.events(self.job_id, self._after, self._until, self._batch)
        self._pending.extend(events)
        if len(events) < self._batch:
            self._until = None
        else:
            self._after = events[-1].id


class _Stream:
    __slots__ = ("position", "subscribers")

    def __init__(self, position: str) -> None:
        self.position = position
        self.subscribers: set[Subscription] = set()


def _entries(reply: Any) -> list[tuple[str, list[tuple[str, Mapping[str, str]]]]]:
    items = reply.items() if isinstance(reply, dict) else reply or []
    return [(key, list(entries)) for key, entries in items]


class _Reader:
    """One XREAD BLOCK loop over a share of the streams, woken through its own wake stream."""

    def __init__(
        self, client: "redis.asyncio.Redis", store: AsyncJobStore, tuning: HubTuning
    ) -> None:
        self.client = client
        self.store = store
        self.tuning = tuning
        self.streams: dict[str, _Stream] = {}
        self.wake_key = f"{store.keys.prefix}:gateway:{uuid.uuid4().hex}:wake"
        self._wake_position = "0-0"
        self._wake_sent = False
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._spawn(self._run())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wake(self) -> None:
        if not self._wake_sent:
            self._wake_sent = True
            self._spawn(self._send_wake())

    async def _send_wake(self) -> None:
        try:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"wake": "1"}, maxlen=16, approximate=True)
                pipe.expire(self.wake_key, self.tuning.wake_ttl_s)
                await pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # The reader is failing too; it reads every stream afresh once Redis is back.
            log.debug("wake failed: %s", exc)

    async def _run(self) -> None:
        delay = 0.0
        while True:
            try:
                await self._read()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if not delay:
                    log.warning("event hub lost Redis, retrying until it is back: %s", exc)
                delay = min(max(delay * 2, self.tuning.retry_min_s), self.tuning.retry_max_s)
                await asyncio.sleep(delay)
                continue
            except Exception:
                log.exception("event hub read failed")
                delay = min(max(delay * 2, self.tuning.retry_min_s), self.tuning.retry_max_s)
                await asyncio.sleep(delay)
                continue
            if delay:
                log.warning("event hub reads from Redis again")
                delay = 0.0

    async def _read(self) -> None:
        # A subscriber arriving after this point finds _wake_sent false and wakes the read.
        self._wake_sent = False
        following = dict(self.streams)
        positions: dict[Any, Any] = {key: stream.position for key, stream in following.items()}
        positions[self.wake_key] = self._wake_position
        try:
            reply = await self.client.xread(
                positions, count=self.tuning.batch, block=self.tuning.block_ms
            )
        except redis.exceptions.ResponseError:
            # Retried as it is, it would fail the same way for as long as its culprit is there.
            if await self._drop_unreadable():
                return
            raise
        for key, entries in _entries(reply):
            if not entries:
                continue
            if key == self.wake_key:
                self._wake_position = entries[-1][0]
                continue
            stream = following.get(key)
            # A stream dropped (or dropped and followed again) while the read was in flight
            # starts over from its own position.
            if stream is None or self.streams.get(key) is not stream:
                continue
            stream.position = entries[-1][0]
            try:
                events = [decode_event(entry_id, fields) for entry_id, fields in entries]
            except Exception as exc:
                log.exception("event hub: %s holds an entry that is no event", key)
                self._drop(key, stream, f"the event stream {key} holds no events: {exc!r}")
                continue
            for subscription in list(stream.subscribers):
                if not subscription.push(events):
                    stream.subscribers.discard(subscription)
            if not stream.subscribers:
                del self.streams[key]

    async def _drop_unreadable(self) -> bool:
        """After an XREAD failed with a Redis error: reads each stream alone (one pipeline, no
        blocking), ends the subscriptions of those Redis refuses to read and stops following
        them; a wake stream at fault is replaced by a new one. Whether any was at fault."""
        following = dict(self.streams)
        positions = {key: stream.position for key, stream in following.items()}
        positions[self.wake_key] = self._wake_position
        async with self.client.pipeline(transaction=False) as pipe:
            for key, position in positions.items():
                pipe.xread({key: position}, count=1)
            replies = await pipe.execute(raise_on_error=False)
        faults = {
            key: reply
            for key, reply in zip(positions, replies, strict=True)
            if isinstance(reply, redis.exceptions.ResponseError)
        }
        for key, fault in faults.items():
            if key == self.wake_key:
                log.warning(
                    "event hub: wake stream %s cannot be read (%s); using another", key, fault
                )
                self.wake_key = f"{self.store.keys.prefix}:gateway:{uuid.uuid4().hex}:wake"
                self._wake_position = "0-0"
                continue
            stream = following[key]
            log.warning(
                "event hub: %s cannot be read from %s (%s); ending its %d subscriptions",
                key,
                stream.position,
                fault,
                len(stream.subscribers),
            )
            self._drop(key, stream, f"the event stream {key} cannot be read: {fault}")
        return bool(faults)

    def _drop(self, key: str, stream: _Stream, why: str) -> None:
        for subscription in stream.subscribers:
            subscription.end(StreamUnreadable(why, details={"job_id": subscription.job_id}))
        stream.subscribers.clear()
        if self.streams.get(key) is stream:
            del self.streams[key]


class EventHub:
    def __init__(
        self, client: "redis.asyncio.Redis", store: AsyncJobStore, tuning: HubTuning | None = None
    ) -> None:
        """`client` is for the readers alone: each holds one of its connections in XREAD."""
        self.client = client
        self.store = store
        self.tuning = tuning or HubTuning()
        self._readers = [_Reader(client, store, self.tuning) for _ in range(self.tuning.readers)]

    @property
    def subscribers(self) -> int:
        return sum(
            len(stream.subscribers)
            for reader in self._readers
            for stream in reader.streams.values()
        )

    def start(self) -> None:
        for reader in self._readers:
            reader.start()

    async def stop(self) -> None:
        await asyncio.gather(*(reader.stop() for reader in self._readers))
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self.store.redis.delete(*(reader.wake_key for reader in self._readers))

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str, after: str = "0-0") -> AsyncIterator[Subscription]:
        key = self.store.keys.events(job_id)
        reader = self._readers[zlib.crc32(key.encode()) % len(self._readers)]
        stream = reader.streams.get(key)
        until: str | None = None
        if stream is None:
            stream = reader.streams[key] = _Stream(after)
            reader.wake()
        elif entry_order(stream.position) > entry_order(after):
            until = stream.position
        subscription = Subscription(self.store, self.tuning, job_id, after, until)
        stream.subscribers.add(subscription)
        try:
            yield subscription
        finally:
            stream.subscribers.discard(subscription)
            if not stream.subscribers and reader.streams.get(key) is stream:
                del reader.streams[key]
