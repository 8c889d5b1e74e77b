"""Optional experiment tracking: with `mlflow_tracking_uri` set, each registered model's training
becomes an MLflow run (parameters, loss and validation curves by step, test metrics, the model
card), written in a few batched requests. A tracking server that fails costs a warning, never a
model, and one that does not answer is found by a short probe: MLflow's client retries each
request with backoff for minutes, which would hold the training job that long."""

import logging
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from shared.registry import CARD, ModelInfo
from shared.results import TrainingRecord
from shared.settings import Settings

log = logging.getLogger(__name__)


def track_training(
    info: ModelInfo, training: TrainingRecord, card: str, settings: Settings
) -> None:
    uri = settings.mlflow_tracking_uri
    if not uri:
        return
    if not answers(uri, settings.mlflow_probe_timeout_s):
        log.warning("model %s: MLflow at %s does not answer; no run written", info.version, uri)
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


def answers(uri: str, timeout_s: float) -> bool:
    """Whether an HTTP tracking server answers its health check; other URIs are not probed."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _log_run(info: ModelInfo, training: TrainingRecord, card: str, settings: Settings) -> None:
    # mlflow is an optional extra, imported only when tracking is on
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    name = settings.mlflow_experiment
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tags = {"model_version": info.version, "dataset_sha256": info.dataset_sha256}
    run = client.create_run(experiment_id, run_name=info.version, tags=tags)
    run_id = run.info.run_id
    values = training.params.model_dump(mode="json", exclude_none=True)
    plan = values.pop("plan", {})
    flat = {**values, **{f"plan.{name}": value for name, value in plan.items()}}
    params = [Param(key, str(value)) for key, value in flat.items()]
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now, step)
        for point in training.history.train
        for key, value, step in (
            ("train_loss", point.loss, point.step),
            ("learning_rate", point.lr, point.step),
        )
    ]
    metrics += [
        Metric(key, value, now, step)
        for checked in training.history.validation
        for key, value, step in (
            ("validation_accuracy", checked.accuracy, checked.step),
            ("validation_loss", checked.loss, checked.step),
        )
    ]
    scores = info.metrics
    metrics += [
        Metric("test_accuracy", scores.accuracy, now, 0),
        Metric("test_macro_f1", scores.macro_f1, now, 0),
        Metric("train_seconds", training.train_seconds, now, 0),
    ]
    metrics += [
        Metric(f"test_f1_{label.replace('/', '_')}", per_class.f1, now, 0)
        for label, per_class in scores.per_class.items()
    ]
    client.log_batch(run_id, metrics=metrics, params=params)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / CARD
        path.write_text(card)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
