"""The promotion holdout: the test set every candidate and production are compared on.

The server owns it; no upload can change it. It is a CSV in the test.csv layout: the object at
`AGNEWS_HOLDOUT_KEY` when that is set, else the test.csv of the first accepted dataset. Pinning
copies it to `{holdout_prefix}{sha256}/test.csv` and writes `{holdout_prefix}holdout.json` once,
by conditional put (two first datasets: one wins, the other reads the winner); every reader
checks the copy's sha256. Setting another key pins that one in its place; nothing else does.

A version's score on the holdout is kept at `{holdout_prefix}{sha256}/scores/{version}.json`:
versions and holdouts never change, so production is scored once per holdout.
"""

import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.datasets import dataset_key
from pipeline.evaluate import evaluate
from pipeline.ingest import Row, extract_member, fetch_archive, read_csv
from pipeline.predictor import load_version
from pipeline.report import Reporter
from pipeline.validate import HoldoutTexts
from shared.contracts.errors import Conflict, DatasetIntegrityError, DatasetInvalid
from shared.contracts.jobs import EventType
from shared.contracts.results import Holdout, Metrics
from shared.digests import file_sha256
from shared.registry import put_if, read_object, read_with_etag
from shared.settings import Settings
from shared.storage import s3_client, s3_retry, s3_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HOLDOUT_RECORD = "holdout.json"
HOLDOUT_NAME = "test.csv"
_ATTEMPTS = 5

log = logging.getLogger(__name__)


def record_key(settings: Settings) -> str:
    return f"{settings.storage.holdout_prefix}{HOLDOUT_RECORD}"


def copy_key(sha256: str, settings: Settings) -> str:
    return f"{settings.storage.holdout_prefix}{sha256}/{HOLDOUT_NAME}"


def score_key(sha256: str, version: str, settings: Settings) -> str:
    return f"{settings.storage.holdout_prefix}{sha256}/scores/{version}.json"


def holdout_dir(settings: Settings) -> Path:
    return settings.run.data_dir / "holdout"


def _scratch(settings: Settings) -> tempfile.TemporaryDirectory[str]:
    root = holdout_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=root)


def current_holdout(settings: Settings) -> Holdout | None:
    """The pinned holdout, or None before the first dataset; a configured key not yet pinned is
    pinned first."""
    s3 = s3_client(settings.storage)
    for _ in range(_ATTEMPTS):
        record, etag = _read(s3, settings)
        if settings.archive.holdout_key is None:
            return record
        source = s3_url(settings.storage.bucket, settings.archive.holdout_key)
        if record is not None and record.source == source:
            return record
        with _scratch(settings) as scratch:
            local = fetch_archive(source, settings, Path(scratch))
            pinned = _pin(s3, settings, local, source, etag)
        if pinned is not None:
            return pinned
    raise Conflict("holdout.json kept changing while pinning the holdout; try again")


def pin_dataset_test(archive: Path, dataset_sha256: str, settings: Settings) -> Holdout:
    """Pin this dataset's test.csv unless a holdout is pinned already; the holdout in force."""
    s3 = s3_client(settings.storage)
    record, etag = _read(s3, settings)
    if record is not None:
        return record
    source = dataset_test_source(dataset_sha256, settings)
    with _scratch(settings) as scratch:
        local = extract_member(archive, HOLDOUT_NAME, settings, Path(scratch) / HOLDOUT_NAME)
        pinned = _pin(s3, settings, local, source, etag)
    if pinned is not None:
        return pinned
    winner = _read(s3, settings)[0]
    if winner is None:
        raise Conflict("holdout.json changed while pinning the holdout; try again")
    return winner


def dataset_test_source(dataset_sha256: str, settings: Settings) -> str:
    """How a holdout taken from a stored dataset's test.csv names its source."""
    return (
        f"{s3_url(settings.storage.bucket, dataset_key(dataset_sha256, settings))}#{HOLDOUT_NAME}"
    )


def ensure_holdout(settings: Settings, dataset_sha256: str) -> Holdout:
    """The holdout in force; where none is pinned yet (a model made before holdouts), the
    test.csv of the stored dataset `dataset_sha256` is pinned."""
    holdout = current_holdout(settings)
    if holdout is not None:
        return holdout
    url = s3_url(settings.storage.bucket, dataset_key(dataset_sha256, settings))
    with _scratch(settings) as scratch:
        archive = fetch_archive(url, settings, Path(scratch))
        return pin_dataset_test(archive, dataset_sha256, settings)


