"""Jobs in Redis: a hash per job, a capped Stream of its events beside it, a sorted-set index.

Every write that changes a job also appends its event, atomically, in one Lua script. The script
refuses to touch a job that has already ended, so the last event of every job is its terminal
`result` or `error`, whatever races between a worker finishing and a client cancelling.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import redis.asyncio
from pydantic import BaseModel

from shared.contracts.errors import AgNewsError, ErrorInfo, JobCancelled, JobEnded, NotFound
from shared.contracts.jobs import Event, EventType, Job, JobStatus, JobType, TaskCall
from shared.contracts.results import JobResult
from shared.contracts.times import utcnow
from shared.redis_clients import async_client, sync_client
from shared.settings import JobSettings, Settings

# KEYS: job hash, event stream, the set of active jobs (an ended job leaves it). ARGV: maxlen,
# ttl, new status ("" keeps it), number of hash field pairs, the pairs, then (type, data) pairs
# of events. Returns the last event's id,
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
  redis.call('ZREM', KEYS[3], KEYS[1])
end
return last
"""

# KEYS: the job index. ARGV: job key prefix, type ("" any), status ("" any), limit, most entries
# to scan. The newest matching jobs' hashes, flattened; index entries of expired jobs are dropped.
_RECENT = """
local prefix, want_type, want_status, want_owner = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local found, start, scanned = {}, 0, 0
while #found < limit and scanned < budget do
  local ids = redis.call('ZREVRANGE', KEYS[1], start, start + 4 * limit - 1)
  if #ids == 0 then break end
  scanned = scanned + #ids
  start = start + #ids
  for _, id in ipairs(ids) do
    local kind = redis.call('HMGET', prefix .. id, 'type', 'status', 'owner')
    if not kind[1] then
      redis.call('ZREM', KEYS[1], id)
      start = start - 1
    elseif (want_type == '' or kind[1] == want_type)
        and (want_status == '' or kind[2] == want_status)
        and (want_owner == '' or kind[3] == want_owner) and #found < limit then
      found[#found + 1] = redis.call('HGETALL', prefix .. id)
    end
  end
end
return found
"""
RECENT_SCAN_LIMIT = 10_000

# KEYS: job hash. ARGV: "incr" or "set", field, value. A worker's bookkeeping on a job that has
# not ended: count a delivery (returns the count) or set a field such as the heartbeat (returns 0).
# Returns -1, writing nothing, for a job that has expired or ended: no hash is ever recreated.
_TOUCH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return -1
end
if ARGV[1] == 'incr' then return redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 0
"""

DELIVERIES = "deliveries:"
_JSON_FIELDS = ("params", "progress", "result", "error", "task")
_TIME_FIELDS = ("created_at", "started_at", "finished_at", "updated_at", "heartbeat_at")


class JobKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.index = f"{prefix}:jobs"
        # Jobs not yet ended, by creation time (members are their hash keys): the reaper's list.
        self.active = f"{prefix}:jobs:active"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def both(self, job_id: str) -> list[str]:
        """The keys a change to a job touches: its hash, its events, the active jobs."""
        return [self.job(job_id), self.events(job_id), self.active]


def _json(value: Any) -> str:
    return value.model_dump_json() if isinstance(value, BaseModel) else json.dumps(value)


def _data(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), default=str)


def encode_job(job: Job) -> dict[str, str]:
    fields: dict[str, str] = {"id": job.id, "type": job.type.value, "status": job.status.value}
    if job.owner is not None:
        fields["owner"] = job.owner
    fields["params"] = job.params.model_dump_json(exclude_none=True)
    for name in ("progress", "result", "error", "task"):
        value = getattr(job, name)
        if value is not None:
            fields[name] = _json(value)
    for name in _TIME_FIELDS:
        value = getattr(job, name)
        if value is not None:
            fields[name] = value.isoformat()
    return fields


def decode_job(job_id: str, fields: Mapping[str, str]) -> Job:
    if not fields:
        raise NotFound(f"job {job_id} does not exist or has expired")
    values: dict[str, Any] = {k: v for k, v in fields.items() if not k.startswith(DELIVERIES)}
    values["deliveries"] = {
        k.removeprefix(DELIVERIES): int(v) for k, v in fields.items() if k.startswith(DELIVERIES)
    }
    for name in _JSON_FIELDS:
        if name in values:
            values[name] = json.loads(values[name])
    return Job.model_validate(values)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def recent_args(
    keys: JobKeys,
    type_: JobType | None,
    status: JobStatus | None,
    limit: int,
    owner: str | None = None,
) -> list[str]:
    return [
        keys.job(""),
        type_.value if type_ else "",
        status.value if status else "",
        str(limit),
        str(RECENT_SCAN_LIMIT),
        owner or "",
    ]


def decode_event(entry_id: str, fields: Mapping[str, str]) -> Event:
    return Event(id=entry_id, type=EventType(fields["type"]), data=json.loads(fields["data"]))


class _Change:
    """The arguments of one `_EMIT` call: hash fields to set and events to append."""

    def __init__(self, status: JobStatus | None = None) -> None:
        self.status = status
        self.fields: dict[str, str] = {"updated_at": utcnow().isoformat()}
        self.events: list[tuple[EventType, str]] = []
        if status is not None:
            self.event(EventType.status, {"status": status.value})

    def set(self, name: str, value: Any) -> "_Change":
        if isinstance(value, datetime):
            self.fields[name] = value.isoformat()
        elif name in _JSON_FIELDS:
            self.fields[name] = _json(value)
        else:
            self.fields[name] = str(value)
        return self

    def event(self, type_: EventType, data: Mapping[str, Any] | BaseModel) -> "_Change":
        self.events.append((type_, _json(data) if isinstance(data, BaseModel) else _data(data)))
        return self

    def ending(self, name: str, type_: EventType, value: BaseModel) -> "_Change":
        """Set the job's `name` (result or error) and append it as its event: one encoding."""
        encoded = _json(value)
        self.fields[name] = encoded
        self.events.append((type_, encoded))
        return self

    def argv(self, settings: JobSettings) -> list[str]:
        args = [
            str(settings.event_stream_maxlen),
            str(settings.ttl_s),
            self.status.value if self.status else "",
            str(len(self.fields)),
        ]
        for name, value in self.fields.items():
            args += [name, value]
        for type_, data in self.events:
            args += [type_.value, data]
        return args


