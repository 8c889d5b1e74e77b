"""Feedback: corrections and confirmations stored in S3 (one object per cleaned text per day,
the latest winning), the version that answered read from the predict job, the checks a dataset
row passes, scopes, the review of uncertain answers the predict workers keep, and `agnews
feedback`. A real gateway, Redis and S3 (moto)."""

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from client.cli import EXIT_OK, EXIT_REFUSED, EXIT_UNAUTHORIZED, EXIT_USAGE, main
from pipeline.registry import publish
from shared.contracts.feedback import REVIEW_TEXT_CHARS, Feedback
from shared.contracts.jobs import Job, JobType, PipelineParams, PredictParams, new_job_id
from shared.contracts.keys import ApiKey, key_digest
from shared.feedback import FeedbackStore, text_sha256
from shared.jobstore import JobStore
from shared.monitoring import MonitorKeys, ServingTally
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from shared.text import clean_text
from testkit.aws_calls import recording
from testkit.gateway import Gateway, broker_messages, serve
from testkit.iam import Deployment, check
from testkit.job_results import predict_result, train_job, uncertain
from testkit.models import tiny_model
from tests.test_gateway_models import NEWER, OLDER, register
from workers.models import ServingModel
from workers.predict import serve_batch

WRITER, READER, OTHER = "writer-key", "reader-key", "other-key"
KEYS = [
    ApiKey(name="ann", sha256=key_digest(WRITER), scopes=("predict", "read")),
    ApiKey(name="dash", sha256=key_digest(READER), scopes=("read",)),
    ApiKey(name="bob", sha256=key_digest(OTHER), scopes=("predict",)),
]
MAX_CHARS = 400
KEEP = 3


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.replace(api_keys=KEYS, max_text_chars=MAX_CHARS, review_keep=KEEP)


@pytest.fixture
def gateway(keyed: Settings) -> Iterator[Gateway]:
    with serve(keyed) as running:
        yield running


@pytest.fixture
def ann(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers=as_key(WRITER)) as http:
        yield http


@pytest.fixture
def store(keyed: Settings) -> Iterator[JobStore]:
    jobs = JobStore.from_settings(keyed)
    yield jobs
    jobs.redis.close()


