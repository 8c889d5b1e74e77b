"""GET /v1/jobs/{id}/events: a job's events as server-sent events, resumable by Last-Event-ID.

A key (a client address, when the gateway is open) holds at most AGNEWS_MAX_STREAMS_PER_KEY
streams at once in each gateway process, predict jobs' included; beyond them a 429."""

import asyncio
import json
import re
import weakref
from collections.abc import AsyncGenerator, Callable

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import ratelimit
from gateway.answers import PREDICT_END_ID, PREDICT_STATUS_ID, ended
from gateway.hub import SubscriberLagging, entry_order
from gateway.jobs import visible_job
from gateway.services import Services, services
from shared.contracts.errors import InvalidRequest
from shared.contracts.jobs import Event, EventType, Job, JobType

_ENTRY_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")
# Redis keeps each part of an entry id in 64 bits and refuses a larger one; ids of up to 19
# digits per part all fit (real ones have 13 and 1), and the API document says so.
MAX_ID_DIGITS = 19

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = ": heartbeat\n\n"


def frame(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.type.value}\ndata: {json.dumps(event.data)}\n\n"


def resume_point(request: Request) -> str:
    """Where to start: the Last-Event-ID header (a browser's reconnect), else the query."""
    header = request.headers.get("last-event-id")
    query = request.query_params.get("last_event_id")
    for given in (header, query):
        if given and not _ENTRY_ID.fullmatch(given):
            raise InvalidRequest(
                f"Last-Event-ID: {given!r} is not an event id like 1764153067123-0",
                details={"fields": ["Last-Event-ID"]},
            )
        if given and any(len(part) > MAX_ID_DIGITS for part in given.split("-")):
            # An error from one stream's read must never reach the reads others share.
            raise InvalidRequest(
                f"Last-Event-ID: {given!r} is out of range: at most {MAX_ID_DIGITS} digits "
                "before and after the dash",
                details={"fields": ["Last-Event-ID"]},
            )
    return header or query or "0-0"


class EventStreamResponse(StreamingResponse):
    """Streams until its events end or the client goes away, whichever comes first; either way
    the event source is closed at once, which ends its subscription, and `on_close` is called
    (once, and also should the response be dropped without being sent)."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncGenerator[str, None], on_close: Callable[[], None] | None = None
    ) -> None:
        super().__init__(events, headers=HEADERS)
        self.events = events
        self._closed = weakref.finalize(self, on_close or (lambda: None))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            try:
                await self.events.aclose()
            finally:
                self._closed()


async def frames(
    state: Services, job: Job, after: str, on_end: Callable[[], None] = lambda: None
) -> AsyncGenerator[str, None]:
    """The stream's frames; `on_end` is called as they end (before the response's last
    message, so a client reconnecting at once finds the stream's slot given back)."""
    state.metrics.sse_clients.inc()
    try:
        if job.type is JobType.predict:
            async for text in predict_frames(state, job, after):
                yield text
            return
        if job.status.terminal:
            # Everything the job will ever say is already in its stream.
            batch = state.hub.tuning.batch
            while True:
                events = await state.store.events(job.id, after, count=batch)
                for event in events:
                    yield frame(event)
                if len(events) < batch:
                    return
                after = events[-1].id
        async with state.hub.subscribe(job.id, after) as subscription:
            while True:
                try:
                    live = await subscription.next(state.settings.gateway.sse_heartbeat_s)
                except SubscriberLagging:
                    # Dropped for leaving too much unread: the stream ends, and the client's
                    # reconnect with Last-Event-ID loses nothing. (StreamUnreadable, a stream
                    # Redis will not read, fails the response: the client retries later.)
                    return
                if live is None:
                    yield HEARTBEAT
                    continue
                yield frame(live)
                if live.type.terminal:
                    return
    finally:
        state.metrics.sse_clients.dec()
        on_end()


async def predict_frames(state: Services, job: Job, after: str) -> AsyncGenerator[str, None]:
    """A predict job's two events, its status and its end (it has no stream of its own)."""
    if entry_order(after) < entry_order(PREDICT_STATUS_ID):
        yield frame(Event(id=PREDICT_STATUS_ID, type=EventType.status, data={"status": job.status}))
    if entry_order(after) >= entry_order(PREDICT_END_ID):
        return
    async with state.answers.expect(job.id) as answer:
        end = ended(await state.store.get(job.id))
        while end is None:
            try:
                end = await asyncio.wait_for(
                    asyncio.shield(answer), state.settings.gateway.sse_heartbeat_s
                )
            except TimeoutError:
                yield HEARTBEAT
    yield frame(end)


async def job_events(request: Request) -> EventStreamResponse:
    state = services(request)
    after = resume_point(request)
    job = await visible_job(request, request.path_params["job_id"])
    release = ratelimit.open_stream(request, state.limits.streams)
    return EventStreamResponse(frames(state, job, after, release), on_close=release)


routes = [Route("/jobs/{job_id}/events", job_events, methods=["GET"])]
