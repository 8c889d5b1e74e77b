"""The pipeline's stages as plain functions: what each Celery task calls, testable without Redis.

Each stage can run again after a lost worker: training resumes from its checkpoints and keeps
its finished model under checkpoints/{job_id}/final/, and a version records the job that made it.
"""

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from pipeline.card import model_card, model_family
from pipeline.checkpoints import CheckpointStore, S3Checkpoints
from pipeline.datasets import load_dataset, store_dataset
from pipeline.distil import Distilling, S3Phases, distil
from pipeline.evaluate import evaluate
from pipeline.feedback_dataset import (
    FeedbackOrigin,
    feedback_indices,
    latest_dataset,
    load_origin,
    merge,
    store_origin,
    write_archive,
)
from pipeline.holdout import (
    HoldoutScores,
    current_holdout,
    ensure_holdout,
    holdout_texts,
    own_test_texts,
    pin_dataset_test,
)
from pipeline.ingest import RawDataset, fetch_archive, read_archive
from pipeline.predictor import Predictor, load_version
from pipeline.registry import (
    delete_prefix,
    download_prefix,
    publish,
    upload_dir,
    write_manifest,
)
from pipeline.report import Reporter
from pipeline.serving import evaluate_forms, serving_note
from pipeline.tracking import track_training
from pipeline.train import fit
from pipeline.validate import ValidationReport, check, validate, validate_archive
from shared.contracts.errors import Conflict, NoFeedback
from shared.contracts.jobs import EventType
from shared.contracts.models import CARD, HISTORY, ModelInfo, new_version
from shared.contracts.results import (
    Metrics,
    PromotionDecision,
    StageSeconds,
    TrainingRecord,
    seconds_since,
)
from shared.contracts.training import Teacher, TrainConfig
from shared.feedback import FeedbackStore
from shared.model_mirror import mirrored
from shared.registry import ModelRegistry, read_object
from shared.settings import Settings, config_for, distillation_for
from shared.storage import ARCHIVE_NAME, s3_client

TRAINING = "training.json"


class IngestOutput(BaseModel):
    dataset_sha256: str
    dataset_key: str
    report: ValidationReport
    origin: FeedbackOrigin | None = None  # how feedback made the dataset, if it did


def checkpoint_prefix(job_id: str, settings: Settings) -> str:
    return f"{settings.storage.checkpoints_prefix}{job_id}/"


def teacher_prefix(job_id: str, settings: Settings) -> str:
    """Where a distil job's teacher keeps its phases: checkpoints, labels, its final/ model."""
    return checkpoint_prefix(job_id, settings) + "teacher/"


def trained_model_prefix(job_id: str, settings: Settings) -> str:
    """Where a job's finished model waits, with its training record, to be registered."""
    return checkpoint_prefix(job_id, settings) + "final/"


def scratch_dir(settings: Settings) -> tempfile.TemporaryDirectory[str]:
    root = settings.run.data_dir / "work"
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=root)


def datasets_dir(settings: Settings) -> Path:
    return settings.run.data_dir / "datasets"


def _step(reporter: Reporter, stage: str, step: int, total: int) -> None:
    reporter.progress({"stage": stage, "step": step, "total": total, "fraction": step / total})


def ingest(
    source: str, settings: Settings, reporter: Reporter, *, version_id: str | None = None
) -> IngestOutput:
    """Fetch and validate an archive as its rows stream (none held), against the promotion
    holdout; store it under datasets/{sha256}/ if it passes. With no holdout yet (and none
    configured), its test.csv becomes the holdout.

    With `version_id`, the exact object version an upload event named: a later upload to the
    same key starts its own job and never changes what this one trains on."""
    with scratch_dir(settings) as scratch:
        _step(reporter, "ingest", 0, 3)
        archive = fetch_archive(source, settings, Path(scratch), version_id=version_id)
        return accept(archive, settings, reporter)


def ingest_with_feedback(
    source: str | None, settings: Settings, reporter: Reporter
) -> IngestOutput:
    """A new dataset: the given archive, or the dataset accepted last, with every text's latest
    feedback (pipeline.feedback_dataset); accepted as an upload is, with how it was made kept
    beside it."""
    feedback = FeedbackStore.from_settings(settings.storage).all()
    if not feedback:
        raise NoFeedback("no feedback has been given yet: there is nothing to add to the dataset")
    with scratch_dir(settings) as scratch:
        _step(reporter, "ingest", 0, 3)
        if source is None:
            base = load_dataset(latest_dataset(settings), settings, datasets_dir(settings))
        else:
            base = read_archive(fetch_archive(source, settings, Path(scratch)), settings)
            check(validate(base, settings))
        holdout = current_holdout(settings)
        merged = merge(
            base,
            load_origin(base.sha256, settings),
            feedback,
            holdout_texts(holdout, settings) if holdout else None,
        )
        origin = merged.origin
        reporter.event(
            EventType.log,
            {
                "message": f"dataset {base.sha256[:12]} with {origin.feedback_rows} feedback "
                f"rows: {origin.relabelled} of its rows relabelled, {origin.confirmed} "
                f"confirmed, {origin.left_out} left out (texts of the holdout or test.csv)",
                **origin.model_dump(mode="json"),
            },
        )
        if not origin.feedback_rows:
            raise NoFeedback(
                f"all {origin.left_out} feedback texts are in the promotion holdout or test.csv, "
                "which training must not see: there is nothing to add to the dataset"
            )
        archive = write_archive(Path(scratch) / ARCHIVE_NAME, merged.train, base.test.rows)
        return accept(archive, settings, reporter, origin=origin)


