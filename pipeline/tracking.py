"""Optional experiment tracking: with `mlflow_tracking_uri` set, each registered model's training
becomes an MLflow run (parameters, loss and validation curves by step, test metrics, the model
card). A tracking server that fails costs a warning, never a model."""

import logging
import tempfile
from pathlib import Path

from shared.registry import CARD, ModelInfo
from shared.results import TrainingRecord
from shared.settings import Settings

log = logging.getLogger(__name__)


def track_training(
    info: ModelInfo, training: TrainingRecord, card: str, settings: Settings
) -> None:
    if not settings.mlflow_tracking_uri:
        return
    try:
        _log_run(info, training, card, settings)
    except Exception:
        log.warning(
            "model %s: its MLflow run could not be written to %s",
            info.version,
            settings.mlflow_tracking_uri,
            exc_info=True,
        )


def _log_run(info: ModelInfo, training: TrainingRecord, card: str, settings: Settings) -> None:
    from mlflow import MlflowClient  # an optional extra, imported only when tracking is on

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    name = settings.mlflow_experiment
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tags = {"model_version": info.version, "dataset_sha256": info.dataset_sha256}
    run = client.create_run(experiment_id, run_name=info.version, tags=tags)
    run_id = run.info.run_id
    params = training.params.model_dump(mode="json", exclude_none=True)
    plan = params.pop("plan", {})
    for key, value in {**params, **{f"plan.{name}": v for name, v in plan.items()}}.items():
        client.log_param(run_id, key, value)
    for point in training.history.train:
        client.log_metric(run_id, "train_loss", point.loss, step=point.step)
        client.log_metric(run_id, "learning_rate", point.lr, step=point.step)
    for checked in training.history.validation:
        client.log_metric(run_id, "validation_accuracy", checked.accuracy, step=checked.step)
        client.log_metric(run_id, "validation_loss", checked.loss, step=checked.step)
    metrics = info.metrics
    client.log_metric(run_id, "test_accuracy", metrics.accuracy)
    client.log_metric(run_id, "test_macro_f1", metrics.macro_f1)
    client.log_metric(run_id, "train_seconds", training.train_seconds)
    for label, scores in metrics.per_class.items():
        client.log_metric(run_id, f"test_f1_{label.replace('/', '_')}", scores.f1)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / CARD
        path.write_text(card)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