def _started() -> _Change:
    return _Change(JobStatus.running).set("started_at", utcnow())


def _succeeded(result: JobResult) -> _Change:
    return (
        _Change(JobStatus.succeeded)
        .set("finished_at", utcnow())
        .ending("result", EventType.result, result)
    )


def _failed(error: ErrorInfo, status: JobStatus = JobStatus.failed) -> _Change:
    return _Change(status).set("finished_at", utcnow()).ending("error", EventType.error, error)


def _progress(data: Mapping[str, Any]) -> _Change:
    return _Change().set("progress", dict(data)).event(EventType.progress, data)


def _cancelled() -> _Change:
    return _failed(
        ErrorInfo(code=JobCancelled.code, message="The job was cancelled by request."),
        JobStatus.cancelled,
    )


def emit_error(job_id: str, exc: redis.ResponseError) -> Exception:
    """What a refused `_EMIT` means: the job is gone, or has already ended."""
    reason = str(exc)
    if reason.startswith("missing"):
        return NotFound(f"job {job_id} does not exist or has expired")
    if reason.startswith("ended:"):
        status = reason.removeprefix("ended:")
        ended = JobCancelled if status == JobStatus.cancelled.value else JobEnded
        return ended(f"job {job_id} has already ended ({status})", details={"status": status})
    return exc


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


def _claim(job_id: str, deliveries: Any, params: Any, started: Any) -> Claim:
    if isinstance(started, redis.ResponseError):
        refused = emit_error(job_id, started)
        if not isinstance(refused, AgNewsError):
            raise refused
        return Claim(job_id, refused=refused)
    for reply in (deliveries, params):
        if isinstance(reply, Exception):
            raise reply
    return Claim(job_id, params=str(params), deliveries=int(deliveries))


def _queue_create(pipe: Any, keys: JobKeys, job: Job, settings: JobSettings) -> None:
    pipe.hset(keys.job(job.id), mapping=encode_job(job))
    pipe.zadd(keys.index, {job.id: job.created_at.timestamp()})
    if not job.status.terminal:
        pipe.zadd(keys.active, {keys.job(job.id): job.created_at.timestamp()})
    pipe.xadd(
        keys.events(job.id),
        {"type": EventType.status.value, "data": json.dumps({"status": job.status.value})},
        maxlen=settings.event_stream_maxlen,
        approximate=True,
    )