def accept(
    archive: Path, settings: Settings, reporter: Reporter, *, origin: FeedbackOrigin | None = None
) -> IngestOutput:
    """Validate a local archive and store it (with `origin`, how feedback made it)."""
    holdout = current_holdout(settings)
    # the first dataset's test.csv becomes the holdout: its train.csv is held to it as well
    texts = holdout_texts(holdout, settings) if holdout else own_test_texts(archive, settings)
    _step(reporter, "ingest", 1, 3)
    report = validate_archive(archive, settings, texts)
    body = report.model_dump(mode="json")
    reporter.event(EventType.metric, {"name": "validation_report", "report": body})
    check(report)
    _step(reporter, "ingest", 2, 3)
    if origin is not None:  # before the dataset's report, which says it is complete
        store_origin(report.dataset_sha256, origin, settings)
    key = store_dataset(archive, report, settings)
    if holdout is None:
        holdout = pin_dataset_test(archive, report.dataset_sha256, settings)
        reporter.event(
            EventType.log, {"message": f"promotion compares models on {holdout.describe()}"}
        )
    _step(reporter, "ingest", 3, 3)
    return IngestOutput(
        dataset_sha256=report.dataset_sha256, dataset_key=key, report=report, origin=origin
    )


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
    s3 = s3_client(settings.storage)
    final = trained_model_prefix(job_id, settings)
    done = read_object(s3, settings.storage.bucket, final + TRAINING)
    checkpoints = S3Checkpoints(s3, settings.storage.bucket, checkpoint_prefix(job_id, settings))
    if done is not None:
        checkpoints.clear()
        reporter.event(EventType.log, {"message": f"job {job_id} has already trained its model"})
        return TrainingRecord.model_validate_json(done)
    config = config_for(settings.training, profile, base_model=base_model, max_steps=max_steps)
    distillation = distillation_for(settings.training, profile)
    dataset = load_dataset(dataset_sha256, settings, datasets_dir(settings))
    feedback = feedback_indices(dataset.train.rows, load_origin(dataset_sha256, settings))
    with scratch_dir(settings) as scratch, scratch_dir(settings) as teacher_scratch:
        model_dir = Path(scratch)
        distilling = None
        if distillation is not None:
            phases = S3Phases(s3, settings.storage.bucket, teacher_prefix(job_id, settings))
            distilling = Distilling(distillation, phases, Path(teacher_scratch))
        record, _ = fit_into(
            model_dir, config, dataset, settings, reporter, checkpoints, feedback, distilling
        )
        (model_dir / TRAINING).write_text(record.model_dump_json(indent=2))
        names = sorted(path.name for path in model_dir.iterdir() if path.name != TRAINING)
        upload_dir(s3, settings.storage.bucket, final, model_dir, [*names, TRAINING])
    checkpoints.clear()
    return record


def train_model(
    config: TrainConfig,
    dataset: RawDataset,
    model_dir: Path,
    settings: Settings,
    reporter: Reporter,
    checkpoints: CheckpointStore | None = None,
    stages: StageSeconds | None = None,
    distilling: Distilling | None = None,
) -> tuple[ModelInfo, ModelInfo | None]:
    """Fine-tune, then evaluate into a complete model folder (metrics.json and manifest); with
    tracking on, its training is an MLflow run. Distilling, the teacher is evaluated too, into
    its own complete folder (the second ModelInfo's, at `distilling.scratch / "teacher"`), and
    the student's card names it."""
    started = time.monotonic()
    record, teacher_dir = fit_into(
        model_dir, config, dataset, settings, reporter, checkpoints, (), distilling
    )
    timed = (stages or StageSeconds()).model_copy(update={"train": seconds_since(started)})
    teacher = None
    if teacher_dir is not None and distilling is not None:
        local = distilling.scratch / "teacher"
        if teacher_dir != local:
            shutil.copytree(teacher_dir, local, dirs_exist_ok=True)
        training = TrainingRecord.model_validate_json((local / TRAINING).read_bytes())
        (local / TRAINING).unlink()
        teacher = finish_model(local, dataset, training, settings, reporter)
        record.params.teacher = taught_by(record, teacher)
    info = finish_model(model_dir, dataset, record, settings, reporter, timed)
    track_training(info, record, (model_dir / CARD).read_text(), settings.tracking)
    return info, teacher