def holdout_rows(holdout: Holdout, settings: Settings) -> list[Row]:
    """The holdout's rows, from its pinned copy, checked against its sha256 and row count."""
    path = holdout_dir(settings) / holdout.sha256 / HOLDOUT_NAME
    if not (path.is_file() and file_sha256(path) == holdout.sha256):
        fetch_archive(s3_url(settings.storage.bucket, holdout.key), settings, path.parent)
        if file_sha256(path) != holdout.sha256:
            path.unlink()
            raise DatasetIntegrityError(
                f"the holdout copy {holdout.key} does not have the sha256 it is pinned by "
                f"({holdout.sha256})",
                details={"key": holdout.key, "sha256": holdout.sha256},
            )
    rows = read_csv(path, settings).rows
    if len(rows) != holdout.rows:
        raise DatasetIntegrityError(
            f"the holdout {holdout.sha256[:12]} reads as {len(rows)} rows, not {holdout.rows}",
            details={"sha256": holdout.sha256},
        )
    return rows


def holdout_texts(holdout: Holdout, settings: Settings) -> HoldoutTexts:
    return HoldoutTexts.of(holdout.sha256, holdout_rows(holdout, settings))


def own_test_texts(archive: Path, settings: Settings) -> HoldoutTexts:
    """The texts of an archive's test.csv, as the holdout it would become if pinned."""
    with _scratch(settings) as scratch:
        local = extract_member(archive, HOLDOUT_NAME, settings, Path(scratch) / HOLDOUT_NAME)
        return HoldoutTexts.of(file_sha256(local), read_csv(local, settings).rows)


class HoldoutScores:
    """Versions' metrics on one holdout: from the cache beside it, else evaluated and cached."""

    def __init__(self, holdout: Holdout, settings: Settings, reporter: Reporter) -> None:
        self.holdout, self.settings, self.reporter = holdout, settings, reporter
        self._rows: list[Row] | None = None

    def of(self, version: str, own: Metrics | None = None) -> Metrics:
        """`own`: the version's metrics.json, which are its holdout score when its dataset is the
        one the holdout was taken from (the same rows)."""
        s3 = s3_client(self.settings.storage)
        key = score_key(self.holdout.sha256, version, self.settings)
        cached = read_object(s3, self.settings.storage.bucket, key)
        if cached is not None:
            return Metrics.model_validate_json(cached)
        if (
            own is not None
            and own.dataset_sha256 is not None
            and self.holdout.source == dataset_test_source(own.dataset_sha256, self.settings)
            and own.n == self.holdout.rows
        ):
            metrics = own.model_copy(update={"dataset_sha256": self.holdout.sha256})
            metrics.split = "holdout"
            self._keep(s3, key, metrics)
            return metrics
        self.reporter.event(
            EventType.log, {"message": f"scoring {version} on {self.holdout.describe()}"}
        )
        if self._rows is None:
            self._rows = holdout_rows(self.holdout, self.settings)
        metrics = evaluate(
            load_version(version, self.settings),
            self._rows,
            self.settings,
            self.reporter,
            dataset_sha256=self.holdout.sha256,
            split="holdout",
        )
        self._keep(s3, key, metrics)
        return metrics

    @s3_retry
    def _keep(self, s3: "S3Client", key: str, metrics: Metrics) -> None:
        s3.put_object(
            Bucket=self.settings.storage.bucket,
            Key=key,
            Body=metrics.model_dump_json(indent=2).encode(),
            ContentType="application/json",
        )


def _read(s3: "S3Client", settings: Settings) -> tuple[Holdout | None, str | None]:
    body, etag = read_with_etag(s3, settings.storage.bucket, record_key(settings))
    return (None, None) if body is None else (Holdout.model_validate_json(body), etag)


@s3_retry
def _upload_copy(s3: "S3Client", bucket: str, local: Path, key: str) -> None:
    s3.upload_file(str(local), bucket, key, ExtraArgs={"ContentType": "text/csv"})


def _pin(
    s3: "S3Client", settings: Settings, local: Path, source: str, etag: str | None
) -> Holdout | None:
    """Copy the CSV to its sha256 key and point holdout.json at it, if holdout.json still has
    `etag`; None when another writer changed it first."""
    rows = read_csv(local, settings).rows
    if not rows:
        raise DatasetInvalid(
            f"the holdout {source} has no usable rows: it must be a CSV in the test.csv layout",
            details={"rule": "holdout_empty", "source": source},
        )
    sha256 = file_sha256(local)
    holdout = Holdout(
        sha256=sha256,
        rows=len(rows),
        key=copy_key(sha256, settings),
        source=source,
        pinned_at=datetime.now(UTC),
    )
    _upload_copy(s3, settings.storage.bucket, local, holdout.key)
    body = holdout.model_dump_json(indent=2).encode()
    if not put_if(s3, settings.storage.bucket, record_key(settings), body, etag):
        return None
    log.info("pinned %s from %s", holdout.describe(), source)
    return holdout
