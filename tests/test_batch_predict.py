"""Batch prediction: a file of texts read whole and checked, classified chunk by chunk into
predictions.csv in input order, resumed after a lost worker without a row missing or twice."""

import csv
import io
import json
from collections.abc import Sequence

import pytest

from pipeline.batch import HEADER, Parts, run_batch
from pipeline.batch_input import BatchRow, read_batch_input
from pipeline.predictor import Predictor
from pipeline.registry import read_manifest
from pipeline.report import NullReporter
from shared.contracts.errors import DatasetInvalid, ErrorInfo, JobCancelled, PayloadTooLarge
from shared.contracts.jobs import new_job_id
from shared.contracts.results import PredictResult
from shared.settings import Settings
from shared.storage import s3_client
from testkit.archives import csv_bytes, mini_records
from testkit.models import tiny_model


def rows_of(data: bytes, name: str = "texts.csv") -> list[BatchRow]:
    return read_batch_input(io.BytesIO(data), name, 1 << 20, 10_000)


def test_the_ag_news_layout_is_read_with_or_without_header_and_class() -> None:
    kaggle = b'Class Index,Title,Description\n3,"Oil up","Prices rise."\n2,Cup,Final won\n'
    assert rows_of(kaggle) == [
        BatchRow(2, "Oil up. Prices rise.", 2),
        BatchRow(3, "Cup. Final won", 1),
    ]
    no_header = b'"1","Talks","Rebels meet"\n"","Chips","Faster"\n'
    assert [(r.text, r.label) for r in rows_of(no_header)] == [
        ("Talks. Rebels meet", 0),
        ("Chips. Faster", None),
    ]
    two_columns = b"Oil up,Prices rise.\nCup,Final won\n"
    assert [(r.text, r.label) for r in rows_of(two_columns)] == [
        ("Oil up. Prices rise.", None),
        ("Cup. Final won", None),
    ]


def test_a_text_column_and_json_lines_are_read_with_optional_labels() -> None:
    with_text = b'id,text,label\n7,"Stocks fall",Business\n8,Goal!,\n'
    assert [(r.text, r.label) for r in rows_of(with_text)] == [
        ("Stocks fall", 2),
        ("Goal!", None),
    ]
    lines = b'{"text": "Stocks fall", "label": 3}\n\n{"text": "Goal!"}\n'
    assert [(r.line, r.text, r.label) for r in rows_of(lines, "x.jsonl")] == [
        (1, "Stocks fall", 2),
        (3, "Goal!", None),
    ]


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"1,a,b\n2,c\n", "t.csv", "line 2: expected 3 fields"),
        (b"text,label\nok,Weather\n", "t.csv", 'line 2: label "weather" is none of'),
        (b"text\n   \n\n", "t.csv", "no rows"),
        (b'id,text\n1,"  "\n', "t.csv", "line 2: the text is empty"),
        (b'{"text": 3}\n', "t.jsonl", 'line 1: expected an object with a string "text"'),
        (b"{nope\n", "t.jsonl", "line 1: not a JSON object"),
        (b"text\n\xff\xfe\n", "t.csv", "is not UTF-8"),
        ("text\nhi\n".encode("utf-16"), "t.csv", "UTF-16"),
    ],
)
def test_a_malformed_file_is_refused_whole_with_its_lines(
    data: bytes, name: str, message: str
) -> None:
    with pytest.raises(DatasetInvalid) as refused:
        rows_of(data, name)
    assert message in str(refused.value)


def test_every_problem_is_counted_and_the_first_five_named() -> None:
    data = b"1,a,b\n" + b"9,x,y\n" * 7
    with pytest.raises(DatasetInvalid) as refused:
        rows_of(data)
    message = str(refused.value)
    assert "7 rows cannot be classified" in message
    assert "line 2:" in message
    assert "line 6:" in message
    assert "line 7:" not in message
    assert "(and 2 more)" in message


def test_a_file_past_its_limits_is_refused() -> None:
    with pytest.raises(PayloadTooLarge, match="larger than the 10 bytes"):
        read_batch_input(io.BytesIO(b"text\n" + b"a\n" * 10), "t.csv", 10, 100)
    with pytest.raises(PayloadTooLarge, match="holds 10 rows, more than the 5"):
        read_batch_input(io.BytesIO(b"text\n" + b"a\n" * 10), "t.csv", 1000, 5)


class LocalFleet:
    """Predict jobs answered by a real model in this process, one `answers` call after they
    are sent, as the fleet answers them a moment later."""

    def __init__(self, predictor: Predictor, die_after: int | None = None) -> None:
        self.predictor = predictor
        self.pending: dict[str, list[str]] = {}
        self.sent: list[list[str]] = []
        self.die_after = die_after
        self.answered = 0

    def send(self, texts: list[str]) -> str:
        job_id = new_job_id()
        self.pending[job_id] = texts
        self.sent.append(texts)
        return job_id

    def answers(self, job_ids: Sequence[str]) -> dict[str, PredictResult | ErrorInfo]:
        ended: dict[str, PredictResult | ErrorInfo] = {}
        for job_id in job_ids:
            if self.die_after is not None and self.answered == self.die_after:
                raise WorkerKilled
            texts = self.pending.pop(job_id)
            ended[job_id] = PredictResult(
                model_version=self.predictor.version,
                form=self.predictor.form,
                predictions=self.predictor.predict(texts),
            )
            self.answered += 1
        return ended