def taught_by(record: TrainingRecord, teacher: ModelInfo) -> Teacher | None:
    """The student's account of its teacher, with the teacher's version and test.csv score."""
    if record.params.teacher is None:
        return None
    return record.params.teacher.model_copy(
        update={"version": teacher.version, "test_accuracy": teacher.metrics.accuracy}
    )


def fit_into(
    model_dir: Path,
    config: TrainConfig,
    dataset: RawDataset,
    settings: Settings,
    reporter: Reporter,
    checkpoints: CheckpointStore | None,
    feedback: Sequence[int] = (),
    distilling: Distilling | None = None,
) -> tuple[TrainingRecord, Path | None]:
    """Fine-tune on the dataset's train.csv into a loadable model folder; the training record,
    and distilling, the teacher's model folder (with its training.json). Both the train stage
    and a local run come this way. `feedback`: its rows that are people's corrections."""
    rows = dataset.train.rows
    if distilling is None:
        result = fit(config, rows, settings, reporter, checkpoints, feedback)
        result.save(model_dir)
        return result.record(), None
    distilled = distil(config, distilling, rows, settings, reporter, checkpoints, feedback)
    distilled.student.save(model_dir)
    record = distilled.student.record()
    record.params.teacher = distilled.teacher
    return record, distilled.teacher_dir


def finish_model(
    model_dir: Path,
    dataset: RawDataset,
    training: TrainingRecord,
    settings: Settings,
    reporter: Reporter,
    stages: StageSeconds | None = None,
) -> ModelInfo:
    """Evaluate a trained model folder on test.csv and write its metrics.json and manifest;
    the card records `stages` so far and the evaluation's own wall time."""
    started = time.monotonic()
    version = new_version()
    predictor = Predictor.from_files(
        model_dir, settings, version=version, max_length=training.params.max_length
    )
    metrics = evaluate_forms(
        predictor, dataset.test.rows, model_dir, settings, reporter, dataset_sha256=dataset.sha256
    )
    if metrics.serving is not None:
        reporter.event(
            EventType.metric, {"name": "serving_check", **metrics.serving.model_dump(mode="json")}
        )
    reporter.event(
        EventType.metric, {"name": "evaluation_stages", "seconds": metrics.evaluation_seconds}
    )
    metrics.validation = training.validation
    metrics.train_seconds = training.train_seconds
    metrics.stage_seconds = (stages or StageSeconds()).model_copy(
        update={"evaluate": seconds_since(started)}
    )
    (model_dir / HISTORY).write_text(training.history.model_dump_json())
    card = model_card(
        version=version,
        family=model_family(model_dir),
        dataset_sha256=dataset.sha256,
        train_rows=len(dataset.train.rows),
        metrics=metrics,
        training=training,
    )
    (model_dir / CARD).write_text(card)
    return write_manifest(
        model_dir,
        version=version,
        base_model=training.params.base_model,
        dataset_sha256=dataset.sha256,
        metrics=metrics,
        params=training.params,
    )


def evaluate_and_register(
    job_id: str,
    dataset_sha256: str,
    settings: Settings,
    reporter: Reporter,
    stages: StageSeconds | None = None,
) -> ModelInfo:
    """Evaluate the job's trained model on test.csv and register it as a new version; its
    metrics keep `stages` with the evaluation's wall time added. With tracking on, its training
    is an MLflow run and the version a model version of MLflow's registry, once it is in S3."""
    s3 = s3_client(settings.storage)
    registry = ModelRegistry(s3, settings.storage)
    known = registered_by(registry, job_id)
    if "model" in known:
        discard_checkpoints(job_id, settings)
        return known["model"]
    dataset = load_dataset(dataset_sha256, settings, datasets_dir(settings))
    teacher = known.get("teacher") or register_trained(
        teacher_prefix(job_id, settings) + "final/", job_id, dataset, settings, reporter, None, None
    )
    if teacher is not None:
        message = f"registered the teacher as model version {teacher.version}"
        reporter.event(EventType.log, {"message": message})
    info = register_trained(
        trained_model_prefix(job_id, settings), job_id, dataset, settings, reporter, stages, teacher
    )
    if info is None:
        raise FileNotFoundError(f"job {job_id} has no trained model to register")
    discard_checkpoints(job_id, settings)
    reporter.event(EventType.log, {"message": f"registered model version {info.version}"})
    return info


