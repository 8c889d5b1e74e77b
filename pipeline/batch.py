"""A batch-prediction job: a file of texts classified by the predict fleet, chunk by chunk, into
predictions/{job}/predictions.csv.

The rows go out as predict jobs of `batch_chunk_texts` texts, at most `batch_in_flight` at a time,
so that they share the workers' batching with interactive requests, which queue behind no more
than that. Each answered chunk is written at once as its own part (predictions/{job}/parts/N.csv,
the same bytes however often it is written); a job resumed after its worker died sends only the
chunks with no part yet, and a chunk answered twice writes the same part twice. Once every part
is there they are joined in input order into predictions.csv, and the parts deleted; a job
resumed after that reads its result back from predictions.csv.
"""

import csv
import io
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

from pipeline.batch_input import BatchRow, read_batch_input
from pipeline.report import Reporter, Ticker, check_cancelled
from shared.contracts.errors import BatchChunkFailed, DatasetNotFound, ErrorInfo
from shared.contracts.labels import LABELS
from shared.contracts.results import BatchPredictResult, PredictResult
from shared.settings import Settings
from shared.storage import is_missing, parse_s3_url, s3_retry, s3_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

HEADER = ("row", "label", "label_id", *LABELS, "model_version", "form")
OUTPUT = "predictions.csv"
_POLL_S = 0.02


class Fleet(Protocol):
    """The predict fleet, as a batch job uses it."""

    def send(self, texts: list[str]) -> str:
        """A predict job for the texts, queued; its id."""

    def answers(self, job_ids: Sequence[str]) -> dict[str, PredictResult | ErrorInfo]:
        """Those of the jobs that ended: each one's result or error."""


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    start: int
    rows: Sequence[BatchRow]


class Parts:
    """A batch job's files in the bucket."""

    def __init__(self, s3: "S3Client", bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix

    def key(self, index: int) -> str:
        return f"{self.prefix}parts/{index:06d}.csv"

    @property
    def output_key(self) -> str:
        return self.prefix + OUTPUT

    def done(self) -> set[int]:
        found: set[int] = set()
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}parts/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[1]
                if name.endswith(".csv") and name.removesuffix(".csv").isdigit():
                    found.add(int(name.removesuffix(".csv")))
        return found

    def write(self, index: int, body: bytes) -> None:
        s3_retry(self.s3.put_object)(
            Bucket=self.bucket, Key=self.key(index), Body=body, ContentType="text/csv"
        )

    def read(self, index: int) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=self.key(index))["Body"].read())

    def output(self) -> bytes | None:
        try:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=self.output_key)["Body"].read())
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise

    def write_output(self, body: bytes) -> None:
        s3_retry(self.s3.put_object)(
            Bucket=self.bucket, Key=self.output_key, Body=body, ContentType="text/csv"
        )

    def delete(self, indexes: Iterable[int]) -> None:
        keys: list[ObjectIdentifierTypeDef] = [{"Key": self.key(index)} for index in indexes]
        for start in range(0, len(keys), 1000):
            s3_retry(self.s3.delete_objects)(
                Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
            )


def run_batch(
    job_id: str,
    dataset: str,
    settings: Settings,
    reporter: Reporter,
    fleet: Fleet,
    s3: "S3Client",
) -> BatchPredictResult:
    began = time.monotonic()
    rows = read_input(dataset, settings, s3)
    parts = Parts(s3, settings.storage.bucket, f"{settings.storage.predictions_prefix}{job_id}/")
    output = parts.output()
    if output is None:
        size = settings.batch.chunk_texts
        chunks = [
            Chunk(index, start, rows[start : start + size])
            for index, start in enumerate(range(0, len(rows), size))
        ]
        classify(chunks, parts, settings, reporter, fleet, len(rows))
        output = join(chunks, parts)
    return result_of(output, rows, s3_url(parts.bucket, parts.output_key), began)


def read_input(dataset: str, settings: Settings, s3: "S3Client") -> list[BatchRow]:
    bucket, key = parse_s3_url(dataset, settings.storage)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if is_missing(exc):
            url = s3_url(bucket, key)
            raise DatasetNotFound(f"{url} does not exist", details={"url": url}) from exc
        raise
    with body:
        return read_batch_input(body, key, settings.batch.max_bytes, settings.batch.max_rows)


