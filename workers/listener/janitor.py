"""The bucket's lifecycle where the store has none of its own (the local stack, docker compose):
finished upload tickets and old archives leave incoming/, a training job's checkpoints leave
checkpoints/ once the job has ended or expired, and batch jobs' files leave predictions/ past
their retention. On AWS the bucket's lifecycle rules do this (deploy/cloudformation/data.yaml)
and the janitor stays off."""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.contracts.errors import NotFound
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.storage import is_ticket_key
from workers.listener.trigger import PipelineTrigger

log = logging.getLogger(__name__)


@dataclass
class Swept:
    incoming: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)


def sweep_bucket(trigger: PipelineTrigger, s3: Any, now: datetime | None = None) -> Swept:
    settings, swept = trigger.settings, Swept()
    now = now or datetime.now(UTC)
    swept.incoming = _sweep_incoming(trigger, s3, now)
    swept.checkpoints = _sweep_checkpoints(trigger.store, s3, settings)
    swept.predictions = _sweep_predictions(s3, settings, now)
    if swept.incoming or swept.checkpoints or swept.predictions:
        log.info(
            "janitor: %d objects left incoming/, %d jobs' checkpoints left checkpoints/, "
            "%d objects left predictions/",
            len(swept.incoming),
            len(swept.checkpoints),
            len(swept.predictions),
        )
    return swept


def _sweep_incoming(trigger: PipelineTrigger, s3: Any, now: datetime) -> list[str]:
    """Objects older than the retention, and tickets whose pipeline has ended."""
    storage, listener = trigger.settings.storage, trigger.settings.listener
    oldest = now - timedelta(seconds=listener.incoming_retention_s)
    gone: list[str] = []
    for item in _listing(s3, storage.bucket, storage.incoming_prefix):
        key = item["Key"]
        ticket_done = is_ticket_key(key, storage) and _ended(trigger, key)
        if item["LastModified"] < oldest or ticket_done:
            gone.append(key)
    _delete(s3, storage.bucket, gone)
    return gone


def _ended(trigger: PipelineTrigger, key: str) -> bool:
    job_id = trigger.job_for(key)
    if job_id is None:
        return False
    try:
        return trigger.store.get(job_id).status.terminal
    except NotFound:
        return True


def _sweep_checkpoints(store: JobStore, s3: Any, settings: Settings) -> list[str]:
    """Each job's checkpoints/{job}/ once the job has ended (failed, cancelled) or expired."""
    storage = settings.storage
    gone: list[str] = []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=storage.bucket, Prefix=storage.checkpoints_prefix, Delimiter="/"
    )
    for page in pages:
        for common in page.get("CommonPrefixes", []):
            prefix = common["Prefix"]
            job_id = prefix[len(storage.checkpoints_prefix) :].rstrip("/")
            try:
                running = not store.get(job_id).status.terminal
            except NotFound:
                running = False
            if not running:
                keys = [item["Key"] for item in _listing(s3, storage.bucket, prefix)]
                _delete(s3, storage.bucket, keys)
                gone.append(job_id)
    return gone


def _sweep_predictions(s3: Any, settings: Settings, now: datetime) -> list[str]:
    """Batch jobs' files older than the retention: outputs, downloaded or not, and the parts a
    failed or cancelled job left (a running job's parts are younger)."""
    storage = settings.storage
    oldest = now - timedelta(seconds=settings.listener.predictions_retention_s)
    listed = _listing(s3, storage.bucket, storage.predictions_prefix)
    gone = [item["Key"] for item in listed if item["LastModified"] < oldest]
    _delete(s3, storage.bucket, gone)
    return gone


def _listing(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item for page in pages for item in page.get("Contents", [])]


def _delete(s3: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
