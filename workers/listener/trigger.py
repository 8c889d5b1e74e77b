"""Object events to pipeline jobs: one job per uploaded object version, however often its event
arrives, and none lost when the listener dies half way.

Each object version has a record in Redis: the id of its job, set when the first delivery claims
it, and a flag set once the job's first task has been sent. A delivery that finds the flag is a
duplicate. One that finds the record without the flag finishes what an earlier delivery left:
it creates the job under the recorded id if it is missing, and sends its task. A short lease
keeps two deliveries handled at the same moment from both doing so.
"""

import hashlib
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from shared.broker import dispatch, make_celery
from shared.contracts.errors import NotFound
from shared.contracts.jobs import Job, JobType, PipelineParams, new_job_id
from shared.jobstore import JobStore
from shared.logs import bound
from shared.settings import Settings
from shared.storage import ARCHIVE_NAME, is_ticket_key
from workers.listener.events import ObjectEvent

log = logging.getLogger(__name__)

# The event name of an object found by the scan of incoming/ rather than by its event.
SCANNED = "ObjectCreated:Scan"

# Errors of the services the trigger writes to; a delivery that meets one is retried later.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OperationalError)

# KEYS: the version's record, its lease. ARGV: a new job id, record ttl (s), lease (ms), owner.
# Returns the recorded job id and what this delivery must do.
_CLAIM = """
if redis.call('HSETNX', KEYS[1], 'job', ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local job = redis.call('HGET', KEYS[1], 'job')
if redis.call('HGET', KEYS[1], 'dispatched') then return {job, 'dispatched'} end
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) then return {job, 'claimed'} end
return {job, 'busy'}
"""

# KEYS: the version's record, its lease. ARGV: owner, '1' when the job's task was sent.
_RELEASE = """
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'dispatched', '1') end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


class Outcome(StrEnum):
    started = "started"
    resumed = "resumed"
    duplicate = "duplicate"
    ignored = "ignored"
    busy = "busy"

    @property
    def acknowledged(self) -> bool:
        """Whether the delivery is done with; a busy one must come again."""
        return self is not Outcome.busy


@dataclass(frozen=True)
class Handled:
    outcome: Outcome
    job_id: str | None = None


_SAID = {
    Outcome.started: "%s: started pipeline job %s",
    Outcome.resumed: "%s: resumed pipeline job %s, which an earlier delivery began",
    Outcome.duplicate: "%s: pipeline job %s was already started for it",
    Outcome.busy: "%s: being handled elsewhere (job %s); to be delivered again",
}


class PipelineTrigger:
    def __init__(self, store: JobStore, app: Celery, settings: Settings) -> None:
        self.store = store
        self.app = app
        self.settings = settings
        self.redis: Any = store.redis
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._lock = threading.Lock()
        # Each incoming object's key: the etag and size its job was started for, and the job,
        # remembered as long as its deliveries are.
        self._objects = f"{settings.redis.key_prefix}:trigger:object:"

    @classmethod
    def from_settings(cls, settings: Settings) -> "PipelineTrigger":
        store = JobStore.from_settings(settings)
        return cls(store, make_celery(settings, "agnews-listener"), settings)

    def ignore_reason(self, event: ObjectEvent) -> str | None:
        if not event.created:
            return f"{event.name} is not an object creation"
        if event.bucket != self.settings.storage.bucket:
            return f"bucket {event.bucket} is not {self.settings.storage.bucket}"
        if not event.key.startswith(self.settings.storage.incoming_prefix):
            return f"not under {self.settings.storage.incoming_prefix}"
        if PurePosixPath(event.key).name != ARCHIVE_NAME:
            return f"not an {ARCHIVE_NAME}"
        return None

    def handle(self, event: ObjectEvent) -> Handled:
        """Start the pipeline job of an uploaded archive.zip, once per object version."""
        reason = self.ignore_reason(event)
        if reason is not None:
            # The store reports every object written (models, checkpoints): only uploads matter.
            uploaded = event.key.startswith(self.settings.storage.incoming_prefix)
            level = logging.INFO if uploaded else logging.DEBUG
            log.log(level, "ignored %s %s: %s", event.name, event.url, reason)
            return Handled(Outcome.ignored)
        with self._lock:
            return self._handle(event)

    def started_for(self, event: ObjectEvent) -> str | None:
        """The job already started for this object's content under its key, where one side is
        the scan: a listing names no version or sequencer, so the scan and the event of one
        upload are matched by key, etag and size. (Two events name their versions exactly.)"""
        recorded = self.redis.get(self._object(event))
        if recorded is None:
            return None
        content = json.loads(recorded)
        same = (content["etag"], content["size"]) == (_etag(event.etag), event.size)
        scanned = event.name == SCANNED or content.get("scanned", False)
        return str(content["job"]) if same and scanned else None

    def _handle(self, event: ObjectEvent) -> Handled:
        handled = self._start(event)
        with bound(job_id=handled.job_id):
            log.info(_SAID[handled.outcome], event.identity(), handled.job_id)
        return handled

    def _start(self, event: ObjectEvent) -> Handled:
        started = self.started_for(event)
        if started is not None:
            return Handled(Outcome.duplicate, started)
        keys = self._keys(event)
        owner = secrets.token_hex(8)
        candidate = new_job_id()
        lease_ms = max(1, int(self.settings.listener.lease_s * 1000))
        job_id, state = self._claim(
            keys=keys, args=[candidate, self.settings.listener.dedupe_ttl_s, lease_ms, owner]
        )
        if state == "dispatched":
            return Handled(Outcome.duplicate, job_id)
        if state == "busy":
            return Handled(Outcome.busy, job_id)
        try:
            job = self._job(job_id, event)
            dispatch(self.app, job)
        except Exception:
            self._release(keys=keys, args=[owner, ""])
            raise
        self._release(keys=keys, args=[owner, "1"])
        self.redis.set(
            self._object(event),
            _content(event, job_id),
            ex=self.settings.listener.dedupe_ttl_s,
        )
        return Handled(Outcome.started if job_id == candidate else Outcome.resumed, job_id)

    def _job(self, job_id: str, event: ObjectEvent) -> Job:
        """The version's job, created now unless an earlier delivery created it."""
        try:
            return self.store.get(job_id)
        except NotFound:
            params = PipelineParams(dataset=event.url, source=event.source())
            return self.store.create(Job(id=job_id, type=JobType.pipeline, params=params))

    def _object(self, event: ObjectEvent) -> str:
        return self._object_at(_where(event))

    def _object_at(self, where: str) -> str:
        return self._objects + hashlib.sha256(where.encode()).hexdigest()

    def job_for(self, key: str) -> str | None:
        """The pipeline job last started for an object under this key of the bucket, if any
        is remembered."""
        recorded = self.redis.get(self._object_at(f"{self.settings.storage.bucket}/{key}"))
        return None if recorded is None else str(json.loads(recorded)["job"])

    def _keys(self, event: ObjectEvent) -> list[str]:
        # An upload ticket's key starts one pipeline, whatever is written there again later.
        ticket = is_ticket_key(event.key, self.settings.storage)
        identity = f"{event.bucket}/{event.key}" if ticket else event.identity()
        digest = hashlib.sha256(identity.encode()).hexdigest()
        record = f"{self.settings.redis.key_prefix}:trigger:{digest}"
        return [record, f"{record}:lease"]


