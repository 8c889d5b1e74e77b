"""The terminal client and its Python class against a real gateway, Redis and a stand-in worker."""

import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from client.api import GatewayClient, GatewayError
from client.cli import (
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    main,
)
from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import (
    EventType,
    Job,
    JobStatus,
    JobType,
    PipelineParams,
    TrainParams,
    new_job_id,
)
from shared.jobstore import JobStore
from shared.settings import Settings
from testkit.archives import MINI_ARCHIVE
from testkit.gateway import FakeWorker, Gateway, serve
from testkit.job_results import predict_result, train_result
from testkit.servers import free_port
from tests.flaky_proxy import flaky_proxy


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    fast = settings.replace(predict_wait_s=10.0)
    with serve(fast) as running:
        yield running


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def train_job(store: JobStore) -> Job:
    params = TrainParams(dataset="s3://agnews/incoming/a/archive.zip")
    return store.create(Job(id=new_job_id(), type=JobType.train, params=params))


def play_training(store: JobStore, job_id: str, steps: int, pause_s: float) -> None:
    store.start(job_id)
    for step in range(1, steps + 1):
        time.sleep(pause_s)
        store.progress(job_id, {"stage": "train", "step": step, "total": steps})
    store.succeed(job_id, train_result())


def test_follow_survives_a_dropped_connection_without_losing_or_repeating_events(
    gateway: Gateway, store: JobStore
) -> None:
    job = train_job(store)
    worker = threading.Thread(target=play_training, args=(store, job.id, 30, 0.02))
    port = urlparse(gateway.url).port
    assert port is not None
    with flaky_proxy(port, cut_after_bytes=700) as proxy:
        worker.start()
        with GatewayClient(proxy.url) as client:
            followed = list(client.events(job.id))
        worker.join()
        assert proxy.connections >= 2, "the proxy never cut the stream"
    stored = store.events(job.id)
    assert [event.id for event in followed] == [event.id for event in stored]
    assert followed[-1].type is EventType.result
    assert [event.data.get("step") for event in followed if event.type is EventType.progress] == [
        *range(1, 31)
    ]


def test_follow_reads_through_the_heartbeats_of_a_quiet_stream(
    settings: Settings, store: JobStore
) -> None:
    """A stage that says nothing for a while (evaluation) leaves only heartbeat comments on the
    stream, which the client's SSE parser passes on as empty messages: they are no events."""
    job = train_job(store)
    with serve(settings.replace(sse_heartbeat_s=0.02)) as quiet, GatewayClient(quiet.url) as client:
        worker = threading.Thread(target=play_training, args=(store, job.id, 2, 0.3))
        worker.start()
        followed = list(client.events(job.id))
        worker.join()
    assert [event.id for event in followed] == [event.id for event in store.events(job.id)]


def test_no_job_id_reads_as_an_option_on_the_command_line() -> None:
    ids = [new_job_id() for _ in range(5000)]  # about 80 would start with "-" by chance
    assert not [job_id for job_id in ids if job_id.startswith("-")]
    assert {len(job_id) for job_id in ids} == {22}


def test_submit_list_show_and_cancel_print_json_and_exit_codes(
    gateway: Gateway, settings: Settings, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", gateway.url, "--json"]
    dataset = f"s3://{settings.storage.bucket}/incoming/x/archive.zip"
    code, out, _ = run(capsys, "jobs", "submit", "train", dataset, "--max-steps", "3", *url)
    assert code == EXIT_OK
    submitted = Job.model_validate_json(out)
    assert submitted.type is JobType.train
    assert submitted.params == TrainParams(dataset=dataset, max_steps=3)
    assert store.get(submitted.id).status is JobStatus.queued

    code, out, _ = run(capsys, "jobs", "list", "--type", "train", *url)
    assert code == EXIT_OK
    assert [job["id"] for job in json.loads(out)] == [submitted.id]

    code, out, _ = run(capsys, "jobs", "cancel", submitted.id, *url)
    assert (code, Job.model_validate_json(out).status) == (EXIT_OK, JobStatus.cancelled)
    code, _, err = run(capsys, "jobs", "cancel", submitted.id, *url)
    assert code == EXIT_REFUSED
    assert "already ended (cancelled)" in err
    code, out, err = run(capsys, "jobs", "show", "no-such-job", *url)
    assert (code, out) == (EXIT_NOT_FOUND, "")
    assert "does not exist" in err
    code, _, err = run(capsys, "jobs", "submit", "pipeline", "s3://b/notes.txt", *url)
    assert code == EXIT_REFUSED
    assert ".zip" in err
    code, out, _ = run(capsys, "jobs", "submit", "pipeline", "--with-feedback", *url)
    assert code == EXIT_OK
    with_feedback = store.get(Job.model_validate_json(out).id).params
    assert with_feedback == PipelineParams(with_feedback=True)
    code, _, err = run(capsys, "jobs", "submit", "pipeline", *url)
    assert code == EXIT_REFUSED
    assert "name the dataset" in err
    code, _, err = run(capsys, "jobs", "submit", "pipeline", __file__, "--with-feedback", *url)
    assert code == EXIT_REFUSED
    assert "a dataset in the bucket" in err
    archive = str(MINI_ARCHIVE)
    code, _, err = run(capsys, "jobs", "submit", "pipeline", archive, "--max-steps", "5", *url)
    assert code == EXIT_REFUSED
    assert "--max-steps: a local archive starts the pipeline its upload starts" in err


def test_follow_exits_1_when_the_job_fails_and_prints_events_as_json_lines(
    gateway: Gateway, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    job = train_job(store)
    store.start(job.id)
    store.fail(job.id, ErrorInfo(code="dataset_invalid", message="train.csv line 3: bad label"))
    code, out, _ = run(capsys, "jobs", "follow", job.id, "--url", gateway.url, "--json")
    assert code == EXIT_JOB_FAILED
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["type"] for line in lines] == ["status", "status", "status", "error"]
    assert lines[-1]["data"]["message"] == "train.csv line 3: bad label"


def test_classify_prints_each_text_with_its_label(
    gateway: Gateway, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    def answer(store: JobStore, job_id: str) -> None:
        store.start(job_id)
        store.succeed(job_id, predict_result("v7", ("Business", "Sports")))

    with FakeWorker(settings, "predict", answer):
        code, out, _ = run(capsys, "classify", "Stocks rally", "Federer wins", "--url", gateway.url)
    assert code == EXIT_OK
    assert out.splitlines() == [
        "Business  100.0%  Stocks rally",
        "Sports    100.0%  Federer wins",
    ]


def test_an_unreachable_gateway_is_exit_6_with_its_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "jobs", "list", "--url", url)
    assert (code, out) == (EXIT_UNAVAILABLE, "")
    assert url in err


def test_the_client_raises_the_gateways_typed_error(gateway: Gateway) -> None:
    with GatewayClient(gateway.url) as client, pytest.raises(GatewayError) as caught:
        client.job("nope")
    assert (caught.value.status, caught.value.error.code) == (404, "not_found")
