"""With a tracking URI set, the model registry is mirrored into MLflow's, on a real server:
versions as model versions linked to their runs, production and challenger as aliases."""

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.tracking import track_training
from shared.contracts.models import CARD, MANIFEST, ModelInfo, new_version
from shared.contracts.results import TrainingRecord, ValidationScores
from shared.contracts.training import TrainingParams
from shared.model_mirror import MlflowMirror, mirrored, source_of
from shared.registry import ModelRegistry
from shared.settings import Settings
from testkit.job_results import metrics
from testkit.servers import free_port

mlflow = pytest.importorskip("mlflow")

PARAMS = TrainingParams(rows_trained=400, rows_validated=20, steps=5)
MIRROR = "shared.model_mirror"


@pytest.fixture
def tracked(settings: Settings, tracking_uri: str) -> Settings:
    """The test's settings, tracking to the server under a registered model of its own."""
    own = os.urandom(4).hex()
    return settings.replace(
        mlflow_tracking_uri=tracking_uri,
        mlflow_experiment=f"experiment-{own}",
        mlflow_registered_model=f"agnews-{own}",
        mlflow_probe_timeout_s=5.0,
    )


@pytest.fixture
def client(tracking_uri: str) -> "mlflow.MlflowClient":
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def put_version(registry: ModelRegistry) -> tuple[ModelInfo, str]:
    """A version in S3 as the registry sees one: its manifest and its card."""
    version = new_version()
    info = ModelInfo(
        version=version,
        created_at=datetime.now(UTC),
        base_model="tiny",
        dataset_sha256="0" * 64,
        metrics=metrics(),
        params=PARAMS,
    )
    card = f"# Model {version}\n\nA card for the mirror.\n"
    for name, body in ((CARD, card), (MANIFEST, info.model_dump_json())):
        registry.s3.put_object(
            Bucket=registry.bucket, Key=registry.key(version, name), Body=body.encode()
        )
    return info, card


def training() -> TrainingRecord:
    validation = ValidationScores(
        n=20, accuracy=0.9, loss=0.3, step=5, steps=5, stopped_early=False
    )
    return TrainingRecord(params=PARAMS, validation=validation, train_seconds=1.5)


def registered(registry: ModelRegistry, settings: Settings) -> ModelInfo:
    """A version put in S3 and mirrored (without a run: writing one takes seconds)."""
    info, card = put_version(registry)
    source = source_of(registry, info.version)
    MlflowMirror(settings.tracking).register_version(info.version, None, card, source)
    return info


def model_versions(client: "mlflow.MlflowClient", settings: Settings, version: str) -> list[str]:
    name = settings.tracking.registered_model
    found = client.search_model_versions(f"name = '{name}' AND tags.agnews_version = '{version}'")
    return [found_version.version for found_version in found]


def aliases(client: "mlflow.MlflowClient", settings: Settings) -> dict[str, str]:
    """Each alias of the test's registered model, by the agnews version it points at."""
    name = settings.tracking.registered_model
    model = client.get_registered_model(name)
    return {
        alias: client.get_model_version(name, number).tags["agnews_version"]
        for alias, number in model.aliases.items()
    }


def mirror_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == MIRROR and record.levelno >= logging.WARNING
    ]