def objects(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every feedback object in the bucket, by key."""
    s3 = s3_client(settings.storage)
    listed = s3.list_objects_v2(Bucket=settings.storage.bucket, Prefix="feedback/")
    found = {}
    for item in listed.get("Contents", []):
        body = s3.get_object(Bucket=settings.storage.bucket, Key=item["Key"])["Body"].read()
        found[item["Key"]] = json.loads(body)
    return found


def today_key(text: str) -> str:
    day = datetime.now(UTC).date().isoformat()
    return f"feedback/{day}/{text_sha256(clean_text(text))[:32]}.json"


def answered_job(store: JobStore, owner: str, texts: list[str], labels: tuple[str, ...]) -> str:
    """A predict job as a worker leaves it: answered, its texts let go."""
    job = Job(id=new_job_id(), type=JobType.predict, params=PredictParams(texts=texts), owner=owner)
    store.create(job)
    store.start(job.id)
    store.succeed(job.id, predict_result(NEWER, labels))
    return job.id


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_correction_is_in_s3_with_who_gave_it_and_the_version_that_was_wrong(
    ann: httpx.Client, keyed: Settings
) -> None:
    text = "Stocks rally as oil prices fall"
    given = ann.post(
        "/v1/feedback",
        json={"text": text, "label": "Business", "model_version": NEWER, "predicted": "World"},
    )
    assert given.status_code == 201, given.text
    record = given.json()
    stored = objects(keyed)
    assert list(stored) == [today_key(text)]
    assert stored[today_key(text)] == record
    assert record["text"] == text
    assert record["text_sha256"] == text_sha256(text)
    assert record["label"] == "Business"
    assert record["given_by"] == "ann"
    assert record["model_version"] == NEWER
    assert record["predicted"] == "World"
    assert record["agreed"] is False
    assert record["from_job"] is False
    at = datetime.fromisoformat(record["at"])
    assert abs((datetime.now(UTC) - at).total_seconds()) < 30

    # A class index is a label too (as in AG News's CSVs); the label the model gave: agreed.
    confirmed = ann.post(
        "/v1/feedback",
        json={"text": "Federer wins in straight sets", "label": 2, "predicted": "Sports"},
    ).json()
    assert confirmed["label"] == "Sports"
    assert confirmed["agreed"] is True
    assert confirmed["model_version"] is None
    assert len(objects(keyed)) == 2


def test_spellings_that_clean_alike_are_one_object_a_day_and_the_latest_wins(
    ann: httpx.Client, keyed: Settings
) -> None:
    first = "Oil &amp; gas <b>prices</b>  climb"
    second = "Oil & gas prices climb"
    assert clean_text(first) == clean_text(second) == "Oil & gas prices climb"
    assert ann.post("/v1/feedback", json={"text": first, "label": "World"}).status_code == 201
    assert ann.post("/v1/feedback", json={"text": second, "label": "Business"}).status_code == 201
    stored = objects(keyed)
    assert list(stored) == [today_key(second)]
    assert stored[today_key(second)]["label"] == "Business"
    assert stored[today_key(second)]["text"] == "Oil & gas prices climb"

    # The same text on another day is another object; readers take the latest.
    feedback = FeedbackStore.from_settings(keyed.storage)
    earlier = Feedback.model_validate(
        {**stored[today_key(second)], "label": "Sci/Tech", "at": datetime.now(UTC) - timedelta(2)}
    )
    other = earlier.model_copy(
        update={"text": "Old news", "text_sha256": text_sha256("Old news"), "label": "World"}
    )
    feedback.put(earlier)
    feedback.put(other)
    assert len(objects(keyed)) == 3
    assert [(r.text, r.label) for r in feedback.all()] == [
        ("Oil & gas prices climb", "Business"),
        ("Old news", "World"),
    ]
    assert [(r.text, r.label) for r in feedback.recent(1)] == [
        ("Oil & gas prices climb", "Business")
    ]
    assert feedback.count_since(datetime.now(UTC) - timedelta(hours=1)) == 1
    assert feedback.count_since(datetime.now(UTC) - timedelta(days=3)) == 2
    listed = ann.get("/v1/feedback", params={"limit": 10}).json()["feedback"]
    assert [(r["text"], r["label"]) for r in listed] == [
        ("Oil & gas prices climb", "Business"),
        ("Old news", "World"),
    ]


def test_the_job_names_the_version_and_the_label_it_answered(
    ann: httpx.Client, store: JobStore, keyed: Settings
) -> None:
    texts = ["Rebels seize the capital", "Quarterly profit beats forecasts"]
    job_id = answered_job(store, "ann", texts, ("World", "Sci/Tech"))
    # What the client says it saw is overruled by the job's stored answer.
    given = ann.post(
        "/v1/feedback",
        json={
            "text": texts[1],
            "label": "Business",
            "job_id": job_id,
            "index": 1,
            "model_version": OLDER,
            "predicted": "Business",
        },
    )
    assert given.status_code == 201, given.text
    record = given.json()
    assert (record["model_version"], record["predicted"]) == (NEWER, "Sci/Tech")
    assert (record["from_job"], record["agreed"], record["job_id"], record["index"]) == (
        True,
        False,
        job_id,
        1,
    )
    # Without an index, the job's first text.
    first = ann.post("/v1/feedback", json={"text": texts[0], "label": "World", "job_id": job_id})
    assert (first.json()["predicted"], first.json()["agreed"], first.json()["index"]) == (
        "World",
        True,
        0,
    )

    # A job that has expired (or never was), or another key's: what the client sent stands.
    for gone in ("no-such-job", answered_job(store, "bob", texts, ("Sports", "Sports"))):
        fallback = ann.post(
            "/v1/feedback",
            json={
                "text": texts[0],
                "label": "World",
                "job_id": gone,
                "index": 1,
                "model_version": OLDER,
                "predicted": "Business",
            },
        )
        assert fallback.status_code == 201, fallback.text
        assert (fallback.json()["model_version"], fallback.json()["predicted"]) == (
            OLDER,
            "Business",
        )
        assert fallback.json()["from_job"] is False

    # An index beyond the job's texts, or a job that classified nothing, is a 422.
    beyond = ann.post(
        "/v1/feedback", json={"text": texts[0], "label": "World", "job_id": job_id, "index": 2}
    )
    error = error_of(beyond, 422)
    assert error["code"] == "invalid_request"
    assert error["details"]["fields"] == ["index"]
    assert "classified 2 texts (index 0 to 1); 2 is out of range" in error["message"]
    training = train_job()
    store.create(training.model_copy(update={"owner": "ann"}))
    not_predict = ann.post(
        "/v1/feedback", json={"text": texts[0], "label": "World", "job_id": training.id}
    )
    assert "is a train job" in error_of(not_predict, 422)["message"]
    assert len(objects(keyed)) == 2


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"text": " \t\n", "label": "World"}, "text", "blank"),
        ({"text": "", "label": "World"}, "text", "at least 1 character"),
        ({"label": "World"}, "text", "Field required"),
        ({"text": "x" * (MAX_CHARS + 1), "label": "World"}, "text", f"the limit is {MAX_CHARS}"),
        ({"text": "<br/> &nbsp; <p></p>", "label": "World"}, "text", "nothing is left"),
        ({"text": "Oil prices", "label": "Politics"}, "label", "'Politics' is not a label"),
        ({"text": "Oil prices", "label": "world"}, "label", "'world' is not a label"),
        ({"text": "Oil prices", "label": 5}, "label", "class index 1 to 4"),
        ({"text": "Oil prices", "label": "2"}, "label", "'2' is not a label"),
        ({"text": "Oil prices", "label": True}, "label", "True is not a label"),
        ({"text": "Oil prices"}, "label", "Field required"),
        ({"text": "Oil prices", "label": "World", "index": 0}, "body", "give job_id with it"),
        ({"text": "Oil prices", "label": "World", "model_version": "v1"}, "model_version", ""),
        ({"text": "Oil prices", "label": "World", "predicted": "Weather"}, "predicted", ""),
        ({"text": "Oil prices", "label": "World", "colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_feedback_passes_the_checks_a_dataset_row_does(
    ann: httpx.Client, keyed: Settings, body: dict[str, Any], field: str, words: str
) -> None:
    error = error_of(ann.post("/v1/feedback", json=body), 422)
    assert error["code"] == "invalid_request"
    assert field in error["details"]["fields"]
    assert words in error["message"]
    assert objects(keyed) == {}


def test_a_lone_surrogate_is_refused_as_not_utf8(ann: httpx.Client, keyed: Settings) -> None:
    body = b'{"text": "Oil \\ud800 prices", "label": "World"}'
    answer = ann.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
    error = error_of(answer, 422)
    assert error["details"]["fields"] == ["body"]
    assert "Invalid JSON" in error["message"]
    assert objects(keyed) == {}


def test_giving_feedback_needs_the_predict_scope(gateway: Gateway, keyed: Settings) -> None:
    body = {"text": "Oil prices climb", "label": "Business"}
    with httpx.Client(base_url=gateway.url) as http:
        assert error_of(http.post("/v1/feedback", json=body), 401)["code"] == "unauthorized"
        refused = http.post("/v1/feedback", json=body, headers=as_key(READER))
        assert error_of(refused, 403)["details"]["scope"] == "predict"
        assert objects(keyed) == {}
        assert http.get("/v1/feedback", headers=as_key(READER)).json() == {"feedback": []}
        given = http.post("/v1/feedback", json=body, headers=as_key(OTHER))
        assert given.status_code == 201
        assert given.json()["given_by"] == "bob"
        # bob may give feedback, not read it back.
        assert error_of(http.get("/v1/feedback", headers=as_key(OTHER)), 403)
        listed = http.get("/v1/feedback", headers=as_key(READER)).json()["feedback"]
        assert [r["given_by"] for r in listed] == ["bob"]


def test_the_gateway_role_may_store_and_read_feedback_and_no_worker_role_may(
    settings: Settings,
) -> None:
    """Held against platform.yaml's policies, as tests/test_iam.py holds every process."""
    record = Feedback.model_validate(
        {
            "text": "Oil prices climb",
            "text_sha256": text_sha256("Oil prices climb"),
            "label": "Business",
            "given_by": "ann",
            "model_version": None,
            "predicted": None,
            "agreed": None,
            "from_job": False,
            "at": datetime.now(UTC),
        }
    )
    with recording() as calls:
        calls.acting_as("gateway")
        feedback = FeedbackStore.from_settings(settings.storage)
        feedback.put(record)
        assert [r.text for r in feedback.recent(5)] == ["Oil prices climb"]
        assert feedback.all() == [record]
        assert feedback.count_since(datetime.now(UTC) - timedelta(hours=1)) == 1
    assert {made.operation for made in calls} == {"PutObject", "ListObjectsV2", "GetObject"}
    deployment = Deployment(settings.storage.bucket)
    assert not check(calls, deployment).denied
    for worker in ("predict", "evaluate", "train"):
        denied = check([replace(made, process=worker) for made in calls], deployment).denied
        assert any("PutObject" in line for line in denied), worker


def test_the_review_lists_uncertain_answers_less_those_given_feedback(
    ann: httpx.Client, keyed: Settings, redis_client: "redis.Redis[str]"
) -> None:
    # No model serves yet: nothing to review.
    empty = ann.get("/v1/feedback/review").json()
    assert empty == {"version": None, "threshold": 0.6, "uncertain": []}
    register(keyed, NEWER, timedelta(0))
    ModelRegistry(s3_client(keyed.storage), keyed.storage).promote(NEWER, "test")

    tally = ServingTally(keyed.monitor, keyed.redis.key_prefix)
    long_text = "Markets " + "and more " * 200
    texts = ["Sure thing", "Maybe sports", "Maybe business", long_text]
    answers = [
        uncertain("World", 0.97),
        uncertain("Sports", 0.41),
        uncertain("Business", 0.59),
        uncertain("Sci/Tech", 0.3),
    ]
    for text, answer in zip(texts, answers, strict=True):
        tally.add(NEWER, "onnx-int8", [answer], [8], 0.01, [text])
    tally.flush(redis_client)
    listed = ann.get("/v1/feedback/review").json()
    assert listed["version"] == NEWER
    assert [(a["text"], a["label"], a["confidence"]) for a in listed["uncertain"]] == [
        (long_text[:REVIEW_TEXT_CHARS], "Sci/Tech", 0.3),
        ("Maybe business", "Business", 0.59),
        ("Maybe sports", "Sports", 0.41),
    ]
    assert ann.get("/v1/feedback/review", params={"version": OLDER}).json()["uncertain"] == []
    assert len(ann.get("/v1/feedback/review", params={"limit": 1}).json()["uncertain"]) == 1

    # Corrected (in a spelling that cleans alike) or confirmed: no longer to review.
    for body in (
        {"text": "Maybe  sports", "label": "World", "predicted": "Sports"},
        {"text": "Maybe business", "label": "Business", "predicted": "Business"},
    ):
        assert ann.post("/v1/feedback", json=body).status_code == 201
    left = ann.get("/v1/feedback/review").json()["uncertain"]
    assert [a["label"] for a in left] == ["Sci/Tech"]

    # The sample keeps the newest KEEP per version, in Redis and in the worker between flushes;
    # a text answered again moves up rather than in twice.
    many = [f"Unsure {n}" for n in range(KEEP + 4)]
    tally.add(
        NEWER, "onnx-int8", [uncertain("World", 0.5)] * len(many), [8] * len(many), 0.01, many
    )
    tally.add(NEWER, "onnx-int8", [uncertain("World", 0.5)], [8], 0.01, [many[-KEEP]])
    tally.flush(redis_client)
    key = MonitorKeys(keyed.redis.key_prefix).uncertain(NEWER)
    assert redis_client.zcard(key) == KEEP
    assert 0 < redis_client.ttl(key) <= keyed.monitor.keep_s
    shown = [a["text"] for a in ann.get("/v1/feedback/review").json()["uncertain"]]
    assert shown == [many[-KEEP], many[-1], many[-2]]


def test_a_worker_holds_at_most_review_keep_texts_a_version_through_a_redis_outage(
    keyed: Settings, redis_client: "redis.Redis[str]"
) -> None:
    tally = ServingTally(keyed.monitor, keyed.redis.key_prefix)
    many = [f"Unsure {n}" for n in range(KEEP + 4)]
    tally.add(
        NEWER, "onnx-int8", [uncertain("World", 0.5)] * len(many), [8] * len(many), 0.01, many
    )
    # What the worker holds between flushes (private: no API shows it) is the newest KEEP.
    assert list(tally._uncertain[NEWER]) == many[-KEEP:]
    away = redis.Redis(port=1, socket_connect_timeout=0.2)
    with pytest.raises(redis.RedisError):
        tally.flush(away)
    away.close()
    tally.add(NEWER, "onnx-int8", [uncertain("Sports", 0.4)], [8], 0.01, ["Later"])
    assert list(tally._uncertain[NEWER]) == [*many[-KEEP + 1 :], "Later"]
    tally.flush(redis_client)
    key = MonitorKeys(keyed.redis.key_prefix).uncertain(NEWER)
    written = [json.loads(member)["text"] for member in redis_client.zrevrange(key, 0, -1)]
    assert written[0] == "Later"
    assert sorted(written[1:]) == sorted(many[-KEEP + 1 :])


def test_a_predict_worker_keeps_the_texts_it_was_unsure_of(
    settings: Settings, redis_client: "redis.Redis[str]", tmp_path: Path
) -> None:
    # Every answer of a softmax is below 1: all are kept.
    config = settings.replace(review_confidence=1.0)
    registry = ModelRegistry.from_settings(config.storage)
    version = publish(registry, tiny_model(tmp_path / "tiny")).version
    registry.promote(version, "test")
    store = JobStore.from_settings(config)
    texts = ["Stocks rally as the central bank holds rates", "The striker scored twice"]
    job = store.create(Job(id=new_job_id(), type=JobType.predict, params={"texts": texts}))
    model = ServingModel(config)
    try:
        serve_batch(store, model, [job.id])
        model.flush_tally(now=True)
    finally:
        model.stop()
        store.redis.close()
    key = MonitorKeys(config.redis.key_prefix).uncertain(version)
    members = [json.loads(member) for member in redis_client.zrange(key, 0, -1)]
    assert sorted(member["text"] for member in members) == sorted(texts)
    assert all(0 < member["confidence"] < 1 for member in members)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_agnews_feedback_gives_lists_and_reviews(
    gateway: Gateway,
    keyed: Settings,
    store: JobStore,
    redis_client: "redis.Redis[str]",
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ("--url", gateway.url, "--key", WRITER)
    job_id = answered_job(store, "ann", ["Oil prices climb", "Chip doubles speed"], ("World",) * 2)
    code, out, _ = run_cli(
        capsys, "feedback", "Chip doubles speed", "--label", "sci/tech", "--job", job_id,
        "--index", "1", *common,
    )  # fmt: skip
    assert code == EXIT_OK
    assert f"saved Sci/Tech (corrects World by {NEWER}): Chip doubles speed" in out
    assert objects(keyed)[today_key("Chip doubles speed")]["predicted"] == "World"

    code, out, _ = run_cli(
        capsys, "feedback", "Oil prices climb", "--label", "3", "--json", *common
    )
    assert code == EXIT_OK
    assert json.loads(out)["label"] == "Business"

    # A text that reads like a subcommand is given with `give`.
    code, out, _ = run_cli(capsys, "feedback", "give", "list", "--label", "World", *common)
    assert code == EXIT_OK
    assert today_key("list") in objects(keyed)

    code, out, _ = run_cli(capsys, "feedback", "list", "--json", *common)
    assert code == EXIT_OK
    assert [r["text"] for r in json.loads(out)["feedback"]] == [
        "list",
        "Oil prices climb",
        "Chip doubles speed",
    ]
    code, out, _ = run_cli(capsys, "feedback", "list", *common)
    assert code == EXIT_OK
    assert out.splitlines()[0].startswith("World")
    assert "ann" in out

    register(keyed, NEWER, timedelta(0))
    ModelRegistry(s3_client(keyed.storage), keyed.storage).promote(NEWER, "test")
    tally = ServingTally(keyed.monitor, keyed.redis.key_prefix)
    tally.add(NEWER, "onnx-int8", [uncertain("Sports", 0.35)], [8], 0.01, ["Cup final delayed"])
    tally.flush(redis_client)
    code, out, _ = run_cli(capsys, "feedback", "review", *common)
    assert code == EXIT_OK
    assert f"{NEWER}: answers below 60% confidence" in out
    assert "Sports     35%" in out
    assert "Cup final delayed" in out
    code, out, _ = run_cli(capsys, "feedback", "review", "--json", *common)
    assert json.loads(out)["uncertain"][0]["text"] == "Cup final delayed"

    # Refusals keep the CLI's exit codes.
    with pytest.raises(SystemExit) as usage:
        run_cli(capsys, "feedback", "Oil", "--label", "Weather", *common)
    assert usage.value.code == EXIT_USAGE
    assert "'Weather' is not a label" in capsys.readouterr().err
    code, _, err = run_cli(capsys, "feedback", "x" * (MAX_CHARS + 1), "--label", "World", *common)
    assert code == EXIT_REFUSED
    assert f"the limit is {MAX_CHARS}" in err
    reader = ("--url", gateway.url, "--key", READER)
    code, _, err = run_cli(capsys, "feedback", "Oil", "--label", "World", *reader)
    assert code == EXIT_UNAUTHORIZED
    code, out, _ = run_cli(
        capsys, "feedback", "review", "--version", "2020-01-01T00-00-00-0000", *common
    )
    assert code == EXIT_OK
    assert "nothing to review" in out
    code, _, err = run_cli(capsys, "feedback", "review", "--version", "v1", *common)
    assert code == EXIT_REFUSED
    assert "version" in err


def test_feedback_starts_a_with_feedback_pipeline_every_so_many_texts(keyed: Settings) -> None:
    due = keyed.replace(feedback_retrain_after=2)
    jobs = JobStore.from_settings(due)

    def pipelines() -> list[Job]:
        return jobs.recent(JobType.pipeline)

    with serve(due) as running, httpx.Client(base_url=running.url, headers=as_key(WRITER)) as ann:

        def give(text: str) -> None:
            answer = ann.post("/v1/feedback", json={"text": text, "label": "Sports"})
            assert answer.status_code == 201, answer.text

        give("Cup final goes to extra time")
        assert pipelines() == []
        give("Cup  final goes to\\extra time ")  # the same text once cleaned: still one
        assert pipelines() == []
        give("Relay team breaks the world record")
        (first,) = pipelines()
        assert first.params == PipelineParams(with_feedback=True)
        assert ("agnews.ingest", [first.id]) in broker_messages(due, "evaluate")
        give("Relay team breaks the world record")  # given again since: one text of two
        assert len(pipelines()) == 1
        give("Keeper saves two penalties")
        assert len(pipelines()) == 2
    jobs.redis.close()