class _Scripts:
    """A client, the keys and the store's scripts registered on it."""

    def __init__(
        self, client: "redis.Redis | redis.asyncio.Redis", prefix: str, settings: JobSettings
    ) -> None:
        # redis-py's annotations ignore decode_responses; every reply here is str.
        self.redis: Any = client
        self.settings = settings
        self.keys = JobKeys(prefix)
        self._emit: Any = client.register_script(_EMIT)
        self._recent: Any = client.register_script(_RECENT)
        self._touch: Any = client.register_script(_TOUCH)


class JobStore(_Scripts):
    """The job store for synchronous code: workers, the listener, the CLI."""

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobStore":
        return cls(sync_client(settings.redis), settings.redis.key_prefix, settings.jobs)

    def create(self, job: Job) -> Job:
        with self.redis.pipeline(transaction=True) as pipe:
            _queue_create(pipe, self.keys, job, self.settings)
            pipe.execute()
        return job

    def get(self, job_id: str) -> Job:
        return decode_job(job_id, self.redis.hgetall(self.keys.job(job_id)))

    def recent(
        self, type_: JobType | None = None, status: JobStatus | None = None, limit: int = 50
    ) -> list[Job]:
        rows = self._recent(
            keys=[self.keys.index], args=recent_args(self.keys, type_, status, limit)
        )
        return [decode_job("", _pairs(row)) for row in rows]

    def _apply(self, job_id: str, change: _Change) -> str:
        try:
            return str(self._emit(keys=self.keys.both(job_id), args=change.argv(self.settings)))
        except redis.ResponseError as exc:
            raise emit_error(job_id, exc) from None

    def start(self, job_id: str) -> None:
        """Mark a job running; raises JobCancelled if it was cancelled while it waited."""
        self._apply(job_id, _started())

    def progress(self, job_id: str, data: Mapping[str, Any]) -> None:
        self._apply(job_id, _progress(data))

    def event(self, job_id: str, type_: EventType, data: Mapping[str, Any]) -> None:
        if type_.terminal:
            raise ValueError("end a job with succeed() or fail()")
        self._apply(job_id, _Change().event(type_, data))

    def succeed(self, job_id: str, result: JobResult) -> None:
        self._apply(job_id, _succeeded(result))

    def fail(self, job_id: str, error: ErrorInfo) -> None:
        self._apply(job_id, _failed(error))

    def cancel(self, job_id: str) -> Job:
        self._apply(job_id, _cancelled())
        return self.get(job_id)

    def claim_many(self, job_ids: Sequence[str], task: str) -> list[Claim]:
        """Take jobs for `task` in one round trip: for each job that has not ended, count a
        delivery, read its parameters and mark it running; the others are refused, saying why
        (gone, ended, cancelled while it waited)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                key = [self.keys.job(job_id)]
                self._touch(keys=key, args=["incr", f"{DELIVERIES}{task}"], client=pipe)
                pipe.hget(key[0], "params")
                self._emit(
                    keys=self.keys.both(job_id), args=_started().argv(self.settings), client=pipe
                )
            replies = pipe.execute(raise_on_error=False)
        return [
            _claim(job_id, *replies[i : i + 3])
            for i, job_id in zip(range(0, len(replies), 3), job_ids, strict=True)
        ]

    def _apply_many(self, changes: Sequence[tuple[str, _Change]]) -> list[AgNewsError | None]:
        """Changes to many jobs in one round trip; for each, None or why it was not written."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, change in changes:
                self._emit(
                    keys=self.keys.both(job_id), args=change.argv(self.settings), client=pipe
                )
            replies = pipe.execute(raise_on_error=False)
        outcomes: list[AgNewsError | None] = []
        for (job_id, _), reply in zip(changes, replies, strict=True):
            refused = emit_error(job_id, reply) if isinstance(reply, redis.ResponseError) else None
            if refused is not None and not isinstance(refused, AgNewsError):
                raise refused
            outcomes.append(refused)
        return outcomes

    def finish_many(
        self, outcomes: Sequence[tuple[str, JobResult | ErrorInfo]]
    ) -> list[AgNewsError | None]:
        """End jobs, each with its result or its error, in one round trip."""
        return self._apply_many(
            [
                (job_id, _failed(end) if isinstance(end, ErrorInfo) else _succeeded(end))
                for job_id, end in outcomes
            ]
        )

    def count_delivery(self, job_id: str, task: str) -> int:
        """Count one more delivery of `task` for a job; -1 if the job has ended or expired."""
        return int(self._touch(keys=[self.keys.job(job_id)], args=["incr", f"{DELIVERIES}{task}"]))

    def heartbeat(
        self, job_id: str, task: TaskCall | None = None, *, running: bool = False
    ) -> bool:
        """The job's worker is alive (and, when named, in `task`: running it, or handing the
        job to it); False once the job has ended."""
        key = [self.keys.job(job_id)]
        if task is not None:
            self._touch(keys=key, args=["set", "task", task.model_dump_json()])
        if task is not None and running:
            self._touch(keys=key, args=["set", "running_call", task.id])
        return int(self._touch(keys=key, args=["set", "heartbeat_at", utcnow().isoformat()])) == 0

    def active(self, limit: int = 10_000) -> list[Job]:
        """Jobs that have not ended, oldest first; entries of jobs gone are dropped."""
        hash_keys: list[str] = self.redis.zrange(self.keys.active, 0, limit - 1)
        with self.redis.pipeline(transaction=False) as pipe:
            for key in hash_keys:
                pipe.hgetall(key)
            rows = pipe.execute()
        jobs: list[Job] = []
        prefix = self.keys.job("")
        for key, row in zip(hash_keys, rows, strict=True):
            if row and row.get("status") not in ("succeeded", "failed", "cancelled"):
                jobs.append(decode_job(key.removeprefix(prefix), row))
            else:
                self.redis.zrem(self.keys.active, key)
        return jobs

    def is_cancelled(self, job_id: str) -> bool:
        status: str | None = self.redis.hget(self.keys.job(job_id), "status")
        return status == JobStatus.cancelled.value

    def events(self, job_id: str, after: str = "0-0", count: int = 1000) -> list[Event]:
        entries = self.redis.xrange(self.keys.events(job_id), min=f"({after}", count=count)
        return [decode_event(entry_id, fields) for entry_id, fields in entries]


