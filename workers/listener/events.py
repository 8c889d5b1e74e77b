"""Storage event notifications, in the formats stores send them, as one typed record.

`parse_notification` reads the S3 format (an SQS message body, possibly wrapped by SNS);
`parse_seaweedfs` reads a SeaweedFS filer webhook. Both give `ObjectEvent`s, named as S3 names
them, so one trigger handles events from either.
"""

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contracts.errors import MalformedEvent
from shared.contracts.jobs import ObjectVersion
from shared.storage import s3_url

# Where a SeaweedFS filer keeps the S3 gateway's buckets.
SEAWEEDFS_BUCKETS = "/buckets/"

M = TypeVar("M", bound=BaseModel)


class ObjectEvent(ObjectVersion):
    """One event about one object; `key` is decoded, `name` is S3's (`ObjectCreated:Put`)."""

    model_config = ConfigDict(frozen=True)

    name: str

    @property
    def created(self) -> bool:
        return self.name.startswith("ObjectCreated:")

    @property
    def url(self) -> str:
        return s3_url(self.bucket, self.key)

    def identity(self) -> str:
        """What one version of the object is known by, in every delivery of its event."""
        where = f"{self.bucket}/{self.key}"
        if self.version_id:
            return f"{where}?version={self.version_id}"
        if self.sequencer:
            return f"{where}?sequencer={self.sequencer}"
        # Without either, the content: stores that send neither may also send two events for one
        # write (moto does for multipart uploads), and those differ only in their time.
        return f"{where}?etag={self.etag}&size={self.size}"

    def source(self) -> ObjectVersion:
        """The object version, as a pipeline job records what started it."""
        return ObjectVersion.model_validate(self.model_dump(exclude={"name"}))


# The S3 notification format (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
# notification-content-structure.html).


class _S3Bucket(BaseModel):
    name: str


class _S3Object(BaseModel):
    key: str
    size: int | None = None
    etag: str | None = Field(default=None, alias="eTag")
    version_id: str | None = Field(default=None, alias="versionId")
    sequencer: str | None = None


class _S3Entity(BaseModel):
    bucket: _S3Bucket
    object_: _S3Object = Field(alias="object")


class _S3Record(BaseModel):
    event_name: str = Field(alias="eventName", min_length=1)
    event_time: datetime | None = Field(default=None, alias="eventTime")
    s3: _S3Entity

    def event(self) -> ObjectEvent:
        item = self.s3.object_
        return ObjectEvent(
            name=self.event_name.removeprefix("s3:"),
            bucket=self.s3.bucket.name,
            key=unquote_plus(item.key),
            size=item.size,
            etag=item.etag.strip('"') if item.etag else None,
            version_id=item.version_id,
            sequencer=item.sequencer,
            event_time=self.event_time,
        )


class _S3Notification(BaseModel):
    records: list[_S3Record] = Field(alias="Records")


def parse_notification(body: str | bytes) -> list[ObjectEvent]:
    """The events of an S3 notification, bare or inside an SNS envelope; none for a test event."""
    document = _json(body)
    if isinstance(document, dict) and isinstance(document.get("Message"), str):
        document = _json(document["Message"])
    if isinstance(document, dict) and document.get("Event") == "s3:TestEvent":
        return []
    notification = _validate(_S3Notification, document)
    return [record.event() for record in notification.records]


# The SeaweedFS filer's webhook (its `notification.webhook`), one entry change per request.


class _Chunk(BaseModel):
    modified_ts_ns: int = 0


class _Attributes(BaseModel):
    file_size: int = 0
    mtime: int = 0
    md5: str | None = None


class _Entry(BaseModel):
    is_directory: bool = False
    chunks: list[_Chunk] = Field(default_factory=list)
    attributes: _Attributes = Field(default_factory=_Attributes)
    extended: dict[str, str] = Field(default_factory=dict)

    @property
    def written_ns(self) -> int | None:
        """When the content was last written: a new upload changes it, new metadata does not."""
        return max((chunk.modified_ts_ns for chunk in self.chunks), default=None)

    @property
    def etag(self) -> str | None:
        stored = _unbase64(self.extended.get("Seaweed-X-Amz-ETag"))
        if stored is not None:
            return stored.decode(errors="replace").strip('"')
        md5 = _unbase64(self.attributes.md5)
        return md5.hex() if md5 is not None else None


class _Message(BaseModel):
    old_entry: _Entry | None = None
    new_entry: _Entry | None = None


class _Webhook(BaseModel):
    event_type: str
    key: str
    message: _Message


def parse_seaweedfs(body: str | bytes) -> ObjectEvent | None:
    """The object a filer webhook reports written; None for directories, metadata and deletes."""
    hook = _validate(_Webhook, _json(body))
    entry, old = hook.message.new_entry, hook.message.old_entry
    if hook.event_type not in ("create", "update") or entry is None or entry.is_directory:
        return None
    if old is not None and (old.written_ns, old.etag) == (entry.written_ns, entry.etag):
        return None
    if not hook.key.startswith(SEAWEEDFS_BUCKETS):
        return None
    bucket, _, key = hook.key.removeprefix(SEAWEEDFS_BUCKETS).partition("/")
    if not key:
        return None
    multipart = "X-Seaweedfs-Upload-Id" in entry.extended
    written = entry.written_ns
    return ObjectEvent(
        name="ObjectCreated:CompleteMultipartUpload" if multipart else "ObjectCreated:Put",
        bucket=bucket,
        key=key,
        size=entry.attributes.file_size,
        etag=entry.etag,
        sequencer=f"{written:016X}" if written else None,
        event_time=datetime.fromtimestamp(entry.attributes.mtime, UTC),
    )


def _json(body: str | bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"event body is not JSON: {exc}", details=_excerpt(body)) from None


def _validate(model: type[M], document: Any) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise MalformedEvent(
            f"not a storage event notification: {problems}",
            details=_excerpt(json.dumps(document, default=str)),
        ) from None


def _excerpt(body: str | bytes, limit: int = 300) -> dict[str, Any]:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    return {"body": text[:limit]}


def _unbase64(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        return None
