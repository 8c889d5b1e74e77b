"""A challenger scored on live traffic: sampled after production answered, its agreement and
strongest disagreements kept in Redis for the monitor, its failures never production's."""

import random
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis
import torch

from client.cli import EXIT_NOT_FOUND, EXIT_OK, main
from gateway.monitor import challenge_report
from pipeline.predictor import Predictor, answers
from pipeline.registry import publish, read_manifest
from shared.contracts.errors import ChallengerNotFound, Conflict, ModelNotFound
from shared.contracts.models import ChallengerPointer
from shared.contracts.monitor import DISAGREEMENT_CHARS
from shared.contracts.results import Prediction
from shared.monitoring import DISAGREEMENTS_KEPT, MonitorKeys, ServingTally
from shared.redis_clients import text_fields
from shared.registry import ModelRegistry
from shared.settings import Settings
from testkit.gateway import serve
from testkit.models import copy_as_new_version, mini_dataset, tiny_model
from workers.challenger import ChallengerScorer
from workers.models import ServingModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def production(model_dir: Path) -> Predictor:
    return Predictor.from_manifest(model_dir, read_manifest(model_dir), Settings())


@pytest.fixture(scope="module")
def rotated(model_dir: Path) -> Predictor:
    """The same model with its head's rows rotated: it names the next label where the other
    names one, so the two disagree on most texts."""
    predictor = Predictor.from_manifest(model_dir, read_manifest(model_dir), Settings())
    head = predictor.model.classifier
    with torch.no_grad():
        head.weight.copy_(head.weight.roll(1, 0))
        head.bias.copy_(head.bias.roll(1, 0))
    predictor.linear = None
    predictor.version = "2026-01-02T00-00-00-beef"
    return predictor


def answered(predictor: Predictor, texts: Sequence[str]) -> list[Prediction]:
    encoded = predictor.encode(texts)
    return answers(predictor.blend(predictor.forward(encoded.ids), texts), encoded.truncated)


def test_a_challenger_scores_its_share_and_keeps_its_strongest_disagreements(
    settings: Settings,
    production: Predictor,
    rotated: Predictor,
    redis_client: "redis.Redis[str]",
) -> None:
    tally = ServingTally(settings.monitor, settings.redis.key_prefix)
    scorer = ChallengerScorer(tally, threading.Lock(), 10_000, random.Random(7).random)
    scorer.name(rotated.version, 0.25, rotated)
    rows = mini_dataset().test.rows
    texts = [f"({copy}) {row.text}" for copy in range(4) for row in rows]
    ours = answered(production, texts)
    for start in range(0, len(texts), 16):
        scorer.offer(production.version, texts[start : start + 16], ours[start : start + 16])
    while scorer.step():
        pass
    tally.flush(redis_client)

    keys = MonitorKeys(settings.redis.key_prefix)
    fields = text_fields(redis_client.hgetall(keys.challenge(rotated.version, production.version)))
    kept = redis_client.zrevrange(keys.disagreements(rotated.version, production.version), 0, -1)
    pointer = ChallengerPointer(
        version=rotated.version, share=0.25, named_at="2026-01-02T00:00:00Z"
    )
    report = challenge_report(pointer, production.version, fields, kept)

    expected = len(texts) * 0.25
    assert expected * 0.6 < report.scored < expected * 1.4
    kept_texts = [text[:DISAGREEMENT_CHARS] for text in texts]
    theirs = dict(zip(kept_texts, answered(rotated, texts), strict=True))
    mine = dict(zip(kept_texts, ours, strict=True))
    agreed = report.agreed
    assert report.agreement is not None
    assert report.agreement < 0.5
    assert sum(label.scored for label in report.by_label) == report.scored
    assert sum(label.agreed for label in report.by_label) == agreed
    assert report.profile.n == report.scored
    assert report.failed == 0
    assert report.passes >= 1
    assert report.mean_seconds is not None
    assert report.mean_seconds > 0
    assert len(report.disagreements) == min(DISAGREEMENTS_KEPT, report.scored - agreed)
    strengths = [d.strength for d in report.disagreements]
    assert strengths == sorted(strengths, reverse=True)
    for disagreement in report.disagreements:
        assert disagreement.text in mine
        assert disagreement.production_label == mine[disagreement.text].label
        assert disagreement.challenger_label == theirs[disagreement.text].label
        assert disagreement.production_label != disagreement.challenger_label
    assert redis_client.ttl(keys.challenge(rotated.version, production.version)) > 0


def test_a_challenger_that_falls_behind_skips_rather_than_queues(
    settings: Settings, production: Predictor, rotated: Predictor
) -> None:
    tally = ServingTally(settings.monitor, settings.redis.key_prefix)
    scorer = ChallengerScorer(tally, threading.Lock(), 8, lambda: 0.0)
    scorer.name(rotated.version, 1.0, rotated)
    texts = [row.text for row in mini_dataset().test.rows[:20]]
    scorer.offer(production.version, texts, answered(production, texts))
    assert scorer.skipped == 12
    scorer.name(None, 0.0, None)
    assert not scorer.step()  # dismissed: what waited is dropped


