"""Changes to a job, as the arguments of one `EMIT` script run, and what a refusal means."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import redis
from pydantic import BaseModel

from shared.contracts.errors import ErrorInfo, JobCancelled, JobEnded, NotFound
from shared.contracts.jobs import EventType, JobStatus
from shared.contracts.results import JobResult
from shared.contracts.times import utcnow
from shared.jobstore.codec import JSON_FIELDS, encoded, encoded_data, stamp
from shared.settings import JobSettings


class Change:
    """Hash fields to set and events to append, in one `EMIT` run."""

    def __init__(self, status: JobStatus | None = None) -> None:
        self.status = status
        self.fields: dict[str, str] = {"updated_at": stamp(utcnow())}
        self.events: list[tuple[EventType, str]] = []
        if status is not None:
            self.event(EventType.status, {"status": status.value})

    def set(self, name: str, value: Any) -> "Change":
        if isinstance(value, datetime):
            self.fields[name] = stamp(value)
        elif name in JSON_FIELDS:
            self.fields[name] = encoded(value)
        else:
            self.fields[name] = str(value)
        return self

    def event(self, type_: EventType, data: Mapping[str, Any] | BaseModel) -> "Change":
        body = encoded(data) if isinstance(data, BaseModel) else encoded_data(data)
        self.events.append((type_, body))
        return self

    def ending(self, name: str, type_: EventType, value: BaseModel) -> "Change":
        """Set the job's `name` (result or error) and append it as its event: one encoding."""
        body = encoded(value)
        self.fields[name] = body
        self.events.append((type_, body))
        return self

    def argv(self, settings: JobSettings) -> list[str]:
        args = [
            str(settings.event_stream_maxlen),
            str(settings.ttl_s),
            self.status.value if self.status else "",
            str(settings.answers_maxlen),
            str(len(self.fields)),
        ]
        for name, value in self.fields.items():
            args += [name, value]
        for type_, data in self.events:
            args += [type_.value, data]
        return args


def started() -> Change:
    return Change(JobStatus.running).set("started_at", utcnow())


def succeeded(result: JobResult) -> Change:
    return (
        Change(JobStatus.succeeded)
        .set("finished_at", utcnow())
        .ending("result", EventType.result, result)
    )


def failed(error: ErrorInfo, status: JobStatus = JobStatus.failed) -> Change:
    return Change(status).set("finished_at", utcnow()).ending("error", EventType.error, error)


def progressed(data: Mapping[str, Any]) -> Change:
    return Change().set("progress", dict(data)).event(EventType.progress, data)


def cancelled() -> Change:
    return failed(
        ErrorInfo(code=JobCancelled.code, message="The job was cancelled by request."),
        JobStatus.cancelled,
    )


def refusal(job_id: str, exc: redis.ResponseError) -> Exception:
    """What a refused `EMIT` means: the job is gone, or has already ended."""
    reason = str(exc)
    if reason.startswith("missing"):
        return NotFound(f"job {job_id} does not exist or has expired")
    if reason.startswith("ended:"):
        status = reason.removeprefix("ended:")
        ended = JobCancelled if status == JobStatus.cancelled.value else JobEnded
        return ended(f"job {job_id} has already ended ({status})", details={"status": status})
    return exc
