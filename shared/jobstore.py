"""Jobs in Redis: a hash per job, a capped Stream of its events beside it, a sorted-set index.

Every write that changes a job also appends its event, atomically, in one Lua script. The script
refuses to touch a job that has already ended, so the last event of every job is its terminal
`result` or `error`, whatever races between a worker finishing and a client cancelling.
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import redis
import redis.asyncio

from shared.errors import AgNewsError, ErrorInfo, JobCancelled, NotFound
from shared.jobs import Event, EventType, Job, JobStatus, JobType, utcnow
from shared.settings import Settings

# KEYS: job hash, event stream. ARGV: maxlen, ttl, new status ("" keeps it), number of
# hash field pairs, the pairs, then (type, data) pairs of events. Returns the last event's id,
# or an error reply naming why nothing was written.
_EMIT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return redis.error_reply('missing') end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return redis.error_reply('ended:' .. status)
end
local new_status = ARGV[3]
local n_fields = tonumber(ARGV[4])
local i = 5
for _ = 1, n_fields do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if new_status ~= '' then redis.call('HSET', KEYS[1], 'status', new_status) end
local last = ''
while i < #ARGV do
  last = redis.call(
    'XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[i], 'data', ARGV[i + 1])
  i = i + 2
end
if new_status == 'succeeded' or new_status == 'failed' or new_status == 'cancelled' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return last
"""

_JSON_FIELDS = ("params", "progress", "result", "error")
_TIME_FIELDS = ("created_at", "started_at", "finished_at", "updated_at")


class JobKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.index = f"{prefix}:jobs"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"


def encode_job(job: Job) -> dict[str, str]:
    fields: dict[str, str] = {"id": job.id, "type": job.type.value, "status": job.status.value}
    for name in _JSON_FIELDS:
        value = getattr(job, name)
        if value is not None:
            fields[name] = json.dumps(value.model_dump() if name == "error" else value)
    for name in _TIME_FIELDS:
        value = getattr(job, name)
        if value is not None:
            fields[name] = value.isoformat()
    return fields


def decode_job(fields: Mapping[str, str]) -> Job:
    values: dict[str, Any] = dict(fields)
    for name in _JSON_FIELDS:
        if name in values:
            values[name] = json.loads(values[name])
    return Job.model_validate(values)


def decode_event(entry_id: str, fields: Mapping[str, str]) -> Event:
    return Event(id=entry_id, type=EventType(fields["type"]), data=json.loads(fields["data"]))


class _Change:
    """The arguments of one `_EMIT` call: hash fields to set and events to append."""

    def __init__(self, status: JobStatus | None = None) -> None:
        self.status = status
        self.fields: dict[str, str] = {"updated_at": utcnow().isoformat()}
        self.events: list[tuple[EventType, dict[str, Any]]] = []
        if status is not None:
            self.event(EventType.status, {"status": status.value})

    def set(self, name: str, value: Any) -> "_Change":
        if isinstance(value, datetime):
            self.fields[name] = value.isoformat()
        elif name in _JSON_FIELDS:
            self.fields[name] = json.dumps(value)
        else:
            self.fields[name] = str(value)
        return self

    def event(self, type_: EventType, data: Mapping[str, Any]) -> "_Change":
        self.events.append((type_, dict(data)))
        return self

    def argv(self, settings: Settings) -> list[str]:
        args = [
            str(settings.event_stream_maxlen),
            str(settings.job_ttl_s),
            self.status.value if self.status else "",
            str(len(self.fields)),
        ]
        for name, value in self.fields.items():
            args += [name, value]
        for type_, data in self.events:
            args += [type_.value, json.dumps(data, default=str)]
        return args


def _started() -> _Change:
    return _Change(JobStatus.running).set("started_at", utcnow())


def _succeeded(result: Mapping[str, Any]) -> _Change:
    return (
        _Change(JobStatus.succeeded)
        .set("finished_at", utcnow())
        .set("result", dict(result))
        .event(EventType.result, result)
    )


def _failed(error: ErrorInfo, status: JobStatus = JobStatus.failed) -> _Change:
    return (
        _Change(status)
        .set("finished_at", utcnow())
        .set("error", error.model_dump())
        .event(EventType.error, error.model_dump())
    )


def _progress(data: Mapping[str, Any]) -> _Change:
    return _Change().set("progress", dict(data)).event(EventType.progress, data)


def _cancelled() -> _Change:
    return _failed(
        ErrorInfo(code=JobCancelled.code, message="The job was cancelled by request."),
        JobStatus.cancelled,
    )