def test_a_challenger_that_cannot_answer_counts_failures_and_costs_production_nothing(
    settings: Settings, model_dir: Path, tmp_path: Path, redis_client: "redis.Redis[str]"
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    serving = publish(registry, model_dir).version
    registry.promote(serving, "test")
    broken = copy_as_new_version(model_dir, tmp_path / "broken").version
    publish(registry, tmp_path / "broken")
    registry.name_challenger(broken, 1.0)
    loads: list[str] = []

    def load(version: str, config: Settings, cache: Path) -> Predictor:
        loads.append(version)
        if version == broken:
            raise OSError("the challenger's files are unreadable")
        return Predictor.load(model_dir, config)

    model = ServingModel(settings, load)
    model.refresh()
    assert model.current().version == serving
    assert (model.challenger.version, model.challenger.predictor) == (broken, None)
    model.refresh()  # not loaded again before model_retry_s
    assert loads == [serving, broken]

    texts = [row.text for row in mini_dataset().test.rows[:10]]
    model.challenger.offer(serving, texts, answered(model.current(), texts))
    assert model.challenger.step()
    model.flush_tally(now=True)
    keys = MonitorKeys(settings.redis.key_prefix)
    figures = redis_client.hgetall(keys.challenge(broken, serving))
    assert figures == {"failed": "10"}

    registry.dismiss_challenger()
    model.refresh()
    assert model.challenger.version is None
    assert model.current().version == serving


def test_promoting_the_challenger_serves_the_model_already_loaded(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    first = publish(registry, model_dir).version
    registry.promote(first, "test")
    second = copy_as_new_version(model_dir, tmp_path / "second").version
    publish(registry, tmp_path / "second")
    moved: list[tuple[str, str | None]] = []
    registry.observers.append(lambda alias, version: moved.append((alias, version)))
    registry.name_challenger(second, 0.5, "a retrained candidate")
    loads: list[str] = []

    def load(version: str, config: Settings, cache: Path) -> Predictor:
        loads.append(version)
        predictor = Predictor.load(model_dir, config)
        predictor.version = version
        return predictor

    model = ServingModel(settings, load)
    model.refresh()
    challenger = model.challenger.predictor
    assert challenger is not None
    assert challenger.version == second

    registry.promote(second, "it agreed and was surer")
    assert registry.challenger() is None
    assert moved == [("challenger", second), ("production", second), ("challenger", None)]
    model.refresh()
    assert model.current() is challenger
    assert model.challenger.version is None
    assert loads == [first, second]


def test_only_a_registered_version_other_than_production_can_challenge(
    settings: Settings, model_dir: Path
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    serving = publish(registry, model_dir).version
    registry.promote(serving, "test")
    with pytest.raises(Conflict):
        registry.name_challenger(serving, 0.1)
    with pytest.raises(ModelNotFound):
        registry.name_challenger("2026-01-01T00-00-00-abcd", 0.1)
    with pytest.raises(ChallengerNotFound):
        registry.dismiss_challenger()
    assert registry.challenger() is None


def test_the_terminal_names_shows_and_dismisses_a_challenger(
    settings: Settings,
    model_dir: Path,
    tmp_path: Path,
    production: Predictor,
    redis_client: "redis.Redis[str]",
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    serving = publish(registry, model_dir).version
    registry.promote(serving, "test")
    challenger = copy_as_new_version(model_dir, tmp_path / "challenger").version
    publish(registry, tmp_path / "challenger")
    texts = [row.text for row in mini_dataset().test.rows[:12]]
    ours = answered(production, texts)
    theirs = [ours[0].model_copy(update={"label": "Sports"}), *ours[1:]]
    if ours[0].label == "Sports":
        theirs[0] = ours[0].model_copy(update={"label": "World"})
    tally = ServingTally(settings.monitor, settings.redis.key_prefix)
    tally.add_challenge(challenger, serving, texts, (ours, theirs), [20] * 12, 0.01)
    tally.flush(redis_client)
    with serve(settings) as gateway:
        url = ["--url", gateway.url]
        assert main(["models", "challenge", challenger, "--share", "0.2", *url]) == EXIT_OK
        assert capsys.readouterr().out.strip() == (
            f"challenger is now {challenger} on 20% of answered texts"
        )
        assert main(["models", "monitor", *url]) == EXIT_OK
        out = capsys.readouterr().out
        assert f"challenger {challenger} on 20% beside {serving}: 12 scored, agreement 91.7%" in (
            out
        )
        assert f"{texts[0][:80]}" in out
        assert main(["models", "dismiss", *url]) == EXIT_OK
        assert capsys.readouterr().out.strip() == f"challenger {challenger} dismissed"
        assert main(["models", "dismiss", *url]) == EXIT_NOT_FOUND