def _where(event: ObjectEvent) -> str:
    return f"{event.bucket}/{event.key}"


def _etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else etag


def _content(event: ObjectEvent, job_id: str) -> str:
    return json.dumps(
        {
            "etag": _etag(event.etag),
            "size": event.size,
            "job": job_id,
            "scanned": event.name == SCANNED,
        }
    )


def scan_incoming(trigger: PipelineTrigger, s3: Any, max_age_s: float) -> list[Handled]:
    """Start the pipeline of every archive.zip under incoming/ that has none: uploads whose
    events were missed (listener down past the store's retries, a lost SQS message). Objects
    older than `max_age_s` are left alone (their jobs may have expired from the store)."""
    settings = trigger.settings
    newest = datetime.now(UTC) - timedelta(seconds=max_age_s)
    handled: list[Handled] = []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.storage.bucket, Prefix=settings.storage.incoming_prefix
    )
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            if PurePosixPath(key).name != ARCHIVE_NAME or item["LastModified"] < newest:
                continue
            event = ObjectEvent(
                name=SCANNED,
                bucket=settings.storage.bucket,
                key=key,
                size=item.get("Size"),
                etag=_etag(item.get("ETag")),
                event_time=item["LastModified"],
            )
            if trigger.started_for(event) or _any_job_for(trigger, event):
                continue
            outcome = trigger.handle(event)
            if outcome.outcome is Outcome.started:
                log.warning(
                    "scan: %s had no pipeline job (missed event); started %s", key, outcome.job_id
                )
            handled.append(outcome)
    return handled


def _any_job_for(trigger: PipelineTrigger, event: ObjectEvent) -> bool:
    """A recent pipeline job started for this key and content (before objects were recorded)."""
    for job in trigger.store.recent(JobType.pipeline, limit=1000):
        source = getattr(job.params, "source", None)
        if (
            source is not None
            and (source.bucket, source.key) == (event.bucket, event.key)
            and (_etag(source.etag), source.size) == (event.etag, event.size)
        ):
            return True
    return False
