"""A prediction the fleet could not answer in time is refused at once, 503 with Retry-After, and
a training job while the train queue is full; /metrics counts what was refused."""

import logging
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.admission import MAX_RETRY_AFTER_S, REFRESH_S, SATURATED_S, Overloaded
from shared.contracts.serving import ServingWorker
from shared.contracts.stages import ROUTES, TRAIN
from shared.fleet import announce
from shared.jobstore import JobStore
from shared.settings import Settings
from testkit.gateway import Gateway, serve, wait_until


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    with serve(settings.replace(predict_wait_s=0.5)) as running:
        yield running


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        yield http


def announce_fleet(store: JobStore, settings: Settings, texts_per_s: float) -> None:
    worker = ServingWorker(
        worker="host:1", version="v1", form="onnx-int8", texts_per_s={"onnx-int8": texts_per_s}
    )
    announce(store.redis, settings, worker)


def shed_count(client: httpx.Client, kind: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'agnews_gateway_shed_total{{kind="{kind}"}}'):
            return float(line.split()[1])
    return 0.0


def test_a_prediction_beyond_what_the_fleet_answers_in_time_is_refused_at_once(
    client: httpx.Client, gateway: Gateway, store: JobStore, settings: Settings
) -> None:
    # A fleet that timed 40 texts/s (20 trusted) holds 10 texts of backlog within 0.5 s.
    announce_fleet(store, settings, 40.0)
    store.redis.set(store.keys.pending, 30)
    admission = gateway.services.admission
    wait_until(lambda: admission.pending == 30 and admission.rate > 0, timeout=10 * REFRESH_S + 5)

    refused = client.post("/v1/predict", json={"text": "Stocks rally as rates fall"})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert store.recent() == []  # nothing stored, nothing queued
    assert shed_count(client, "predict") == 1

    store.redis.set(store.keys.pending, 0)
    wait_until(lambda: admission.pending == 0, timeout=10 * REFRESH_S + 5)
    waited = client.post("/v1/predict", json={"text": "Stocks rally as rates fall"})
    assert waited.status_code == 202  # taken; no worker here to answer it in 0.5 s


def test_a_fleet_answering_next_to_nothing_asks_for_a_retry_within_a_minute(
    client: httpx.Client, gateway: Gateway, store: JobStore, settings: Settings
) -> None:
    announce_fleet(store, settings, 1e-6)
    store.redis.set(store.keys.pending, 1_000)
    admission = gateway.services.admission
    wait_until(
        lambda: admission.pending == 1_000 and admission.rate > 0, timeout=10 * REFRESH_S + 5
    )

    refused = client.post("/v1/predict", json={"text": "Stocks rally as rates fall"})
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) == MAX_RETRY_AFTER_S
    assert refused.json()["error"]["details"]["retry_after_s"] == MAX_RETRY_AFTER_S


def test_without_a_fleet_to_estimate_from_nothing_is_refused(
    client: httpx.Client, store: JobStore
) -> None:
    store.redis.set(store.keys.pending, 100_000)
    answer = client.post("/v1/predict", json={"text": "Stocks rally as rates fall"})
    assert answer.status_code == 202


def test_a_training_job_is_refused_while_the_train_queue_is_full(
    client: httpx.Client, store: JobStore, settings: Settings
) -> None:
    queue = ROUTES[TRAIN]
    body = {"type": "pipeline", "dataset": "incoming/x/archive.zip"}
    store.redis.lpush(queue, *["waiting"] * settings.gateway.train_queue_max)
    try:
        refused = client.post("/v1/jobs", json=body)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "60"
        assert shed_count(client, "jobs") == 1
        store.redis.rpop(queue)
        assert client.post("/v1/jobs", json=body).status_code == 202
    finally:
        store.redis.delete(queue)


