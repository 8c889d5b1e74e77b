import hashlib
from pathlib import Path

import pytest

from pipeline.datasets import (
    dataset_key,
    load_dataset,
    load_report,
    report_key,
    store_dataset,
)
from pipeline.ingest import read_archive
from pipeline.validate import ValidationReport, validate
from shared.contracts.errors import DatasetIntegrityError, DatasetInvalid, DatasetNotFound
from shared.settings import Settings
from shared.storage import s3_client
from testkit.archives import MINI_ARCHIVE, make_archive, mini_records


def accepted_report(settings: Settings, archive: Path = MINI_ARCHIVE) -> ValidationReport:
    report = validate(read_archive(archive, settings), settings)
    assert report.accepted
    return report


def test_keys_follow_the_layout(settings: Settings) -> None:
    assert dataset_key("abc", settings) == "datasets/abc/archive.zip"
    assert report_key("abc", settings) == "datasets/abc/report.json"


def test_store_and_load_round_trip(settings: Settings, tmp_path: Path) -> None:
    report = accepted_report(settings)
    sha256 = report.dataset_sha256
    assert sha256 == hashlib.sha256(MINI_ARCHIVE.read_bytes()).hexdigest()

    key = store_dataset(MINI_ARCHIVE, report, settings)

    assert key == f"datasets/{sha256}/archive.zip"
    stored = s3_client(settings.storage).get_object(Bucket=settings.storage.bucket, Key=key)
    assert stored["Body"].read() == MINI_ARCHIVE.read_bytes()
    assert stored["Metadata"] == {"sha256": sha256}
    assert load_report(sha256, settings) == report
    dataset = load_dataset(sha256, settings, tmp_path)
    original = read_archive(MINI_ARCHIVE, settings)
    assert dataset.sha256 == sha256
    assert dataset.train.rows == original.train.rows
    assert dataset.test.rows == original.test.rows
    assert (tmp_path / sha256 / "archive.zip").read_bytes() == MINI_ARCHIVE.read_bytes()


def test_load_uses_its_cache(settings: Settings, tmp_path: Path) -> None:
    report = accepted_report(settings)
    key = store_dataset(MINI_ARCHIVE, report, settings)
    load_dataset(report.dataset_sha256, settings, tmp_path)
    s3_client(settings.storage).delete_object(Bucket=settings.storage.bucket, Key=key)
    assert len(load_dataset(report.dataset_sha256, settings, tmp_path).train.rows) == 400


def test_storing_again_keeps_the_archive_and_rewrites_the_report(
    settings: Settings,
) -> None:
    report = accepted_report(settings)
    key = store_dataset(MINI_ARCHIVE, report, settings)
    client = s3_client(settings.storage)
    client.put_object(Bucket=settings.storage.bucket, Key=key, Body=b"already here")
    changed = report.model_copy(update={"warnings": ["a new warning"]})
    assert store_dataset(MINI_ARCHIVE, changed, settings) == key
    assert (
        client.get_object(Bucket=settings.storage.bucket, Key=key)["Body"].read() == b"already here"
    )
    assert load_report(report.dataset_sha256, settings).warnings == ["a new warning"]


def test_refuses_to_store_a_rejected_dataset(settings: Settings, tmp_path: Path) -> None:
    test = [record for record in mini_records("test.csv") if record[0] != "2"]
    archive = make_archive(tmp_path / "archive.zip", test=test)
    report = validate(read_archive(archive, settings), settings)
    with pytest.raises(DatasetInvalid, match=r"test\.csv has no rows of class 2"):
        store_dataset(archive, report, settings)
    listed = s3_client(settings.storage).list_objects_v2(Bucket=settings.storage.bucket)
    assert listed.get("KeyCount") == 0


def test_refuses_an_archive_that_is_not_the_reported_one(
    settings: Settings, tmp_path: Path
) -> None:
    other = make_archive(tmp_path / "archive.zip", dialect="original")
    with pytest.raises(DatasetIntegrityError, match="does not have the sha256"):
        store_dataset(other, accepted_report(settings), settings)


def test_missing_datasets_are_not_found(settings: Settings, tmp_path: Path) -> None:
    sha256 = "0" * 64
    with pytest.raises(DatasetNotFound, match=f"datasets/{sha256}/archive.zip does not exist"):
        load_dataset(sha256, settings, tmp_path)
    with pytest.raises(DatasetNotFound, match=f"datasets/{sha256}/report.json does not exist"):
        load_report(sha256, settings)


def test_a_stored_archive_with_other_bytes_is_refused(settings: Settings, tmp_path: Path) -> None:
    report = accepted_report(settings)
    key = store_dataset(MINI_ARCHIVE, report, settings)
    other = make_archive(tmp_path / "other.zip", dialect="snake_case")
    s3_client(settings.storage).upload_file(str(other), settings.storage.bucket, key)
    with pytest.raises(DatasetIntegrityError, match="does not have the sha256 it is stored under"):
        load_dataset(report.dataset_sha256, settings, tmp_path / "cache")
    assert not (tmp_path / "cache" / report.dataset_sha256 / "archive.zip").exists()
