"""With a tracking URI set, a registered model's training is an MLflow run on a real server."""

import logging
import socket
from pathlib import Path

import pytest

from pipeline.ingest import read_archive
from pipeline.stages import train_model
from pipeline.tracking import answers
from shared.contracts.models import CARD
from shared.contracts.training import TrainConfig
from shared.settings import Settings
from testkit.archives import MINI_ARCHIVE
from testkit.families import tiny_family_model
from testkit.models import Recorder
from testkit.servers import free_port

mlflow = pytest.importorskip("mlflow")


def tiny_training(tmp_path: Path, **settings: object) -> tuple[Settings, TrainConfig]:
    base = tiny_family_model("bert", tmp_path / "base")
    config = TrainConfig(
        base_model=str(base), batch_size=8, max_steps=6, train_rows=64, val_max_rows=16, bf16=False
    )
    values = {"data_dir": tmp_path / "data", "progress_interval_s": 60.0, **settings}
    return Settings(**values), config  # type: ignore[arg-type]


def test_a_registered_model_is_an_mlflow_run_with_its_curves_and_card(
    tracking_uri: str, tmp_path: Path
) -> None:
    settings, config = tiny_training(
        tmp_path, mlflow_tracking_uri=tracking_uri, mlflow_experiment="agnews-test"
    )
    config = config.model_copy(update={"evals_per_epoch": 4})
    info, _ = train_model(
        config, read_archive(MINI_ARCHIVE, settings), tmp_path / "model", settings, Recorder()
    )

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("agnews-test")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == info.version
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset_sha256"] == info.dataset_sha256
    assert run.data.params["base_model"] == config.base_model
    assert run.data.params["max_steps"] == "6"
    assert run.data.params["plan.steps"] == "6"
    assert run.data.metrics["test_accuracy"] == pytest.approx(info.metrics.accuracy)
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [point.step for point in loss] == list(range(1, 7))
    validation = client.get_metric_history(run.info.run_id, "validation_accuracy")
    assert validation
    assert validation[-1].step == 6
    [artifact] = client.list_artifacts(run.info.run_id)
    assert artifact.path == CARD
    card = Path(client.download_artifacts(run.info.run_id, CARD, str(tmp_path)))
    assert card.read_text() == (tmp_path / "model" / CARD).read_text()


def test_with_a_dead_tracking_server_the_model_is_registered_without_a_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings, config = tiny_training(tmp_path, mlflow_tracking_uri=dead)
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking"):
        info, _ = train_model(
            config, read_archive(MINI_ARCHIVE, settings), tmp_path / "model", settings, Recorder()
        )
    assert (tmp_path / "model" / "manifest.json").is_file()
    assert info.params.steps == 6
    tracking = [record for record in caplog.records if record.name == "pipeline.tracking"]
    assert [record.getMessage() for record in tracking] == [
        f"model {info.version}: MLflow at {dead} does not answer; no run written"
    ]


def test_a_tracking_server_that_accepts_but_never_answers_is_skipped(tracking_uri: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        assert not answers(f"http://127.0.0.1:{port}", timeout_s=0.5)
    assert answers(tracking_uri, timeout_s=5.0)
    assert answers("file:///nowhere/mlruns", timeout_s=0.5)  # not HTTP: left to MLflow
