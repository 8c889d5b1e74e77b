"""Event notifications of S3 (through SQS, bare or via SNS) and of SeaweedFS's filer webhook."""

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.contracts.errors import MalformedEvent
from workers.listener.events import ObjectEvent, parse_notification, parse_seaweedfs


def s3_record(key: str, name: str = "ObjectCreated:Put", **object_fields: Any) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-26T10:31:07.123Z",
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "uploads",
            "bucket": {"name": "agnews", "arn": "arn:aws:s3:::agnews"},
            "object": {"key": key, **object_fields},
        },
    }


def notification(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def test_a_put_becomes_one_created_event_with_its_version() -> None:
    body = notification(
        s3_record(
            "incoming/x/archive.zip",
            size=51153,
            eTag="202b3840d24ff001061372ab171da160",
            versionId="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd",
            sequencer="0055AED6DCD90281E5",
        )
    )
    [event] = parse_notification(body)
    assert event == ObjectEvent(
        name="ObjectCreated:Put",
        bucket="agnews",
        key="incoming/x/archive.zip",
        size=51153,
        etag="202b3840d24ff001061372ab171da160",
        version_id="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd",
        sequencer="0055AED6DCD90281E5",
        event_time=datetime(2026, 11, 26, 10, 31, 7, 123000, tzinfo=UTC),
    )
    assert event.created
    assert event.url == "s3://agnews/incoming/x/archive.zip"
    assert event.source().model_dump(mode="json") == {
        "bucket": "agnews",
        "key": "incoming/x/archive.zip",
        "size": 51153,
        "etag": "202b3840d24ff001061372ab171da160",
        "version_id": "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd",
        "sequencer": "0055AED6DCD90281E5",
        "event_time": "2026-11-26T10:31:07.123000Z",
    }


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("incoming/my+upload/archive.zip", "incoming/my upload/archive.zip"),
        ("incoming%2Fa%2Fb/archive.zip", "incoming/a/b/archive.zip"),
        ("incoming/caf%C3%A9+%2B+1/archive.zip", "incoming/café + 1/archive.zip"),
    ],
)
def test_keys_are_url_decoded(encoded: str, decoded: str) -> None:
    [event] = parse_notification(notification(s3_record(encoded)))
    assert event.key == decoded


def test_a_multipart_upload_is_a_created_event() -> None:
    body = notification(
        s3_record(
            "incoming/big/archive.zip",
            "ObjectCreated:CompleteMultipartUpload",
            size=12582912,
            eTag="2f5ce8cc79b99d46182a52871060d345-3",
            sequencer="0062E99A88DC407460",
        )
    )
    [event] = parse_notification(body)
    assert event.created
    assert event.name == "ObjectCreated:CompleteMultipartUpload"
    assert event.etag == "2f5ce8cc79b99d46182a52871060d345-3"


def test_a_delete_is_an_event_but_not_a_creation() -> None:
    [event] = parse_notification(
        notification(s3_record("incoming/x/archive.zip", "s3:ObjectRemoved:Delete"))
    )
    assert event.name == "ObjectRemoved:Delete"
    assert not event.created


def test_every_record_of_a_message_is_read() -> None:
    body = notification(s3_record("incoming/a/archive.zip"), s3_record("incoming/b/archive.zip"))
    assert [event.key for event in parse_notification(body)] == [
        "incoming/a/archive.zip",
        "incoming/b/archive.zip",
    ]


def test_the_test_event_sent_on_configuration_has_no_events() -> None:
    body = json.dumps(
        {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2026-11-26T10:31:07.000Z",
            "Bucket": "agnews",
            "RequestId": "5582815E1AEA5ADF",
            "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
        }
    )
    assert parse_notification(body) == []


def test_an_sns_envelope_is_opened() -> None:
    inner = notification(s3_record("incoming/sns/archive.zip", sequencer="01"))
    body = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
            "Message": inner,
        }
    )
    [event] = parse_notification(body)
    assert event.key == "incoming/sns/archive.zip"


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        b"\xff\xfe",
        "[]",
        "{}",
        '{"Records": "no"}',
        '{"Records": [{"eventName": "ObjectCreated:Put"}]}',
        '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}',
        '{"Message": "not json either"}',
    ],
)
def test_malformed_bodies_raise_a_typed_error(body: str | bytes) -> None:
    with pytest.raises(MalformedEvent) as raised:
        parse_notification(body)
    assert raised.value.status_code == 422
    assert raised.value.code == "malformed_event"


def test_one_version_has_one_identity_and_another_version_another() -> None:
    first = ObjectEvent(name="ObjectCreated:Put", bucket="b", key="k", version_id="v1")
    assert first.identity() == first.model_copy(update={"sequencer": "02"}).identity()
    assert first.identity() != first.model_copy(update={"version_id": "v2"}).identity()
    unversioned = ObjectEvent(name="ObjectCreated:Put", bucket="b", key="k", sequencer="01")
    assert unversioned.identity() != unversioned.model_copy(update={"sequencer": "02"}).identity()
    bare = ObjectEvent(name="ObjectCreated:Put", bucket="b", key="k", etag="e", size=1)
    assert bare.identity() != bare.model_copy(update={"etag": "f"}).identity()
    later = bare.model_copy(update={"event_time": datetime(2026, 11, 26, tzinfo=UTC)})
    assert bare.identity() == later.identity()