def test_a_registered_version_is_a_model_version_linked_to_its_run_with_its_card(
    tracked: Settings, client: "mlflow.MlflowClient", caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry.from_settings(tracked.storage)
    info, card = put_version(registry)
    with caplog.at_level(logging.INFO, logger=MIRROR):
        run_id = track_training(info, training(), card, tracked.tracking, registered_in=registry)

    assert run_id is not None
    name = tracked.tracking.registered_model
    [number] = model_versions(client, tracked, info.version)
    model_version = client.get_model_version(name, number)
    assert model_version.run_id == run_id
    assert client.get_run(run_id).data.tags["model_version"] == info.version
    assert model_version.description == card
    bucket = tracked.storage.bucket
    assert model_version.source == f"s3://{bucket}/{tracked.storage.models_prefix}{info.version}/"
    assert model_version.source == source_of(registry, info.version)
    assert mirror_warnings(caplog) == []


def test_registering_a_version_again_leaves_its_one_model_version(
    tracked: Settings, client: "mlflow.MlflowClient", caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry.from_settings(tracked.storage)
    info, card = put_version(registry)
    track_training(info, training(), card, tracked.tracking, registered_in=registry)
    [number] = model_versions(client, tracked, info.version)
    mirror = MlflowMirror(tracked.tracking)
    with caplog.at_level(logging.WARNING, logger=MIRROR):
        mirror.register_version(info.version, None, card, source_of(registry, info.version))
        mirror.register_version(info.version, None, "another card", "s3://elsewhere/")
    assert model_versions(client, tracked, info.version) == [number]
    kept = client.get_model_version(tracked.tracking.registered_model, number)
    assert kept.description == card
    assert kept.run_id
    assert mirror_warnings(caplog) == []


def test_promotion_moves_the_production_alias(
    tracked: Settings, client: "mlflow.MlflowClient", caplog: pytest.LogCaptureFixture
) -> None:
    registry = mirrored(ModelRegistry.from_settings(tracked.storage), tracked.tracking)
    first = registered(registry, tracked)
    second = registered(registry, tracked)
    with caplog.at_level(logging.WARNING, logger=MIRROR):
        registry.promote(first.version, "first")
        assert aliases(client, tracked) == {"production": first.version}
        registry.promote(second.version, "better")
        assert aliases(client, tracked) == {"production": second.version}
        registry.promote(first.version, "roll back", expected=second.version)
        assert aliases(client, tracked) == {"production": first.version}
    assert mirror_warnings(caplog) == []


def test_naming_and_dismissing_a_challenger_sets_and_deletes_its_alias(
    tracked: Settings, client: "mlflow.MlflowClient", caplog: pytest.LogCaptureFixture
) -> None:
    registry = mirrored(ModelRegistry.from_settings(tracked.storage), tracked.tracking)
    first, second, third = (registered(registry, tracked) for _ in range(3))
    with caplog.at_level(logging.WARNING, logger=MIRROR):
        registry.promote(first.version, "first")
        registry.name_challenger(second.version, 0.1)
        assert aliases(client, tracked) == {
            "production": first.version,
            "challenger": second.version,
        }
        registry.dismiss_challenger()
        assert aliases(client, tracked) == {"production": first.version}
        # A promoted challenger is production, and no longer a challenger.
        registry.name_challenger(third.version, 0.2)
        registry.promote(third.version, "the challenger won")
        assert aliases(client, tracked) == {"production": third.version}
    assert mirror_warnings(caplog) == []


def test_a_version_promoted_before_it_was_mirrored_is_mirrored_then(
    tracked: Settings, client: "mlflow.MlflowClient"
) -> None:
    """Registered while the server was away: its run was written, its model version was not."""
    registry = ModelRegistry.from_settings(tracked.storage)
    info, card = put_version(registry)
    run_id = track_training(info, training(), card, tracked.tracking)  # the run, no version
    assert run_id is not None
    assert model_versions(client, tracked, info.version) == []

    mirrored(registry, tracked.tracking).promote(info.version, "first")

    [number] = model_versions(client, tracked, info.version)
    model_version = client.get_model_version(tracked.tracking.registered_model, number)
    assert (model_version.run_id, model_version.description) == (run_id, card)
    assert aliases(client, tracked) == {"production": info.version}


def test_a_dead_tracking_server_costs_a_warning_and_promotion_succeeds(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    tracked = settings.replace(mlflow_tracking_uri=dead)
    registry = mirrored(ModelRegistry.from_settings(tracked.storage), tracked.tracking)
    info, card = put_version(registry)
    with caplog.at_level(logging.WARNING):
        assert track_training(info, training(), card, tracked.tracking, registry) is None
        pointer = registry.promote(info.version, "first")
        MlflowMirror(tracked.tracking).register_version(
            info.version, None, card, source_of(registry, info.version)
        )
    assert pointer.version == info.version
    assert registry.production_version() == info.version
    assert mirror_warnings(caplog) == [
        f"the production alias ({info.version}): not mirrored; MLflow at {dead} does not answer",
        f"model {info.version}: not mirrored; MLflow at {dead} does not answer",
    ]
    assert not [record for record in caplog.records if record.name == "shared.registry"]


def test_what_mlflow_refuses_costs_a_warning(
    tracked: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = MlflowMirror(tracked.tracking)  # no registry: an unmirrored version stays so
    version = new_version()
    with caplog.at_level(logging.WARNING, logger=MIRROR):
        mirror.observe("production", version)
        mirror.register_version(version, "no-such-run", "card", "s3://bucket/../escape/")
    uri = tracked.tracking.uri
    [unknown, refused] = mirror_warnings(caplog)
    assert unknown == (
        f"the production alias ({version}): not mirrored to MLflow's model registry at {uri}: "
        f"{version} is not in MLflow's model registry"
    )
    assert refused.startswith(f"model {version}: not mirrored to MLflow's model registry at")
    assert "INVALID_PARAMETER_VALUE" in refused


def test_a_tracking_uri_that_is_not_http_is_not_mirrored(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = (tmp_path / "mlruns").as_uri()
    tracked = settings.replace(mlflow_tracking_uri=local)
    registry = mirrored(ModelRegistry.from_settings(tracked.storage), tracked.tracking)
    info, _ = put_version(registry)
    with caplog.at_level(logging.WARNING, logger=MIRROR):
        registry.promote(info.version, "first")
    assert registry.production_version() == info.version
    assert mirror_warnings(caplog) == [
        f"the production alias ({info.version}): not mirrored; MLflow's model registry is "
        f"mirrored to an HTTP tracking server, not {local}"
    ]
    assert not (tmp_path / "mlruns").exists()


def test_without_a_tracking_uri_nothing_observes_the_registry(settings: Settings) -> None:
    registry = mirrored(ModelRegistry.from_settings(settings.storage), settings.tracking)
    assert settings.tracking.uri is None
    assert registry.observers == []