def test_a_pause_in_answers_is_not_taken_for_a_fall_in_capacity(
    gateway: Gateway, store: JobStore
) -> None:
    """Every worker loading a new model answers nothing for a while: the most the fleet
    answered at in the last minute still counts, so nothing is refused for it."""
    admission = gateway.services.admission
    worker = ServingWorker(worker="host:2", version="v1", form="onnx-int8", serving_texts_per_s=1.0)
    announce(store.redis, gateway.services.settings, worker)
    wait_until(lambda: admission.announced_per_s == 1.0, timeout=15)
    for _ in range(12):
        store.redis.incrby(store.keys.answered, 25)  # about 100 texts/s
        time.sleep(REFRESH_S)
    time.sleep(2 * REFRESH_S)  # the last answers read: the peak is whole
    peak = admission.rate
    assert peak > 20
    time.sleep(20 * REFRESH_S)  # no answers: the recent rate decays ...
    assert admission.observed_per_s < peak / 2
    assert admission.rate == pytest.approx(peak, rel=0.01)  # ... the peak holds
    store.redis.set(store.keys.pending, int(0.4 * peak * 0.5))  # within 0.5 s at the peak
    wait_until(lambda: admission.pending > 0, timeout=10 * REFRESH_S + 5)
    admission.admit(1)


def test_a_fleet_asked_little_is_not_taken_for_a_slow_one(
    client: httpx.Client, gateway: Gateway, store: JobStore, settings: Settings
) -> None:
    """Workers that answered a trickle say what they answer while busy: a few texts waiting on
    a fleet that answers hundreds a second are taken, however few it answered lately."""
    worker = ServingWorker(
        worker="host:3", version="v1", form="onnx-int8", serving_texts_per_s=300.0
    )
    announce(store.redis, settings, worker)
    store.redis.incrby(store.keys.answered, 3)
    store.redis.set(store.keys.pending, 40)
    admission = gateway.services.admission
    wait_until(lambda: admission.pending == 40, timeout=10 * REFRESH_S + 5)
    wait_until(lambda: admission.announced_per_s == 300.0, timeout=15)
    assert client.post("/v1/predict", json={"text": "Stocks rally"}).status_code == 202


def test_a_saturated_fleet_is_taken_at_what_it_answers_not_at_what_it_announced(
    gateway: Gateway, store: JobStore
) -> None:
    """A burst: workers said 1,000 texts/s alone, but with their cores shared they answer 40
    while 200 wait. Once that has lasted `SATURATED_S`, the 40 is the fleet's rate, and what
    waits beyond 40 x predict_wait_s is refused; when the backlog clears the workers' word
    leads again."""
    admission = gateway.services.admission
    worker = ServingWorker(
        worker="host:4", version="v1", form="onnx-int8", serving_texts_per_s=1000.0
    )
    announce(store.redis, gateway.services.settings, worker)
    wait_until(lambda: admission.announced_per_s == 1000.0, timeout=15)
    store.redis.set(store.keys.pending, 200)
    started = time.monotonic()
    while time.monotonic() - started < SATURATED_S + 4:
        store.redis.incrby(store.keys.answered, 10)  # 40 texts/s
        time.sleep(REFRESH_S)
        if time.monotonic() - started < SATURATED_S - 1:
            assert not admission.saturated
    assert admission.saturated
    assert 20 < admission.rate < 60
    with pytest.raises(Overloaded):
        admission.admit(1)  # 200 wait: five seconds at 40 texts/s, more than 0.5 s
    store.redis.set(store.keys.pending, 0)
    wait_until(lambda: not admission.saturated, timeout=10 * REFRESH_S + 5)
    assert admission.rate == 1000.0
    admission.admit(1)


def test_shedding_is_logged_once_a_while_not_once_a_request(
    client: httpx.Client,
    gateway: Gateway,
    store: JobStore,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    announce_fleet(store, settings, 40.0)
    store.redis.set(store.keys.pending, 30)
    admission = gateway.services.admission
    wait_until(lambda: admission.pending == 30 and admission.rate > 0, timeout=10 * REFRESH_S + 5)
    for _ in range(20):
        assert client.post("/v1/predict", json={"text": "Stocks rally"}).status_code == 503
    assert shed_count(client, "predict") == 20
    warnings = [record.getMessage() for record in caplog.records if "busy" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith("; 1 refused since the last warning")