class WorkerKilled(BaseException):
    """The evaluate worker dying mid-job: nothing after it runs."""


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    model_dir = tiny_model(tmp_path_factory.mktemp("tiny"))
    return Predictor.from_manifest(model_dir, read_manifest(model_dir), Settings())


def _upload(settings: Settings, data: bytes, key: str = "incoming/batch/texts.csv") -> str:
    s3_client(settings.storage).put_object(Bucket=settings.storage.bucket, Key=key, Body=data)
    return f"s3://{settings.storage.bucket}/{key}"


def _output(settings: Settings, job_id: str) -> list[list[str]]:
    key = f"{settings.storage.predictions_prefix}{job_id}/predictions.csv"
    body = s3_client(settings.storage).get_object(Bucket=settings.storage.bucket, Key=key)
    return list(csv.reader(io.StringIO(body["Body"].read().decode())))


def test_a_batch_is_classified_in_input_order_and_scored_on_its_labels(
    settings: Settings, predictor: Predictor
) -> None:
    records = mini_records("test.csv")[:70]
    dataset = _upload(settings, csv_bytes(records))
    config = settings.replace(batch_chunk_texts=16, batch_in_flight=2)
    fleet = LocalFleet(predictor)
    job_id = new_job_id()
    result = run_batch(job_id, dataset, config, NullReporter(), fleet, s3_client(config.storage))

    rows = rows_of(csv_bytes(records))
    expected = predictor.predict([row.text for row in rows])
    lines = _output(config, job_id)
    assert tuple(lines[0]) == HEADER
    assert [int(line[0]) for line in lines[1:]] == list(range(1, len(rows) + 1))
    assert [line[1] for line in lines[1:]] == [p.label for p in expected]
    assert {line[-2] for line in lines[1:]} == {predictor.version}
    assert [len(texts) for texts in fleet.sent] == [16, 16, 16, 16, 6]
    truth = [row.label for row in rows]
    correct = sum(p.label_id == t for p, t in zip(expected, truth, strict=True))
    assert result.rows == result.labelled == len(rows)
    assert result.accuracy == round(correct / len(rows), 6)
    assert result.confusion is not None
    assert sum(map(sum, result.confusion)) == len(rows)
    assert result.model_versions == {predictor.version: len(rows)}
    assert result.output.endswith(f"{job_id}/predictions.csv")
    listed = s3_client(config.storage).list_objects_v2(
        Bucket=config.storage.bucket, Prefix=f"{config.storage.predictions_prefix}{job_id}/"
    )
    assert [item["Key"].rsplit("/", 1)[1] for item in listed["Contents"]] == ["predictions.csv"]


def test_a_batch_resumed_after_its_worker_died_sends_only_what_was_not_answered(
    settings: Settings, predictor: Predictor
) -> None:
    texts = [f"Markets move on day {day} as traders weigh rates" for day in range(100)]
    dataset = _upload(settings, ("text\n" + "\n".join(texts) + "\n").encode())
    config = settings.replace(batch_chunk_texts=10, batch_in_flight=3)
    job_id = new_job_id()
    dying = LocalFleet(predictor, die_after=4)
    with pytest.raises(WorkerKilled):
        run_batch(job_id, dataset, config, NullReporter(), dying, s3_client(config.storage))
    prefix = f"{config.storage.predictions_prefix}{job_id}/"
    done = Parts(s3_client(config.storage), config.storage.bucket, prefix).done()
    assert 0 < len(done) < 10
    resumed = LocalFleet(predictor)
    result = run_batch(job_id, dataset, config, NullReporter(), resumed, s3_client(config.storage))

    assert sorted(resumed.sent) == sorted(
        texts[index * 10 : index * 10 + 10] for index in range(10) if index not in done
    )
    lines = _output(config, job_id)[1:]
    assert [int(line[0]) for line in lines] == list(range(1, 101))
    assert [line[1] for line in lines] == [p.label for p in predictor.predict(texts)]
    assert result.rows == 100
    assert result.labelled == 0
    assert result.accuracy is None
    # Resumed once more after predictions.csv was written: it is read back, nothing is sent.
    again = LocalFleet(predictor)
    assert (
        run_batch(job_id, dataset, config, NullReporter(), again, s3_client(config.storage)).rows
        == 100
    )
    assert again.sent == []


def test_a_cancelled_or_malformed_batch_leaves_no_output(
    settings: Settings, predictor: Predictor
) -> None:
    class Cancelled(NullReporter):
        def cancelled(self) -> bool:
            return True

    dataset = _upload(settings, json.dumps({"text": "Goal!"}).encode(), "incoming/b/x.jsonl")
    job_id = new_job_id()
    with pytest.raises(JobCancelled):
        run_batch(
            job_id,
            dataset,
            settings,
            Cancelled(),
            LocalFleet(predictor),
            s3_client(settings.storage),
        )
    bad = _upload(settings, b"text,label\nok,Weather\n", "incoming/b/bad.csv")
    fleet = LocalFleet(predictor)
    with pytest.raises(DatasetInvalid):
        run_batch(new_job_id(), bad, settings, NullReporter(), fleet, s3_client(settings.storage))
    assert fleet.sent == []
    listed = s3_client(settings.storage).list_objects_v2(
        Bucket=settings.storage.bucket, Prefix=settings.storage.predictions_prefix
    )
    assert listed.get("KeyCount", 0) == 0
