"""The pipeline's stages as plain functions: what each Celery task calls, testable without Redis.

Each stage can run again after a lost worker: training resumes from its checkpoints and keeps
its finished model under checkpoints/{job_id}/final/, and a version records the job that made it.
"""

import tempfile
from pathlib import Path

from pydantic import BaseModel

from pipeline.checkpoints import CheckpointStore, S3Checkpoints
from pipeline.datasets import load_dataset, store_dataset
from pipeline.evaluate import evaluate
from pipeline.ingest import RawDataset, fetch_archive, read_archive
from pipeline.predictor import Predictor, load_version
from pipeline.registry import download_prefix, publish, upload_dir, write_manifest
from pipeline.report import Reporter
from pipeline.serving import int8_check, serving_note
from pipeline.train import config_for, fit
from pipeline.validate import ValidationReport, check, validate
from shared.errors import Conflict
from shared.jobs import EventType
from shared.registry import ModelInfo, ModelRegistry, new_version, read_object
from shared.results import Metrics, PromotionDecision, TrainingRecord
from shared.settings import Settings
from shared.storage import s3_client
from shared.training import TrainConfig

TRAINING = "training.json"


class IngestOutput(BaseModel):
    dataset_sha256: str
    dataset_key: str
    report: ValidationReport


def checkpoint_prefix(job_id: str, settings: Settings) -> str:
    return f"{settings.checkpoints_prefix}{job_id}/"


def trained_model_prefix(job_id: str, settings: Settings) -> str:
    """Where a job's finished model waits, with its training record, to be registered."""
    return checkpoint_prefix(job_id, settings) + "final/"


def scratch_dir(settings: Settings) -> tempfile.TemporaryDirectory[str]:
    root = settings.data_dir / "work"
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=root)


def datasets_dir(settings: Settings) -> Path:
    return settings.data_dir / "datasets"


def _step(reporter: Reporter, stage: str, step: int, total: int) -> None:
    reporter.progress({"stage": stage, "step": step, "total": total, "fraction": step / total})


def ingest(
    source: str, settings: Settings, reporter: Reporter, *, version_id: str | None = None
) -> IngestOutput:
    """Fetch, read and validate an archive; store it under datasets/{sha256}/ if it passes.

    With `version_id`, the exact object version an upload event named: a later upload to the
    same key starts its own job and never changes what this one trains on."""
    with scratch_dir(settings) as scratch:
        _step(reporter, "ingest", 0, 3)
        archive = fetch_archive(source, settings, Path(scratch), version_id=version_id)
        dataset = read_archive(archive, settings)
        _step(reporter, "ingest", 1, 3)
        report = validate(dataset, settings)
        body = report.model_dump(mode="json")
        reporter.event(EventType.metric, {"name": "validation_report", "report": body})
        check(report)
        _step(reporter, "ingest", 2, 3)
        key = store_dataset(archive, report, settings)
        _step(reporter, "ingest", 3, 3)
    return IngestOutput(dataset_sha256=dataset.sha256, dataset_key=key, report=report)


def train(
    job_id: str,
    dataset_sha256: str,
    settings: Settings,
    reporter: Reporter,
    *,
    profile: str | None = None,
    base_model: str | None = None,
    max_steps: int | None = None,
) -> TrainingRecord:
    """Fine-tune on the dataset's train.csv; the model lands under trained_model_prefix."""
    s3 = s3_client(settings)
    final = trained_model_prefix(job_id, settings)
    done = read_object(s3, settings.bucket, final + TRAINING)
    checkpoints = S3Checkpoints(s3, settings.bucket, checkpoint_prefix(job_id, settings))
    if done is not None:
        checkpoints.clear()
        reporter.event(EventType.log, {"message": f"job {job_id} has already trained its model"})
        return TrainingRecord.model_validate_json(done)
    config = config_for(settings, profile, base_model=base_model, max_steps=max_steps)
    dataset = load_dataset(dataset_sha256, settings, datasets_dir(settings))
    result = fit(config, dataset.train.rows, settings, reporter, checkpoints)
    record = result.record()
    with scratch_dir(settings) as scratch:
        model_dir = Path(scratch)
        result.save(model_dir)
        (model_dir / TRAINING).write_text(record.model_dump_json(indent=2))
        names = sorted(path.name for path in model_dir.iterdir() if path.name != TRAINING)
        upload_dir(s3, settings.bucket, final, model_dir, [*names, TRAINING])
    checkpoints.clear()
    return record


def train_model(
    config: TrainConfig,
    dataset: RawDataset,
    model_dir: Path,
    settings: Settings,
    reporter: Reporter,
    checkpoints: CheckpointStore | None = None,
) -> ModelInfo:
    """Fine-tune, then evaluate into a complete model folder (metrics.json and manifest)."""
    result = fit(config, dataset.train.rows, settings, reporter, checkpoints)
    result.save(model_dir)
    return finish_model(model_dir, dataset, result.record(), settings, reporter)


