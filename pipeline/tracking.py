"""Optional experiment tracking: with `mlflow_tracking_uri` set, each registered model's training
becomes an MLflow run (parameters, loss and validation curves by step, test metrics, the model
card), written in a few batched requests, and a version registered in S3 becomes a model version
of MLflow's registry too, linked to that run (shared/model_mirror.py). A tracking server that fails
costs a warning, never a model, and one that does not answer is found by a short probe: MLflow's
client retries each request with backoff for minutes, which would hold the training job that
long."""

import logging
import tempfile
import time
from pathlib import Path

from shared.contracts.models import CARD, ModelInfo
from shared.contracts.results import TrainingRecord
from shared.model_mirror import RUN_TAG, MlflowMirror, answers, source_of
from shared.registry import ModelRegistry
from shared.settings import TrackingSettings

log = logging.getLogger(__name__)


def track_training(
    info: ModelInfo,
    training: TrainingRecord,
    card: str,
    tracking: TrackingSettings,
    registered_in: ModelRegistry | None = None,
) -> str | None:
    """The model's training as an MLflow run: its id, None where none was written. With
    `registered_in`, the registry the version was just published to, the version is mirrored
    into MLflow's model registry too, linked to the run (or to none where it failed)."""
    uri = tracking.uri
    if not uri:
        return None
    if not answers(uri, tracking.probe_timeout_s):
        log.warning("model %s: MLflow at %s does not answer; no run written", info.version, uri)
        return None
    run_id = None
    try:
        run_id = _log_run(info, training, card, tracking)
    except Exception:
        log.warning(
            "model %s: its MLflow run could not be written to %s",
            info.version,
            tracking.uri,
            exc_info=True,
        )
    if registered_in is not None:
        source = source_of(registered_in, info.version)
        MlflowMirror(tracking, registered_in).register_version(info.version, run_id, card, source)
    return run_id


def _log_run(
    info: ModelInfo, training: TrainingRecord, card: str, tracking: TrackingSettings
) -> str:
    # mlflow is an optional extra, imported only when tracking is on
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=tracking.uri)
    name = tracking.experiment
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tags = {RUN_TAG: info.version, "dataset_sha256": info.dataset_sha256}
    run = client.create_run(experiment_id, run_name=info.version, tags=tags)
    run_id: str = run.info.run_id
    values = training.params.model_dump(mode="json", exclude_none=True)
    plan = values.pop("plan", {})
    flat = {**values, **{f"plan.{name}": value for name, value in plan.items()}}
    params = [Param(key, str(value)) for key, value in flat.items()]
    history = training.history
    scores = info.metrics
    series = [
        *(("train_loss", point.loss, point.step) for point in history.train),
        *(("learning_rate", point.lr, point.step) for point in history.train),
        *(("validation_accuracy", point.accuracy, point.step) for point in history.validation),
        *(("validation_loss", point.loss, point.step) for point in history.validation),
        *(("adapt_loss", point.loss, point.step) for point in history.adapt),
        ("test_accuracy", scores.accuracy, 0),
        ("test_macro_f1", scores.macro_f1, 0),
        ("train_seconds", training.train_seconds, 0),
        *((f"test_f1_{label.replace('/', '_')}", per_class.f1, 0)
          for label, per_class in scores.per_class.items()),
    ]  # fmt: skip
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in series]
    client.log_batch(run_id, metrics=metrics, params=params)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / CARD
        path.write_text(card)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id
