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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.datasets import dataset_key
from pipeline.evaluate import evaluate
from pipeline.ingest import Row, extract_member, fetch_archive, read_csv
from pipeline.predictor import load_version
from pipeline.report import Reporter
from pipeline.validate import HoldoutTexts
from shared.digests import file_sha256
from shared.errors import Conflict, DatasetIntegrityError, DatasetInvalid
from shared.jobs import EventType
from shared.registry import put_if, read_object, read_with_etag
from shared.results import Holdout, Metrics
from shared.settings import Settings
from shared.storage import s3_client, s3_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HOLDOUT_RECORD = "holdout.json"
HOLDOUT_NAME = "test.csv"
_ATTEMPTS = 5

log = logging.getLogger(__name__)


def record_key(settings: Settings) -> str:
    return f"{settings.holdout_prefix}{HOLDOUT_RECORD}"


def copy_key(sha256: str, settings: Settings) -> str:
    return f"{settings.holdout_prefix}{sha256}/{HOLDOUT_NAME}"


def score_key(sha256: str, version: str, settings: Settings) -> str:
    return f"{settings.holdout_prefix}{sha256}/scores/{version}.json"


def holdout_dir(settings: Settings) -> Path:
    return settings.data_dir / "holdout"


def current_holdout(settings: Settings) -> Holdout | None:
    """The pinned holdout, or None before the first dataset; a configured key not yet pinned is
    pinned first."""
    s3 = s3_client(settings)
    for _ in range(_ATTEMPTS):
        record, etag = _read(s3, settings)
        if settings.holdout_key is None:
            return record
        source = s3_url(settings.bucket, settings.holdout_key)
        if record is not None and record.source == source:
            return record
        local = fetch_archive(source, settings, holdout_dir(settings) / "configured")
        pinned = _pin(s3, settings, local, source, etag)
        local.unlink(missing_ok=True)
        if pinned is not None:
            return pinned
    raise Conflict("holdout.json kept changing while pinning the holdout; try again")


def pin_dataset_test(archive: Path, dataset_sha256: str, settings: Settings) -> Holdout:
    """Pin this dataset's test.csv unless a holdout is pinned already; the holdout in force."""
    s3 = s3_client(settings)
    record, etag = _read(s3, settings)
    if record is not None:
        return record
    local = extract_member(archive, HOLDOUT_NAME, settings, holdout_dir(settings) / "new.csv")
    source = f"{s3_url(settings.bucket, dataset_key(dataset_sha256, settings))}#test.csv"
    pinned = _pin(s3, settings, local, source, etag)
    local.unlink(missing_ok=True)
    if pinned is not None:
        return pinned
    winner = _read(s3, settings)[0]
    if winner is None:
        raise Conflict("holdout.json changed while pinning the holdout; try again")
    return winner


def ensure_holdout(settings: Settings, dataset_sha256: str) -> Holdout:
    """The holdout in force; where none is pinned yet (a model made before holdouts), the
    test.csv of the stored dataset `dataset_sha256` is pinned."""
    holdout = current_holdout(settings)
    if holdout is not None:
        return holdout
    url = s3_url(settings.bucket, dataset_key(dataset_sha256, settings))
    archive = fetch_archive(url, settings, holdout_dir(settings) / "dataset")
    try:
        return pin_dataset_test(archive, dataset_sha256, settings)
    finally:
        archive.unlink(missing_ok=True)


def holdout_rows(holdout: Holdout, settings: Settings) -> list[Row]:
    """The holdout's rows, from its pinned copy, checked against its sha256 and row count."""
    path = holdout_dir(settings) / holdout.sha256 / HOLDOUT_NAME
    if not (path.is_file() and file_sha256(path) == holdout.sha256):
        fetch_archive(s3_url(settings.bucket, holdout.key), settings, path.parent)
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
    local = extract_member(archive, HOLDOUT_NAME, settings, holdout_dir(settings) / "own.csv")
    try:
        return HoldoutTexts.of(file_sha256(local), read_csv(local, settings).rows)
    finally:
        local.unlink(missing_ok=True)


class HoldoutScores:
    """Versions' metrics on one holdout: from the cache beside it, else evaluated and cached."""

    def __init__(self, holdout: Holdout, settings: Settings, reporter: Reporter) -> None:
        self.holdout, self.settings, self.reporter = holdout, settings, reporter
        self._rows: list[Row] | None = None

    def of(self, version: str) -> Metrics:
        s3 = s3_client(self.settings)
        key = score_key(self.holdout.sha256, version, self.settings)
        cached = read_object(s3, self.settings.bucket, key)
        if cached is not None:
            return Metrics.model_validate_json(cached)
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
        s3.put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=metrics.model_dump_json(indent=2).encode(),
            ContentType="application/json",
        )
        return metrics


def _read(s3: "S3Client", settings: Settings) -> tuple[Holdout | None, str | None]:
    body, etag = read_with_etag(s3, settings.bucket, record_key(settings))
    return (None, None) if body is None else (Holdout.model_validate_json(body), etag)


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
    s3.upload_file(str(local), settings.bucket, holdout.key, ExtraArgs={"ContentType": "text/csv"})
    body = holdout.model_dump_json(indent=2).encode()
    if not put_if(s3, settings.bucket, record_key(settings), body, etag):
        return None
    log.info("pinned %s from %s", holdout.describe(), source)
    return holdout