# A SeaweedFS filer webhook, as weed 4.48 posts it for an upload into the bucket `agnews`.
SEAWEEDFS_CREATE = {
    "event_type": "create",
    "key": "/buckets/agnews/incoming/x/archive.zip",
    "message": {
        "new_entry": {
            "name": "archive.zip",
            "chunks": [
                {
                    "size": 51153,
                    "modified_ts_ns": 1795676477261116506,
                    "e_tag": "ICs4QNJP8AEGE3KrFx2hYA==",
                    "fid": {"volume_id": 4, "file_key": 1, "cookie": 3045664485},
                }
            ],
            "attributes": {
                "file_size": 51153,
                "mtime": 1795676477,
                "file_mode": 432,
                "crtime": 1795676477,
                "mime": "application/zip",
                "md5": "ICs4QNJP8AEGE3KrFx2hYA==",
                "inode": 2134417204466266113,
            },
            "extended": {
                "Seaweed-X-Amz-ETag": "MjAyYjM4NDBkMjRmZjAwMTA2MTM3MmFiMTcxZGExNjA=",
                "Seaweed-X-Amz-Owner": "YWRtaW4=",
            },
        },
        "delete_chunks": True,
        "new_parent_path": "/buckets/agnews/incoming/x",
        "signatures": [-1217873777],
    },
}


def entry(written_ns: int, md5: bytes = b"\x01" * 16, **extended: bytes) -> dict[str, Any]:
    return {
        "name": "archive.zip",
        "chunks": [{"size": 2, "modified_ts_ns": written_ns}],
        "attributes": {
            "file_size": 2,
            "mtime": written_ns // 10**9,
            "md5": base64.b64encode(md5).decode(),
        },
        "extended": {name: base64.b64encode(value).decode() for name, value in extended.items()},
    }


def hook(event_type: str, key: str, **message: Any) -> str:
    return json.dumps({"event_type": event_type, "key": key, "message": message})


def test_a_webhook_upload_becomes_the_same_record_as_an_s3_event() -> None:
    event = parse_seaweedfs(json.dumps(SEAWEEDFS_CREATE))
    assert event == ObjectEvent(
        name="ObjectCreated:Put",
        bucket="agnews",
        key="incoming/x/archive.zip",
        size=51153,
        etag="202b3840d24ff001061372ab171da160",
        sequencer=f"{1795676477261116506:016X}",
        event_time=datetime.fromtimestamp(1795676477, UTC),
    )


def test_a_webhook_key_with_spaces_is_taken_as_is() -> None:
    body = hook("create", "/buckets/agnews/incoming/my upload/archive.zip", new_entry=entry(5))
    event = parse_seaweedfs(body)
    assert event is not None
    assert event.key == "incoming/my upload/archive.zip"


def test_the_etag_falls_back_to_the_md5() -> None:
    event = parse_seaweedfs(hook("create", "/buckets/b/k", new_entry=entry(5, md5=b"\xab" * 16)))
    assert event is not None
    assert event.etag == "ab" * 16


def test_a_completed_multipart_upload_is_named_so() -> None:
    written = entry(7, **{"Seaweed-X-Amz-ETag": b"2f5c-3", "X-Seaweedfs-Upload-Id": b"u1"})
    event = parse_seaweedfs(
        hook("create", "/buckets/agnews/incoming/m/archive.zip", new_entry=written)
    )
    assert event is not None
    assert event.name == "ObjectCreated:CompleteMultipartUpload"
    assert event.etag == "2f5c-3"


def test_an_overwrite_is_a_new_object_but_new_metadata_is_not() -> None:
    key = "/buckets/agnews/incoming/x/archive.zip"
    overwrite = parse_seaweedfs(hook("update", key, old_entry=entry(1), new_entry=entry(2)))
    assert overwrite is not None
    assert overwrite.created
    assert overwrite.sequencer == f"{2:016X}"
    tagged = entry(2, **{"X-Amz-Tagging-k": b"v"})
    assert parse_seaweedfs(hook("update", key, old_entry=entry(2), new_entry=tagged)) is None


@pytest.mark.parametrize(
    "body",
    [
        hook(
            "create",
            "/buckets/agnews/incoming",
            new_entry={"name": "incoming", "is_directory": True},
        ),
        hook("delete", "/buckets/agnews/incoming/x/archive.zip", old_entry=entry(1)),
        hook("rename", "/buckets/agnews/incoming/x/archive.zip", new_entry=entry(1)),
        hook("create", "/topics/.system/log/2026-11-26", new_entry=entry(1)),
        hook("create", "/buckets/agnews", new_entry=entry(1)),
    ],
)
def test_directories_deletes_renames_and_files_outside_buckets_are_not_objects(body: str) -> None:
    assert parse_seaweedfs(body) is None


@pytest.mark.parametrize(
    "body", ["", "{}", '{"event_type": "create"}', '{"key": "/x", "message": 1}']
)
def test_malformed_webhooks_raise_a_typed_error(body: str) -> None:
    with pytest.raises(MalformedEvent):
        parse_seaweedfs(body)
