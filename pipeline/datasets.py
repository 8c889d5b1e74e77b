"""Accepted datasets in the bucket: `datasets/{sha256}/archive.zip` beside its `report.json`."""

from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from pipeline.ingest import RawDataset, fetch_archive, read_archive
from pipeline.validate import ValidationReport, check
from shared.contracts.errors import DatasetIntegrityError, DatasetNotFound
from shared.digests import file_sha256
from shared.registry import read_object
from shared.settings import Settings
from shared.storage import ARCHIVE_NAME, is_missing, s3_client, s3_retry, s3_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPORT_NAME = "report.json"


def dataset_key(sha256: str, settings: Settings) -> str:
    return f"{settings.storage.datasets_prefix}{sha256}/{ARCHIVE_NAME}"


def report_key(sha256: str, settings: Settings) -> str:
    return f"{settings.storage.datasets_prefix}{sha256}/{REPORT_NAME}"


@s3_retry
def store_dataset(archive: Path, report: ValidationReport, settings: Settings) -> str:
    """Upload an accepted archive (unless already there), then its report; the archive's key.

    The report goes last, so a report in the bucket means its archive is there too.
    """
    check(report)
    sha256 = report.dataset_sha256
    if file_sha256(archive) != sha256:
        raise DatasetIntegrityError(
            f"{archive} does not have the sha256 its report names ({sha256})",
            details={"sha256": sha256},
        )
    client = s3_client(settings.storage)
    key = dataset_key(sha256, settings)
    if not _exists(client, settings.storage.bucket, key):
        client.upload_file(
            str(archive),
            settings.storage.bucket,
            key,
            ExtraArgs={"ContentType": "application/zip", "Metadata": {"sha256": sha256}},
        )
    client.put_object(
        Bucket=settings.storage.bucket,
        Key=report_key(sha256, settings),
        Body=report.model_dump_json(indent=2).encode(),
        ContentType="application/json",
    )
    return key


def load_dataset(sha256: str, settings: Settings, dest_dir: Path) -> RawDataset:
    """Read a stored dataset, downloading it into dest_dir/{sha256}/ unless it is there already."""
    path = dest_dir / sha256 / ARCHIVE_NAME
    if not (path.is_file() and file_sha256(path) == sha256):
        url = s3_url(settings.storage.bucket, dataset_key(sha256, settings))
        fetch_archive(url, settings, path.parent)
        if file_sha256(path) != sha256:
            path.unlink()
            raise DatasetIntegrityError(
                f"{url} does not have the sha256 it is stored under", details={"url": url}
            )
    return read_archive(path, settings)


def load_report(sha256: str, settings: Settings) -> ValidationReport:
    key = report_key(sha256, settings)
    body = read_object(s3_client(settings.storage), settings.storage.bucket, key)
    if body is None:
        url = s3_url(settings.storage.bucket, key)
        raise DatasetNotFound(f"{url} does not exist", details={"url": url})
    return ValidationReport.model_validate_json(body)


def _exists(client: "S3Client", bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise
    return True