def finish_model(
    model_dir: Path,
    dataset: RawDataset,
    training: TrainingRecord,
    settings: Settings,
    reporter: Reporter,
) -> ModelInfo:
    """Evaluate a trained model folder on test.csv and write its metrics.json and manifest."""
    version = new_version()
    predictor = Predictor.from_files(
        model_dir, settings, version=version, max_length=training.params.max_length
    )
    metrics = evaluate(
        predictor, dataset.test.rows, settings, reporter, dataset_sha256=dataset.sha256
    )
    metrics.serving = int8_check(
        predictor, dataset.test.rows, metrics.accuracy, metrics.seconds, settings
    )
    reporter.event(
        EventType.metric, {"name": "serving_check", **metrics.serving.model_dump(mode="json")}
    )
    metrics.validation = training.validation
    metrics.train_seconds = training.train_seconds
    return write_manifest(
        model_dir,
        version=version,
        base_model=training.params.base_model,
        dataset_sha256=dataset.sha256,
        metrics=metrics,
        params=training.params,
    )


def evaluate_and_register(
    job_id: str, dataset_sha256: str, settings: Settings, reporter: Reporter
) -> ModelInfo:
    """Evaluate the job's trained model on test.csv and register it as a new version."""
    s3 = s3_client(settings)
    registry = ModelRegistry(s3, settings)
    for known in registry.versions():
        if known.params.job_id == job_id:
            return known
    with scratch_dir(settings) as scratch:
        model_dir = download_prefix(
            s3, settings.bucket, trained_model_prefix(job_id, settings), Path(scratch) / "model"
        )
        training = TrainingRecord.model_validate_json((model_dir / TRAINING).read_bytes())
        training.params.job_id = job_id
        (model_dir / TRAINING).unlink()
        dataset = load_dataset(dataset_sha256, settings, datasets_dir(settings))
        info = finish_model(model_dir, dataset, training, settings, reporter)
        publish(registry, model_dir)
    reporter.event(EventType.log, {"message": f"registered model version {info.version}"})
    return info


def evaluate_version(
    version: str | None, source: str, settings: Settings, reporter: Reporter
) -> Metrics:
    """Metrics of a registered version (production when None) on an archive's test.csv."""
    if version is None:
        version = ModelRegistry.from_settings(settings).production_version()
    predictor = load_version(version, settings)
    with scratch_dir(settings) as scratch:
        dataset = read_archive(fetch_archive(source, settings, Path(scratch)), settings)
        check(validate(dataset, settings))
    return evaluate(predictor, dataset.test.rows, settings, reporter, dataset_sha256=dataset.sha256)


def _test_set(sha256: str) -> str:
    return f"the test.csv of dataset {sha256[:12]}"


def promote_if_better(version: str, settings: Settings, reporter: Reporter) -> PromotionDecision:
    """Promote the version if it beats production on the same test set (a tie keeps production)."""
    registry = ModelRegistry.from_settings(settings)
    candidate = registry.get(version)
    accuracy = candidate.metrics.accuracy
    test_set = _test_set(candidate.dataset_sha256)
    while True:
        current = registry.production()
        if current is None:
            decision = PromotionDecision(
                promoted=True,
                reason=f"{version} is the first model, with {accuracy:.2%} accuracy on "
                f"{test_set}, so it now serves.",
                version=version,
                previous=None,
                candidate_metrics=candidate.metrics,
                production_metrics=None,
            )
        elif current.version == version:
            return PromotionDecision(
                promoted=False,
                reason=f"{version} already serves in production.",
                version=version,
                previous=current.previous,
                candidate_metrics=candidate.metrics,
                production_metrics=candidate.metrics,
            )
        else:
            production = registry.get(current.version)
            theirs = production.metrics
            if production.dataset_sha256 != candidate.dataset_sha256:
                reporter.event(
                    EventType.log,
                    {"message": f"evaluating production {current.version} on {test_set}"},
                )
                dataset = load_dataset(candidate.dataset_sha256, settings, datasets_dir(settings))
                theirs = evaluate(
                    load_version(current.version, settings),
                    dataset.test.rows,
                    settings,
                    reporter,
                    dataset_sha256=dataset.sha256,
                )
            baseline = theirs.accuracy
            better = accuracy > baseline
            reason = (
                f"{version} scored {accuracy:.2%} accuracy on {test_set}, above production "
                f"{current.version}'s {baseline:.2%} on the same rows, so it now serves."
                if better
                else f"Production {current.version} stays: {version} scored {accuracy:.2%} "
                f"accuracy on {test_set}, not above its {baseline:.2%} on the same rows."
            )
            decision = PromotionDecision(
                promoted=better,
                reason=reason,
                version=version,
                previous=current.version,
                candidate_metrics=candidate.metrics,
                production_metrics=theirs,
            )
        if decision.promoted:
            decision.reason += " " + serving_note(settings, candidate.metrics)
            try:
                registry.promote(version, decision.reason, expected=decision.previous)
            except Conflict:
                continue  # production changed under us: decide again against the new one
        reporter.event(EventType.log, {"message": decision.reason})
        return decision
