"""The model in service, seen: what predict workers answer is counted in Redis across the fleet,
exported on /metrics, and scored for drift against what the version answered on its holdout."""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from client.cli import EXIT_OK, main
from pipeline.ingest import Row
from pipeline.predictor import Predictor, answers
from pipeline.registry import publish, read_manifest
from shared.contracts.monitor import (
    CONFIDENCE_EDGES,
    MonitorEvent,
    MonitorReport,
    Profile,
    drift,
    stability_index,
)
from shared.monitoring import MonitorKeys, ServingTally, profile_of
from shared.registry import ModelRegistry
from shared.settings import Settings
from testkit.gateway import serve
from testkit.models import mini_dataset, tiny_model

THRESHOLDS = Settings().monitor.thresholds()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_manifest(model_dir, read_manifest(model_dir), Settings())


def served(tally: ServingTally, predictor: Predictor, rows: Sequence[Row]) -> Profile:
    """The rows answered as a predict worker answers them, counted by its tally."""
    texts = [row.text for row in rows]
    encoded = predictor.encode(texts)
    probabilities = predictor.blend(predictor.forward(encoded.ids), texts)
    predictions = answers(probabilities, encoded.truncated)
    tally.add(predictor.version, predictor.form, predictions, [len(i) for i in encoded.ids], 0.02)
    profile = Profile()
    for prediction, ids in zip(predictions, encoded.ids, strict=True):
        profile.add(prediction.label, prediction.scores.values(), len(ids), prediction.truncated)
    return profile


def test_a_profile_counts_labels_confidence_margin_and_length() -> None:
    profile = Profile()
    profile.add("Sports", [0.05, 0.9, 0.03, 0.02], 30, False)
    profile.add("World", [0.4, 0.37, 0.13, 0.1], 200, True)
    assert profile.n == 2
    assert profile.labels == {"Sports": 1, "World": 1}
    assert profile.confidence[CONFIDENCE_EDGES.index(0.9)] == 1  # 0.9 falls in (0.8, 0.9]
    assert profile.confidence[CONFIDENCE_EDGES.index(0.4)] == 1
    assert profile.margin[0] == 1  # 0.4 - 0.37: the first bucket, up to 0.05
    assert profile.tokens[-1] == 1
    assert profile.truncated == 1
    assert profile.merge(profile).n == 4


def test_stability_index_is_nought_for_the_same_mix_and_large_for_one_label() -> None:
    assert stability_index([250, 250, 250, 250], [100, 100, 100, 100]) == 0.0
    assert stability_index([250, 250, 250, 250], [0, 400, 0, 0]) > 2.0
    assert 0 < stability_index([250, 250, 250, 250], [110, 90, 100, 100]) < 0.05


def test_drift_is_not_scored_before_the_window_holds_enough_texts() -> None:
    reference, live = Profile(), Profile()
    for _ in range(100):
        reference.add("World", [0.9, 0.05, 0.03, 0.02], 30, False)
        live.add("Sports", [0.05, 0.9, 0.03, 0.02], 30, False)
    early = drift(reference, live, ["World", "Sports"], THRESHOLDS, min_texts=101)
    assert all(score.psi is None and not score.drifted for score in early)
    late = drift(reference, live, ["World", "Sports"], THRESHOLDS, min_texts=100)
    assert {score.signal for score in late if score.drifted} == {"labels"}