def registered_by(registry: ModelRegistry, job_id: str) -> dict[str, ModelInfo]:
    """The versions a job registered, by role: its model, and a distil job's teacher."""
    return {
        known.params.role: known for known in registry.versions() if known.params.job_id == job_id
    }


def register_trained(
    prefix: str,
    job_id: str,
    dataset: RawDataset,
    settings: Settings,
    reporter: Reporter,
    stages: StageSeconds | None,
    teacher: ModelInfo | None,
) -> ModelInfo | None:
    """Evaluate the trained model under `prefix` and register it; None where there is none.
    A student's record names its `teacher` as registered."""
    s3 = s3_client(settings.storage)
    registry = ModelRegistry(s3, settings.storage)
    if read_object(s3, settings.storage.bucket, prefix + TRAINING) is None:
        return None
    with scratch_dir(settings) as scratch:
        model_dir = download_prefix(s3, settings.storage.bucket, prefix, Path(scratch) / "model")
        training = TrainingRecord.model_validate_json((model_dir / TRAINING).read_bytes())
        training.params.job_id = job_id
        if teacher is not None:
            training.params.teacher = taught_by(training, teacher)
        (model_dir / TRAINING).unlink()
        info = finish_model(model_dir, dataset, training, settings, reporter, stages)
        publish(registry, model_dir)
        card = (model_dir / CARD).read_text()
        track_training(info, training, card, settings.tracking, registered_in=registry)
    return info


def discard_checkpoints(job_id: str, settings: Settings) -> None:
    """A job's checkpoints and trained model, once its version is registered or it has failed
    for good (a lifecycle rule on the prefix takes what a vanished job leaves)."""
    storage = settings.storage
    delete_prefix(s3_client(storage), storage.bucket, checkpoint_prefix(job_id, settings))


def evaluate_version(
    version: str | None, source: str, settings: Settings, reporter: Reporter
) -> Metrics:
    """Metrics of a registered version (production when None) on an archive's test.csv."""
    if version is None:
        version = ModelRegistry.from_settings(settings.storage).production_version()
    predictor = load_version(version, settings)
    with scratch_dir(settings) as scratch:
        dataset = read_archive(fetch_archive(source, settings, Path(scratch)), settings)
        check(validate(dataset, settings))
    return evaluate(predictor, dataset.test.rows, settings, reporter, dataset_sha256=dataset.sha256)


def promote_if_better(version: str, settings: Settings, reporter: Reporter) -> PromotionDecision:
    """Promote the version if it beats production on the promotion holdout (a tie keeps
    production); its own test.csv, its uploader's, is reported but decides nothing."""
    registry = mirrored(ModelRegistry.from_settings(settings.storage), settings.tracking)
    candidate = registry.get(version)
    holdout = ensure_holdout(settings, candidate.dataset_sha256)
    scores = HoldoutScores(holdout, settings, reporter)
    ours = scores.of(version, candidate.metrics)
    on = holdout.describe()
    own = f" (on its own test.csv, which does not decide: {candidate.metrics.accuracy:.2%})"

    def decide(
        promoted: bool, reason: str, previous: str | None, theirs: Metrics | None
    ) -> PromotionDecision:
        return PromotionDecision(
            promoted=promoted,
            reason=reason,
            version=version,
            previous=previous,
            candidate_metrics=ours,
            production_metrics=theirs,
            candidate_test_metrics=candidate.metrics,
            holdout_sha256=holdout.sha256,
            holdout_rows=holdout.rows,
            candidate_holdout_accuracy=ours.accuracy,
            production_holdout_accuracy=theirs.accuracy if theirs else None,
        )

    while True:
        current = registry.production()
        if current is None:
            decision = decide(
                True,
                f"{version} is the first model, with {ours.accuracy:.2%} accuracy on {on}{own}, "
                "so it now serves.",
                None,
                None,
            )
        elif current.version == version:
            return decide(False, f"{version} already serves in production.", current.previous, ours)
        else:
            theirs = scores.of(current.version, registry.get(current.version).metrics)
            better = ours.accuracy > theirs.accuracy
            reason = (
                f"{version} scored {ours.accuracy:.2%} accuracy on {on}, above production "
                f"{current.version}'s {theirs.accuracy:.2%} on the same rows{own}, so it now "
                "serves."
                if better
                else f"Production {current.version} stays: {version} scored "
                f"{ours.accuracy:.2%} accuracy on {on}, not above its {theirs.accuracy:.2%} on "
                f"the same rows{own}."
            )
            decision = decide(better, reason, current.version, theirs)
        if decision.promoted:
            decision.reason += " " + serving_note(settings, candidate.metrics)
            try:
                registry.promote(version, decision.reason, expected=decision.previous)
            except Conflict:
                continue  # production changed under us: decide again against the new one
        reporter.event(EventType.log, {"message": decision.reason})
        return decision