def classify(
    chunks: Sequence[Chunk],
    parts: Parts,
    settings: Settings,
    reporter: Reporter,
    fleet: Fleet,
    total_rows: int,
) -> None:
    done = parts.done()
    waiting = deque(chunk for chunk in chunks if chunk.index not in done)
    rows_done = total_rows - sum(len(chunk.rows) for chunk in waiting)
    ticker = Ticker(
        reporter, "batch_predict", total_rows, settings.training.progress_interval_s, rows_done
    )
    sent: dict[str, tuple[Chunk, float]] = {}
    began, resumed_at = time.monotonic(), rows_done
    while waiting or sent:
        check_cancelled(reporter, "batch prediction")
        while waiting and len(sent) < settings.batch.in_flight:
            chunk = waiting.popleft()
            sent[fleet.send([row.text for row in chunk.rows])] = (chunk, time.monotonic())
        answered = fleet.answers(list(sent))
        for job_id, answer in answered.items():
            chunk, _ = sent.pop(job_id)
            if isinstance(answer, ErrorInfo):
                raise BatchChunkFailed(
                    f"rows {chunk.start + 1}-{chunk.start + len(chunk.rows)}: the predict fleet "
                    f"answered {answer.code}: {answer.message}",
                    details={"chunk": chunk.index, "error": answer.model_dump()},
                )
            parts.write(chunk.index, part_lines(chunk, answer))
            rows_done += len(chunk.rows)
        _send_again_late(sent, waiting, settings.batch.chunk_timeout_s)
        if not answered:
            time.sleep(_POLL_S)
        rate = (rows_done - resumed_at) / max(time.monotonic() - began, 1e-6)
        ticker(rows_done, rows_per_s=round(rate, 1))


def _send_again_late(
    sent: dict[str, tuple[Chunk, float]], waiting: deque[Chunk], timeout_s: float
) -> None:
    """A chunk unanswered past the timeout goes back to the front; its first answer wins."""
    now = time.monotonic()
    for job_id, (chunk, at) in list(sent.items()):
        if now - at > timeout_s:
            log.warning(
                "chunk %d unanswered after %.0f s; sending it again", chunk.index, timeout_s
            )
            del sent[job_id]
            waiting.appendleft(chunk)


def part_lines(chunk: Chunk, answer: PredictResult) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    for offset, prediction in enumerate(answer.predictions):
        writer.writerow(
            (
                chunk.start + offset + 1,
                prediction.label,
                prediction.label_id,
                *(f"{prediction.scores[label]:.6f}" for label in LABELS),
                answer.model_version,
                answer.form,
            )
        )
    return out.getvalue().encode()


def join(chunks: Sequence[Chunk], parts: Parts) -> bytes:
    header = ",".join(HEADER).encode() + b"\n"
    output = header + b"".join(parts.read(chunk.index) for chunk in chunks)
    parts.write_output(output)
    parts.delete(chunk.index for chunk in chunks)
    return output


def result_of(
    output: bytes, rows: Sequence[BatchRow], url: str, began: float
) -> BatchPredictResult:
    reader = csv.reader(io.StringIO(output.decode(), newline=""))
    next(reader)
    versions: dict[str, int] = {}
    confusion = [[0] * len(LABELS) for _ in LABELS]
    labelled = correct = count = 0
    for record, row in zip(reader, rows, strict=True):
        count += 1
        predicted = int(record[2])
        versions[record[-2]] = versions.get(record[-2], 0) + 1
        if row.label is not None:
            labelled += 1
            correct += predicted == row.label
            confusion[row.label][predicted] += 1
    seconds = round(time.monotonic() - began, 3)
    return BatchPredictResult(
        rows=count,
        output=url,
        model_versions=versions,
        labelled=labelled,
        accuracy=round(correct / labelled, 6) if labelled else None,
        confusion=confusion if labelled else None,
        seconds=seconds,
        rows_per_s=round(count / seconds, 1) if seconds else 0.0,
    )