def test_the_fleets_counts_add_up_in_redis_and_expire_with_the_window(
    settings: Settings, predictor: Predictor, redis_client: "redis.Redis[str]"
) -> None:
    rows = mini_dataset().test.rows
    keys = MonitorKeys(settings.redis.key_prefix)
    workers = [ServingTally(settings.monitor, settings.redis.key_prefix) for _ in range(2)]
    expected = served(workers[0], predictor, rows[:40]).merge(
        served(workers[1], predictor, rows[40:80])
    )
    now = time.time()
    for tally in workers:
        tally.flush(redis_client, now)
    window = profile_of(
        redis_client.hgetall(key) for key in keys.window(predictor.version, now, 60)
    )
    assert window == expected
    assert window.n == 80
    total = redis_client.hgetall(keys.total(predictor.version))
    assert int(total["n"]) == 80
    assert int(total[f"forward:{predictor.form}:17-64:passes"]) == 2
    assert 0 < redis_client.ttl(keys.minute(predictor.version, int(now // 60))) <= 62 * 60
    assert 0 < redis_client.ttl(keys.total(predictor.version)) <= settings.monitor.keep_s
    assert redis_client.zrange(keys.versions, 0, -1) == [predictor.version]


def test_counts_wait_through_a_redis_outage_for_the_next_flush(
    settings: Settings, predictor: Predictor, redis_client: "redis.Redis[str]"
) -> None:
    rows = mini_dataset().test.rows
    tally = ServingTally(settings.monitor, settings.redis.key_prefix)
    first = served(tally, predictor, rows[:30])
    away = redis.Redis(port=1, socket_connect_timeout=0.2)
    with pytest.raises(redis.RedisError):
        tally.flush(away)
    both = first.merge(served(tally, predictor, rows[30:50]))
    now = time.time()
    tally.flush(redis_client, now)
    keys = MonitorKeys(settings.redis.key_prefix)
    window = [redis_client.hgetall(key) for key in keys.window(predictor.version, now, 2)]
    assert profile_of(window) == both


def test_metrics_export_the_fleets_counts_and_drift_is_raised_by_one_topic_only(
    settings: Settings, model_dir: Path, predictor: Predictor, redis_client: "redis.Redis[str]"
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    info = publish(registry, model_dir)
    registry.promote(info.version, "monitor test")
    assert info.metrics.profile is not None
    assert info.metrics.profile.n > 0
    rows = mini_dataset().test.rows
    config = settings.replace(monitor_check_s=0.2, monitor_min_texts=len(rows) // 8)
    tally = ServingTally(config.monitor, config.redis.key_prefix)
    keys = MonitorKeys(config.redis.key_prefix)
    stream = keys.events
    with serve(config) as gateway, httpx.Client(base_url=gateway.url) as http:
        # The holdout itself, as live traffic: nothing has drifted.
        served(tally, predictor, rows)
        tally.flush(redis_client)
        report = _report_after_a_check(http, info.version)
        assert report["live"]["n"] == len(rows)
        assert report["live"]["labels"] == info.metrics.profile.labels
        assert [s["drifted"] for s in report["drift"]] == [False] * 4
        assert redis_client.xlen(stream) == 0
        assert redis_client.get(keys.drifted) == "0"

        metrics = http.get("/metrics").text
        for label, count in info.metrics.profile.labels.items():
            line = f'agnews_predictions_total{{label="{label}",version="{info.version}"}}'
            assert f"{line} {float(count)}" in metrics
        assert f'agnews_prediction_confidence_bucket{{le="+Inf",version="{info.version}"}}' in (
            metrics
        )
        assert "agnews_predict_forward_seconds_bucket{" in metrics

        # Then only Sports for a while: the label mix drifts, one event says so.
        redis_client.delete(*keys.window(info.version, time.time(), 60))
        sports = [row for row in rows if row.label == 1]
        for _ in range(3):
            served(tally, predictor, sports)
        tally.flush(redis_client)
        deadline = time.monotonic() + 10
        while redis_client.xlen(stream) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the check's other signals
        events = [fields for _, fields in redis_client.xrange(stream)]
        assert {fields["type"] for fields in events} == {"drift"}
        signals = [MonitorEvent.model_validate_json(fields["data"]).signal for fields in events]
        assert "labels" in signals
        assert len(signals) == len(set(signals))
        assert f'agnews_drift_exceeded{{signal="labels",version="{info.version}"}} 1.0' in (
            http.get("/metrics").text
        )
        report = http.get(f"/v1/models/{info.version}/monitor").json()
        labels = next(s for s in report["drift"] if s["signal"] == "labels")
        assert labels["drifted"]
        assert labels["psi"] > labels["threshold"]
        assert redis_client.get(keys.drifted) == str(len(signals))  # what CloudWatch is sent
        time.sleep(0.5)  # more checks: no event is repeated within drift_alert_every_s
        assert redis_client.xlen(stream) == len(signals)


def _report_after_a_check(http: httpx.Client, version: str) -> dict[str, Any]:
    time.sleep(0.5)  # a drift check or two
    answer = http.get(f"/v1/models/{version}/monitor")
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


def test_an_unknown_version_has_no_monitor(settings: Settings) -> None:
    with serve(settings) as gateway, httpx.Client(base_url=gateway.url) as http:
        answer = http.get("/v1/models/2026-01-01T00-00-00-abcd/monitor")
        assert answer.status_code == 404


def test_the_terminal_shows_productions_window_against_its_holdout(
    settings: Settings,
    model_dir: Path,
    predictor: Predictor,
    redis_client: "redis.Redis[str]",
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    info = publish(registry, model_dir)
    registry.promote(info.version, "monitor test")
    tally = ServingTally(settings.monitor, settings.redis.key_prefix)
    live = served(tally, predictor, mini_dataset().test.rows[:60])
    tally.flush(redis_client)
    with serve(settings) as gateway:
        assert main(["models", "monitor", "--url", gateway.url]) == EXIT_OK
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"{info.version}: 60 texts in the last 60 min, 60 since it served"
        sports = live.labels.get("Sports", 0) / 60
        assert any(line.split()[:2] == ["Sports", f"{sports:.1%}"] for line in out)
        assert any(line.startswith("drift labels") and "PSI      -" in line for line in out)
        assert main(["models", "monitor", info.version, "--json", "--url", gateway.url]) == 0
        report = MonitorReport.model_validate_json(capsys.readouterr().out)
        assert report.live == live
        assert report.reference == info.metrics.profile
