"""A dataset with people's corrections: the last accepted dataset's train.csv with every text's
latest feedback label (feedback wins where a text disagrees), its test.csv as it was. It is written
as an archive.zip and accepted by ingest like any upload, under every guard.

Its feedback rows come last in train.csv, and `datasets/{sha256}/feedback.json` (FeedbackOrigin)
says from which line: training trains on them always, never validates on them (train.split_rows),
and a later with_feedback dataset built on this one takes its rows above that line only, so that
feedback read again is not counted twice. Feedback on a text of the promotion holdout or of
test.csv is left out (and counted): training on it would grade the model on its own answers.
"""

import csv
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from pipeline.datasets import REPORT_NAME
from pipeline.ingest import RawDataset, Row
from pipeline.validate import HoldoutTexts, text_id
from shared.contracts.errors import DatasetNotFound
from shared.contracts.feedback import Feedback
from shared.contracts.labels import LABELS
from shared.registry import read_object
from shared.settings import Settings
from shared.storage import s3_client, s3_retry

ORIGIN_NAME = "feedback.json"
HEADER = ("class_index", "title", "description")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class FeedbackOrigin(BaseModel):
    """How a with_feedback dataset was made: `datasets/{sha256}/feedback.json`."""

    base_sha256: str = Field(description="the accepted dataset it was built on")
    first_line: int = Field(description="train.csv's line of the first feedback row; all after")
    feedback_rows: int
    relabelled: int = Field(description="rows of the base whose text feedback labels otherwise")
    confirmed: int = Field(description="rows of the base whose label feedback gave again")
    left_out: int = Field(description="feedback on texts of the holdout or of test.csv")
    newest_feedback_at: datetime | None


@dataclass(frozen=True)
class Merged:
    train: list[tuple[int, str]]  # (label index, cleaned text), feedback rows last
    origin: FeedbackOrigin


def origin_key(sha256: str, settings: Settings) -> str:
    return f"{settings.storage.datasets_prefix}{sha256}/{ORIGIN_NAME}"


def load_origin(sha256: str, settings: Settings) -> FeedbackOrigin | None:
    """How a dataset was made from feedback; None for an upload."""
    body = read_object(
        s3_client(settings.storage), settings.storage.bucket, origin_key(sha256, settings)
    )
    return None if body is None else FeedbackOrigin.model_validate_json(body)


@s3_retry
def store_origin(sha256: str, origin: FeedbackOrigin, settings: Settings) -> None:
    s3_client(settings.storage).put_object(
        Bucket=settings.storage.bucket,
        Key=origin_key(sha256, settings),
        Body=origin.model_dump_json(indent=2).encode(),
        ContentType="application/json",
    )


def latest_dataset(settings: Settings) -> str:
    """The sha256 of the dataset accepted last (its report is written last)."""
    storage = settings.storage
    pages = (
        s3_client(storage)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=storage.bucket, Prefix=storage.datasets_prefix)
    )
    newest: tuple[datetime, str] | None = None
    for page in pages:
        for item in page.get("Contents", []):
            key, modified = item.get("Key", ""), item.get("LastModified")
            if not (key.endswith(f"/{REPORT_NAME}") and modified):
                continue
            if newest is None or modified > newest[0]:
                newest = (modified, key[len(storage.datasets_prefix) :].split("/")[0])
    if newest is None:
        raise DatasetNotFound(
            "no dataset has been accepted yet: give a dataset for the feedback to join",
            details={"prefix": storage.datasets_prefix},
        )
    return newest[1]


def feedback_indices(rows: Sequence[Row], origin: FeedbackOrigin | None) -> list[int]:
    """The indices of a dataset's rows that are feedback (none for an upload)."""
    if origin is None:
        return []
    return [index for index, row in enumerate(rows) if row.line >= origin.first_line]


def merge(
    base: RawDataset,
    base_origin: FeedbackOrigin | None,
    feedback: Sequence[Feedback],
    holdout: HoldoutTexts | None,
) -> Merged:
    """The base's own rows, less those whose text has feedback, then one row per feedback text
    not in the holdout or test.csv, in a stable order."""
    excluded = {text_id(row.text) for row in base.test.rows}
    if holdout is not None:
        excluded.update(int(text) for text in holdout.texts)
    given: dict[int, Feedback] = {}
    left_out = 0
    for record in sorted(feedback, key=lambda record: record.text_sha256):
        key = text_id(record.text)
        if key in excluded:
            left_out += 1
        else:
            given[key] = record
    first_feedback = base_origin.first_line if base_origin is not None else None
    kept: list[tuple[int, str]] = []
    relabelled = confirmed = 0
    for row in base.train.rows:
        if first_feedback is not None and row.line >= first_feedback:
            continue  # feedback of the base's own making: read again, from S3
        corrected = given.get(text_id(row.text))
        if corrected is None:
            kept.append((row.label, row.text))
        elif LABELS[row.label] == corrected.label:
            confirmed += 1
        else:
            relabelled += 1
    rows = [*kept, *((LABELS.index(record.label), record.text) for record in given.values())]
    newest = max((record.at for record in given.values()), default=None)
    origin = FeedbackOrigin(
        base_sha256=base.sha256,
        first_line=len(kept) + 2,  # after the header line
        feedback_rows=len(given),
        relabelled=relabelled,
        confirmed=confirmed,
        left_out=left_out,
        newest_feedback_at=newest,
    )
    return Merged(rows, origin)


def write_archive(path: Path, train: Sequence[tuple[int, str]], test: Sequence[Row]) -> Path:
    """An archive.zip in the snake_case layout: each cleaned text as its title, which cleaning
    leaves as it is. The same rows give the same bytes (no times in it): a retried ingest
    stores the same dataset."""
    members = {"train.csv": train, "test.csv": [(row.label, row.text) for row in test]}
    with zipfile.ZipFile(path, "w") as archive:
        for name, rows in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, _csv(rows))
    return path


def _csv(rows: Sequence[tuple[int, str]]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows((label + 1, text, "") for label, text in rows)
    return out.getvalue()