class AsyncJobStore(_Scripts):
    """The same store for the gateway's event loop."""

    @classmethod
    def from_settings(cls, settings: Settings) -> "AsyncJobStore":
        return cls(async_client(settings.redis), settings.redis.key_prefix, settings.jobs)

    async def create(self, job: Job) -> Job:
        await self.create_together([job], [])
        return job

    async def create_together(self, jobs: Sequence[Job], messages: Sequence[Message]) -> None:
        """Store new jobs and push their messages, all in one transaction: every job with its
        message, or none of them."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for job in jobs:
                _queue_create(pipe, self.keys, job, self.settings)
            for message in messages:
                pipe.lpush(message.queue, message.body)
            await pipe.execute()

    async def get(self, job_id: str) -> Job:
        return decode_job(job_id, await self.redis.hgetall(self.keys.job(job_id)))

    async def recent(
        self,
        type_: JobType | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        owner: str | None = None,
    ) -> list[Job]:
        """The newest jobs; with `owner`, only the jobs that key created."""
        args = recent_args(self.keys, type_, status, limit, owner)
        rows = await self._recent(keys=[self.keys.index], args=args)
        return [decode_job("", _pairs(row)) for row in rows]

    async def _apply(self, job_id: str, change: _Change) -> None:
        try:
            await self._emit(keys=self.keys.both(job_id), args=change.argv(self.settings))
        except redis.ResponseError as exc:
            raise emit_error(job_id, exc) from None

    async def cancel(self, job_id: str) -> Job:
        await self._apply(job_id, _cancelled())
        return await self.get(job_id)

    async def fail(self, job_id: str, error: ErrorInfo) -> None:
        await self._apply(job_id, _failed(error))

    async def events(
        self, job_id: str, after: str = "0-0", until: str = "+", count: int = 1000
    ) -> list[Event]:
        """Events after `after` up to and including `until`, without waiting."""
        entries = await self.redis.xrange(
            self.keys.events(job_id), min=f"({after}", max=until, count=count
        )
        return [decode_event(entry_id, fields) for entry_id, fields in entries]
