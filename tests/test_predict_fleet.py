"""The predict fleet on the real local stack: Celery batches, the 503 before any model, a model
swap under steady load that loses and fails nothing, and a burst whose jobs share messages."""

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pipeline.registry import publish
from pipeline.serving import load_serving
from shared.registry import ModelRegistry
from testkit.models import copy_as_new_version, tiny_model
from testkit.stack import LiveStack, live_stack

pytestmark = pytest.mark.slow

CLIENT_TEXTS = [
    "Stocks rally as the central bank holds rates",
    "The striker scored twice in the cup final",
    "New chip doubles battery life of phones",
    "Rebels seize the capital after peace talks fail",
    "Quarterly profit beats forecasts at the carmaker",
    "Astronomers find water on a distant moon",
    "Tennis champion withdraws with a knee injury",
    "Oil prices slide as supply grows",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    # Two predict workers, as `make up` starts on two cores: both swap, neither fails a request.
    with live_stack(
        tmp_path_factory.mktemp("fleet"), queues=("predict",), predict_workers=2, model_poll_s=0.5
    ) as running:
        yield running


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def promote(stack: LiveStack, model_dir: Path) -> str:
    registry = ModelRegistry.from_settings(stack.settings.storage)
    version = publish(registry, model_dir).version
    registry.promote(version, "test")
    return version


def serving_workers(stack: LiveStack, version: str) -> float:
    """How many predict workers the gateway's /metrics says serve `version`."""
    text = httpx.get(f"{stack.url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agnews_serving_workers{") and f'version="{version}"' in line
    )


class Client(threading.Thread):
    """Sends its own text, one request at a time, until told to stop."""

    def __init__(self, url: str, text: str, stop: threading.Event) -> None:
        super().__init__()
        self.url, self.text, self.stop = url, text, stop
        self.answers: list[tuple[int, dict[str, Any]]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                response = http.post("/v1/predict", json={"text": self.text})
                self.answers.append((response.status_code, response.json()))

    def versions(self) -> list[str]:
        return [body.get("model_version", "") for _, body in self.answers]


def test_before_any_model_predictions_are_refused_saying_what_to_do(stack: LiveStack) -> None:
    response = httpx.post(f"{stack.url}/v1/predict", json={"text": "Stocks rally"}, timeout=30)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "no_production_model"
    assert "archive.zip" in error["message"]


def test_a_model_swap_under_steady_load_loses_and_fails_nothing(
    stack: LiveStack, model_dir: Path, tmp_path: Path
) -> None:
    first = promote(stack, model_dir)
    # Both workers serve the first version before the clients start. A worker's first load
    # (download, then its forms and slice sizes timed: about 10 s on two busy cores) holds
    # requests past predict_wait_s, which answers 202 with the job; the swap below is what is
    # under load.
    _wait(lambda: serving_workers(stack, first) == 2)
    stop = threading.Event()
    clients = [Client(stack.url, text, stop) for text in CLIENT_TEXTS]
    for client in clients:
        client.start()
    try:
        _wait(lambda: all(client.versions().count(first) >= 5 for client in clients))
        copy_as_new_version(model_dir, tmp_path / "second")
        second = promote(stack, tmp_path / "second")
        _wait(lambda: all(client.versions()[-5:] == [second] * 5 for client in clients))
    finally:
        stop.set()
        for client in clients:
            client.join()

    served = {
        version: load_serving(version, stack.settings, tmp_path / "models")
        for version in (first, second)
    }
    for client in clients:
        assert {status for status, _ in client.answers} == {200}
        assert set(client.versions()) == {first, second}
        expected = {version: model.predict([client.text]) for version, model in served.items()}
        for _, body in client.answers:
            (answer,) = body["predictions"]
            (truth,) = expected[body["model_version"]]
            assert answer["label"] == truth.label
            assert np.allclose(
                list(answer["scores"].values()), list(truth.scores.values()), atol=1e-3
            )


def test_a_burst_of_requests_each_gets_the_answer_to_its_own_text(
    stack: LiveStack, model_dir: Path, tmp_path: Path
) -> None:
    # Sent at once, the requests' jobs go to the workers several to a message.
    copy_as_new_version(model_dir, tmp_path / "burst")
    promote(stack, tmp_path / "burst")
    texts = CLIENT_TEXTS * 4

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            return await asyncio.gather(
                *(http.post("/v1/predict", json={"text": text}) for text in texts)
            )

    responses = asyncio.run(burst())
    assert [response.status_code for response in responses] == [200] * len(texts)
    served: dict[str, Any] = {}
    for text, response in zip(texts, responses, strict=True):
        body = response.json()
        version = body["model_version"]
        if version not in served:
            served[version] = load_serving(version, stack.settings, tmp_path / version)
        ((answer,), (truth,)) = body["predictions"], served[version].predict([text])
        assert answer["label"] == truth.label


def test_a_challenger_is_scored_on_its_share_after_the_answer_and_promoted_from_there(
    stack: LiveStack, model_dir: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry.from_settings(stack.settings.storage)
    copy_as_new_version(model_dir, tmp_path / "challenger")
    challenger = publish(registry, tmp_path / "challenger").version
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        production = http.get("/v1/models/production").json()["version"]
        assert http.get("/v1/models/challenger").status_code == 404
        refused = http.post(f"/v1/models/{production}/challenge", json={})
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "conflict")
        named = http.post(f"/v1/models/{challenger}/challenge", json={"share": 0.5})
        assert named.status_code == 200, named.text
        assert http.get("/v1/models/challenger").json()["version"] == challenger

        def report() -> dict[str, Any]:
            body = http.get(f"/v1/models/{production}/monitor").json()["challenge"]
            assert body["challenger"] == challenger
            return dict(body)

        def send(texts: list[str]) -> None:
            for start in range(0, len(texts), 8):
                answer = http.post("/v1/predict", json={"texts": texts[start : start + 8]})
                assert answer.status_code == 200, answer.text
                assert answer.json()["model_version"] == production

        # Both workers load the challenger within a poll or two; then a clean count.
        _wait(lambda: send(CLIENT_TEXTS) or report()["scored"] > 0, 60)
        time.sleep(2 * stack.settings.serving.model_poll_s)
        flush_s = stack.settings.monitor.flush_s
        time.sleep(flush_s + 1)
        before = report()["scored"]
        texts = [f"{text} ({copy})" for copy in range(40) for text in CLIENT_TEXTS]
        send(texts)
        time.sleep(flush_s + 1)
        _wait(lambda: report()["scored"] == report()["scored"] > before, 30)
        figures = report()
        scored = figures["scored"] - before
        assert 0.5 * len(texts) * 0.8 < scored < 0.5 * len(texts) * 1.2, figures
        assert figures["failed"] == 0
        assert figures["agreement"] >= 0.9  # the same weights; forms may differ per worker
        assert figures["mean_seconds"] > 0
        metrics = http.get("/metrics").text
        assert f'agnews_challenger_texts_total{{challenger="{challenger}"' in metrics

        promoted = http.post(f"/v1/models/{challenger}/promote", json={"reason": "it agreed"})
        assert promoted.status_code == 200
        assert http.get("/v1/models/challenger").status_code == 404
        _wait(
            lambda: (
                http.post("/v1/predict", json={"text": CLIENT_TEXTS[0]}).json()["model_version"]
                == challenger
            )
        )
        dismissed = http.delete("/v1/models/challenger")
        assert dismissed.json()["error"]["code"] == "challenger_not_found"


def _wait(condition: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
