"""Feedback in S3: one small JSON object per cleaned text per day, written before the API answers.

`{feedback_prefix}{YYYY-MM-DD}/{sha256[:32]}.json`, the sha256 of the cleaned text: two
spellings of one text that clean alike are one object a day, the latest feedback overwriting the
earlier; on another day the text gets another object, and readers take the latest (`all`).
Nothing expires them: they are training data (the bucket's rule for noncurrent versions removes
overwritten ones).

Only boto3 here, so the gateway stores and lists feedback without the ML stack. Listings read
keys (and their LastModified) first and fetch only the objects they return.
"""

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from shared.contracts.feedback import Feedback
from shared.registry import read_object
from shared.settings import StorageSettings
from shared.storage import s3_client, s3_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Characters of the sha256 a key holds: 128 bits, no collision among any number of texts.
KEY_CHARS = 32
_FETCHERS = 8


def text_sha256(cleaned: str) -> str:
    return hashlib.sha256(cleaned.encode("utf-8")).hexdigest()


class FeedbackStore:
    def __init__(self, s3: "S3Client", storage: StorageSettings) -> None:
        self.s3 = s3
        self.bucket = storage.bucket
        self.prefix = storage.feedback_prefix

    @classmethod
    def from_settings(cls, storage: StorageSettings) -> "FeedbackStore":
        return cls(s3_client(storage), storage)

    def key(self, record: Feedback) -> str:
        day = record.at.astimezone(UTC).date()
        return f"{self.prefix}{day.isoformat()}/{record.text_sha256[:KEY_CHARS]}.json"

    def put(self, record: Feedback) -> str:
        """Store the record (the day's earlier feedback on its text is replaced); its key."""
        key = self.key(record)
        s3_retry(self.s3.put_object)(
            Bucket=self.bucket,
            Key=key,
            Body=record.model_dump_json(indent=2).encode(),
            ContentType="application/json",
        )
        return key

    def all(self) -> list[Feedback]:
        """Every text's latest feedback, newest first."""
        return self._latest(self._read(key for key, _ in self._keys()))

    def recent(self, limit: int) -> list[Feedback]:
        """The `limit` texts given feedback last, each with its latest, newest first."""
        newest: dict[str, tuple[datetime, str]] = {}
        for day in self.days(newest_first=True):
            for key, modified in self._keys(day):
                text = self._text_of(key)
                if text not in newest or newest[text][0] < modified:
                    newest[text] = (modified, key)
            # Older days hold only older objects: once `limit` texts are found, none can enter.
            if len(newest) >= limit:
                break
        picked = sorted(newest.values(), reverse=True)[:limit]
        return self._latest(self._read(key for _, key in picked))[:limit]

    def count_since(self, when: datetime) -> int:
        """Texts given feedback since `when`."""
        return len(self.texts_since(when))

    def texts_since(self, when: datetime) -> set[str]:
        """The key part (the first KEY_CHARS of the sha256) of every text given feedback since
        `when`, read from the listing alone (whose times are whole seconds)."""
        since = when.astimezone(UTC).replace(microsecond=0)
        return {
            self._text_of(key)
            for day in self.days(newest_first=True)
            if day >= since.date()
            for key, modified in self._keys(day)
            if modified >= since
        }

    def days(self, *, newest_first: bool = False) -> list[date]:
        """The days that hold feedback."""
        found: list[date] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                name = common.get("Prefix", "")[len(self.prefix) :].rstrip("/")
                try:
                    found.append(date.fromisoformat(name))
                except ValueError:
                    continue
        return sorted(found, reverse=newest_first)

    def _keys(self, day: date | None = None) -> Iterator[tuple[str, datetime]]:
        prefix = self.prefix if day is None else f"{self.prefix}{day.isoformat()}/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = item.get("Key", "")
                if key.endswith(".json"):
                    yield key, item.get("LastModified", datetime.min.replace(tzinfo=UTC))

    def _text_of(self, key: str) -> str:
        return key.rsplit("/", 1)[-1].removesuffix(".json")

    def _read(self, keys: Iterable[str]) -> list[Feedback]:
        def fetch(key: str) -> Feedback | None:
            body = read_object(self.s3, self.bucket, key)
            return None if body is None else Feedback.model_validate_json(body)

        with ThreadPoolExecutor(_FETCHERS) as pool:
            return [record for record in pool.map(fetch, list(keys)) if record is not None]

    @staticmethod
    def _latest(records: Iterable[Feedback]) -> list[Feedback]:
        latest: dict[str, Feedback] = {}
        for record in records:
            known = latest.get(record.text_sha256)
            if known is None or known.at < record.at:
                latest[record.text_sha256] = record
        return sorted(latest.values(), key=lambda record: record.at, reverse=True)
