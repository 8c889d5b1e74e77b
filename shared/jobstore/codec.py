"""Jobs and events as their Redis hashes and stream entries hold them."""

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.contracts.errors import NotFound
from shared.contracts.jobs import Event, EventType, Job

DELIVERIES = "deliveries:"
JSON_FIELDS = ("params", "progress", "result", "error", "task")
TIME_FIELDS = ("created_at", "started_at", "finished_at", "updated_at", "heartbeat_at")


def stamp(moment: datetime) -> str:
    """A time as the records hold it: Unix seconds to the microsecond (shorter than ISO)."""
    return f"{moment.timestamp():.6f}"


def encoded(value: Any) -> str:
    return value.model_dump_json() if isinstance(value, BaseModel) else json.dumps(value)


def encoded_data(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), default=str)


def encode_job(job: Job) -> dict[str, str]:
    fields: dict[str, str] = {"id": job.id, "type": job.type.value, "status": job.status.value}
    if job.owner is not None:
        fields["owner"] = job.owner
    if job.params is not None:
        fields["params"] = job.params.model_dump_json(exclude_none=True)
    if job.texts is not None:
        fields["texts"] = str(job.texts)
    for name in ("progress", "result", "error", "task"):
        value = getattr(job, name)
        if value is not None:
            fields[name] = encoded(value)
    for name in TIME_FIELDS:
        value = getattr(job, name)
        if value is not None:
            fields[name] = stamp(value)
    return fields


def decode_job(job_id: str, fields: Mapping[str, str]) -> Job:
    if not fields:
        raise NotFound(f"job {job_id} does not exist or has expired")
    values: dict[str, Any] = {k: v for k, v in fields.items() if not k.startswith(DELIVERIES)}
    values["deliveries"] = {
        k.removeprefix(DELIVERIES): int(v) for k, v in fields.items() if k.startswith(DELIVERIES)
    }
    for name in JSON_FIELDS:
        if name in values:
            values[name] = json.loads(values[name])
    values.setdefault("params", None)
    return Job.model_validate(values)


def pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def decode_event(entry_id: str, fields: Mapping[str, str]) -> Event:
    return Event(id=entry_id, type=EventType(fields["type"]), data=json.loads(fields["data"]))