def _raise_emit_error(job_id: str, exc: redis.ResponseError) -> None:
    reason = str(exc)
    if reason.startswith("missing"):
        raise NotFound(f"job {job_id} does not exist or has expired") from None
    if reason.startswith("ended:"):
        raise JobCancelled(
            f"job {job_id} has already ended ({reason.removeprefix('ended:')})",
            details={"status": reason.removeprefix("ended:")},
        ) from None
    raise exc


def _queue_create(pipe: Any, keys: JobKeys, job: Job, settings: Settings) -> None:
    pipe.hset(keys.job(job.id), mapping=encode_job(job))
    pipe.zadd(keys.index, {job.id: job.created_at.timestamp()})
    pipe.xadd(
        keys.events(job.id),
        {"type": EventType.status.value, "data": json.dumps({"status": job.status.value})},
        maxlen=settings.event_stream_maxlen,
        approximate=True,
    )


def _matches(job: Job, type_: JobType | None, status: JobStatus | None) -> bool:
    return (type_ is None or job.type == type_) and (status is None or job.status == status)


class JobStore:
    """The job store for synchronous code: workers, the listener, the CLI."""

    def __init__(self, client: "redis.Redis", settings: Settings) -> None:
        # redis-py's annotations ignore decode_responses; every reply here is str.
        self.redis: Any = client
        self.settings = settings
        self.keys = JobKeys(settings.key_prefix)
        self._emit = client.register_script(_EMIT)

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobStore":
        return cls(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)

    def create(self, job: Job) -> Job:
        with self.redis.pipeline(transaction=True) as pipe:
            _queue_create(pipe, self.keys, job, self.settings)
            pipe.execute()
        return job

    def get(self, job_id: str) -> Job:
        fields = self.redis.hgetall(self.keys.job(job_id))
        if not fields:
            raise NotFound(f"job {job_id} does not exist or has expired")
        return decode_job(fields)

    def recent(
        self, type_: JobType | None = None, status: JobStatus | None = None, limit: int = 50
    ) -> list[Job]:
        jobs: list[Job] = []
        start = 0
        while len(jobs) < limit:
            ids = self.redis.zrevrange(self.keys.index, start, start + 4 * limit - 1)
            if not ids:
                break
            start += len(ids)
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.keys.job(job_id))
                rows = pipe.execute()
            gone = [job_id for job_id, row in zip(ids, rows, strict=True) if not row]
            if gone:
                self.redis.zrem(self.keys.index, *gone)
            jobs += [
                job for job in map(decode_job, filter(None, rows)) if _matches(job, type_, status)
            ]
        return jobs[:limit]

    def _apply(self, job_id: str, change: _Change) -> str:
        try:
            return str(
                self._emit(
                    keys=[self.keys.job(job_id), self.keys.events(job_id)],
                    args=change.argv(self.settings),
                )
            )
        except redis.ResponseError as exc:
            _raise_emit_error(job_id, exc)
            raise

    def start(self, job_id: str) -> None:
        """Mark a job running; raises JobCancelled if it was cancelled while it waited."""
        self._apply(job_id, _started())

    def progress(self, job_id: str, data: Mapping[str, Any]) -> None:
        self._apply(job_id, _progress(data))

    def event(self, job_id: str, type_: EventType, data: Mapping[str, Any]) -> None:
        if type_.terminal:
            raise ValueError("end a job with succeed() or fail()")
        self._apply(job_id, _Change().event(type_, data))

    def set_params(self, job_id: str, params: Mapping[str, Any]) -> None:
        self._apply(job_id, _Change().set("params", dict(params)))

    def succeed(self, job_id: str, result: Mapping[str, Any]) -> None:
        self._apply(job_id, _succeeded(result))

    def fail(self, job_id: str, error: ErrorInfo) -> None:
        self._apply(job_id, _failed(error))

    def cancel(self, job_id: str) -> Job:
        self._apply(job_id, _cancelled())
        return self.get(job_id)

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Jobs in one round trip; None for one that does not exist or has expired."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            rows = pipe.execute()
        return [decode_job(row) if row else None for row in rows]

    def _apply_many(self, changes: Sequence[tuple[str, _Change]]) -> list[AgNewsError | None]:
        """Changes to many jobs in one round trip; for each, None or why it was not written."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, change in changes:
                self._emit(
                    keys=[self.keys.job(job_id), self.keys.events(job_id)],
                    args=change.argv(self.settings),
                    client=pipe,
                )
            replies = pipe.execute(raise_on_error=False)
        outcomes: list[AgNewsError | None] = []
        for (job_id, _), reply in zip(changes, replies, strict=True):
            try:
                if isinstance(reply, redis.ResponseError):
                    _raise_emit_error(job_id, reply)
                outcomes.append(None)
            except (NotFound, JobCancelled) as exc:
                outcomes.append(exc)
        return outcomes

    def start_many(self, job_ids: Sequence[str]) -> list[AgNewsError | None]:
        """Mark jobs running; a job cancelled while it waited gets JobCancelled, not a start."""
        return self._apply_many([(job_id, _started()) for job_id in job_ids])

    def finish_many(
        self, outcomes: Sequence[tuple[str, Mapping[str, Any] | ErrorInfo]]
    ) -> list[AgNewsError | None]:
        """End jobs, each with its result or its error, in one round trip."""
        return self._apply_many(
            [
                (job_id, _failed(end) if isinstance(end, ErrorInfo) else _succeeded(end))
                for job_id, end in outcomes
            ]
        )

    def is_cancelled(self, job_id: str) -> bool:
        status: str | None = self.redis.hget(self.keys.job(job_id), "status")
        return status == JobStatus.cancelled.value

    def events(self, job_id: str, after: str = "0-0", count: int = 1000) -> list[Event]:
        entries = self.redis.xrange(self.keys.events(job_id), min=f"({after}", count=count)
        return [decode_event(entry_id, fields) for entry_id, fields in entries]


class AsyncJobStore:
    """The same store for the gateway's event loop."""

    def __init__(self, client: "redis.asyncio.Redis", settings: Settings) -> None:
        self.redis: Any = client
        self.settings = settings
        self.keys = JobKeys(settings.key_prefix)
        self._emit = client.register_script(_EMIT)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> "AsyncJobStore":
        client = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True, **options)
        return cls(client, settings)

    async def create(self, job: Job) -> Job:
        async with self.redis.pipeline(transaction=True) as pipe:
            _queue_create(pipe, self.keys, job, self.settings)
            await pipe.execute()
        return job

    async def get(self, job_id: str) -> Job:
        fields = await self.redis.hgetall(self.keys.job(job_id))
        if not fields:
            raise NotFound(f"job {job_id} does not exist or has expired")
        return decode_job(fields)

    async def recent(
        self, type_: JobType | None = None, status: JobStatus | None = None, limit: int = 50
    ) -> list[Job]:
        jobs: list[Job] = []
        start = 0
        while len(jobs) < limit:
            ids = await self.redis.zrevrange(self.keys.index, start, start + 4 * limit - 1)
            if not ids:
                break
            start += len(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.keys.job(job_id))
                rows = await pipe.execute()
            gone = [job_id for job_id, row in zip(ids, rows, strict=True) if not row]
            if gone:
                await self.redis.zrem(self.keys.index, *gone)
            jobs += [
                job for job in map(decode_job, filter(None, rows)) if _matches(job, type_, status)
            ]
        return jobs[:limit]

    async def cancel(self, job_id: str) -> Job:
        try:
            await self._emit(
                keys=[self.keys.job(job_id), self.keys.events(job_id)],
                args=_cancelled().argv(self.settings),
            )
        except redis.ResponseError as exc:
            _raise_emit_error(job_id, exc)
            raise
        return await self.get(job_id)

    async def read_events(
        self, job_id: str, after: str, block_ms: int, count: int = 500
    ) -> Sequence[Event]:
        """Events after `after`, waiting up to block_ms for the first; empty on time-out."""
        reply = await self.redis.xread(
            {self.keys.events(job_id): after}, count=count, block=block_ms
        )
        return [
            decode_event(entry_id, fields) for _, entries in reply for entry_id, fields in entries
        ]

    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.job(job_id)))

    async def fail(self, job_id: str, error: ErrorInfo) -> None:
        try:
            await self._emit(
                keys=[self.keys.job(job_id), self.keys.events(job_id)],
                args=_failed(error).argv(self.settings),
            )
        except redis.ResponseError as exc:
            _raise_emit_error(job_id, exc)
            raise

    async def events(
        self, job_id: str, after: str = "0-0", until: str = "+", count: int = 1000
    ) -> list[Event]:
        """Events after `after` up to and including `until`, without waiting."""
        entries = await self.redis.xrange(
            self.keys.events(job_id), min=f"({after}", max=until, count=count
        )
        return [decode_event(entry_id, fields) for entry_id, fields in entries]


def terminal_event(events: Iterable[Event]) -> Event | None:
    return next((event for event in events if event.type.terminal), None)
