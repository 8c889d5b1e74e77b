"""The tasks. Each parses its message, calls pipeline/, and reports through the job store.

A train or pipeline job runs as a chain of tasks across the queues, each sending the next:
ingest (evaluate queue) -> train (train queue) -> evaluate (evaluate queue) -> promote.
"""

import logging
import sys
import time
from functools import cache
from typing import Any

from celery.signals import worker_ready
from celery.worker import state as worker_state
from celery_batches import SimpleRequest

from pipeline import stages
from pipeline.batch import run_batch
from shared.broker import send_call
from shared.contracts.errors import NotFound
from shared.contracts.jobs import (
    BatchPredictParams,
    DatasetParams,
    EvaluateParams,
    Job,
    JobStatus,
    JobType,
    PipelineParams,
    TaskCall,
    TrainParams,
    params_of,
)
from shared.contracts.results import (
    EvaluateResult,
    JobResult,
    StageSeconds,
    TrainResult,
    seconds_since,
)
from shared.contracts.stages import (
    BATCH_PREDICT,
    EVALUATE,
    INGEST,
    PREDICT,
    PROMOTE,
    ROUTES,
    TRAIN,
    next_task,
)
from shared.jobstore import JobStore
from shared.logs import bound
from shared.storage import s3_client
from workers.app import app, settings
from workers.batch import StoreFleet
from workers.batching import ModelPacedBatches
from workers.models import ServingModel
from workers.predict import serve_batch
from workers.reporting import JobReporter, run_step

# Long tasks hold their message until they finish; a worker that dies mid-task leaves it to be
# redelivered to another, which resumes from the last checkpoint.
LONG_TASK: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}
PREDICT_SWITCH_INTERVAL_S = 0.0005
log = logging.getLogger(__name__)


@cache
def store() -> JobStore:
    return JobStore.from_settings(settings)


@cache
def serving_model() -> ServingModel:
    return ServingModel(settings)


def _hand_on(job: Job, task: str, **kwargs: Any) -> bool:
    """Send the job's task after `task`, if its chain has one. The job names the call first, so
    that the reaper knows what the job waits for and a stale copy of an earlier call knows it is
    stale."""
    following = next_task(job, task)
    if following is None:
        return False
    call = TaskCall(name=following, arguments=kwargs)
    store().heartbeat(job.id, call)
    send_call(app, job.id, call)
    return True


def _step(
    job_id: str,
    name: str,
    call_id: str | None,
    step: Any,
    **kwargs: Any,
) -> None:
    call = TaskCall(name=name, arguments=kwargs)
    if call_id is not None:
        call = call.model_copy(update={"id": call_id})
    with bound(version=kwargs.get("version")):
        run_step(store(), job_id, step, call, settings.reaper, call_id)
        _discard_if_failed(job_id)


def _discard_if_failed(job_id: str) -> None:
    """A training job that failed for good, or was cancelled, leaves no checkpoints behind."""
    try:
        job = store().get(job_id)
    except NotFound:
        return
    ended = job.status in (JobStatus.failed, JobStatus.cancelled)
    if ended and job.type in (JobType.train, JobType.pipeline):
        stages.discard_checkpoints(job_id, settings)


# A batch is acknowledged once its answers are written (celery-batches acks a late task's
# requests when the batch returns): the requests of a worker that dies go back to the queue after
# the predict visibility timeout and another worker serves them; the first answer written wins.
@app.task(
    name=PREDICT,
    base=ModelPacedBatches,
    acks_late=True,
    flush_every=settings.serving.max_batch,
    flush_interval=max(settings.serving.max_wait_ms, 1.0) / 1000,
)
def predict(requests: list[SimpleRequest]) -> None:
    """A batch of predict jobs, each message naming one or more (the gateway's sends together
    the jobs submitted while its last transaction was in flight)."""
    release = predict.model_released()
    try:
        job_ids = [job_id for request in requests for job_id in request.args]
        serve_batch(store(), serving_model(), job_ids, release, settings.reaper.max_deliveries)
    finally:
        release()


@worker_ready.connect
def _start_serving(sender: Any, **_: Any) -> None:
    """A predict worker loads the production model as it starts, not on its first request, and
    takes no request until it has: Celery sends worker_ready before its consumer's loop first
    reads the queue, so a (re)starting worker cannot sit on requests that an idle one could
    serve. With no production model, or one that fails to load, it takes them at once (each
    then fails with the reason), and never waits past predict_first_load_wait_s."""
    if ROUTES[PREDICT] in {queue.name for queue in sender.task_consumer.queues}:
        # The model thread takes the GIL back after every torch op; with Python's default 5 ms
        # switch interval it waits that long whenever the consumer thread holds it.
        sys.setswitchinterval(PREDICT_SWITCH_INTERVAL_S)
        model = serving_model().start()
        loaded = model.first_look(settings.serving.first_load_wait_s, _worker_stopping)
        if not loaded and not _worker_stopping():
            log.warning(
                "the production model is still loading after %.0f s; taking requests meanwhile",
                settings.serving.first_load_wait_s,
            )


def _worker_stopping() -> bool:
    """Whether a signal asked the worker to stop (a warm stop's exit code may be 0)."""
    return any(
        flag is not None and flag is not False
        for flag in (worker_state.should_stop, worker_state.should_terminate)
    )


@app.task(name=INGEST, **LONG_TASK)
def ingest(job_id: str, call_id: str | None = None) -> None:
    def step(job: Job, reporter: JobReporter) -> None:
        started = time.monotonic()
        params = job.params
        if isinstance(params, PipelineParams) and params.with_feedback:
            reporter.stage("ingest", "started", dataset=params.dataset, with_feedback=True)
            output = stages.ingest_with_feedback(params.dataset, settings, reporter)
        else:
            source = params.source if isinstance(params, PipelineParams) else None
            dataset = params.dataset if isinstance(params, PipelineParams) else None
            dataset = dataset or params_of(job, DatasetParams).dataset
            version_id = source.version_id if source is not None else None
            reporter.stage("ingest", "started", dataset=dataset, version_id=version_id)
            output = stages.ingest(dataset, settings, reporter, version_id=version_id)
        timed = StageSeconds(ingest=seconds_since(started))
        feedback = {} if output.origin is None else {"feedback_rows": output.origin.feedback_rows}
        reporter.stage(
            "ingest",
            "finished",
            dataset_sha256=output.dataset_sha256,
            seconds=timed.ingest,
            **feedback,
        )
        _hand_on(
            job,
            INGEST,
            dataset_sha256=output.dataset_sha256,
            stage_seconds=timed.model_dump(),
        )

    _step(job_id, INGEST, call_id, step)


@app.task(name=TRAIN, **LONG_TASK)
def train(
    job_id: str,
    dataset_sha256: str,
    call_id: str | None = None,
    stage_seconds: dict[str, float | None] | None = None,
) -> None:
    def step(job: Job, reporter: JobReporter) -> None:
        started = time.monotonic()
        params = _training_params(job)
        reporter.stage("train", "started")
        record = stages.train(
            job.id,
            dataset_sha256,
            settings,
            reporter,
            profile=params.profile,
            base_model=params.base_model,
            max_steps=params.max_steps,
        )
        timed = _timed(stage_seconds, train=seconds_since(started))
        reporter.stage(
            "train",
            "finished",
            **record.validation.model_dump(mode="json"),
            seconds=timed.train,
            plan=record.params.plan and record.params.plan.model_dump(mode="json"),
        )
        _hand_on(
            job,
            TRAIN,
            dataset_sha256=dataset_sha256,
            stage_seconds=timed.model_dump(),
        )

    _step(
        job_id,
        TRAIN,
        call_id,
        step,
        dataset_sha256=dataset_sha256,
        stage_seconds=stage_seconds,
    )


@app.task(name=EVALUATE, **LONG_TASK)
def evaluate(
    job_id: str,
    dataset_sha256: str | None = None,
    call_id: str | None = None,
    stage_seconds: dict[str, float | None] | None = None,
) -> None:
    def step(job: Job, reporter: JobReporter) -> JobResult | None:
        started = time.monotonic()
        reporter.stage("evaluate", "started")
        if isinstance(job.params, EvaluateParams):
            metrics = stages.evaluate_version(
                job.params.model_version, job.params.dataset, settings, reporter
            )
            reporter.stage("evaluate", "finished")
            return EvaluateResult(metrics=metrics)
        if dataset_sha256 is None:
            raise ValueError("evaluating a trained model needs the dataset it was trained on")
        registered = stages.evaluate_and_register(
            job.id, dataset_sha256, settings, reporter, _timed(stage_seconds)
        )
        timed = _registered(registered.metrics.stage_seconds, seconds_since(started))
        reporter.stage(
            "evaluate",
            "finished",
            version=registered.version,
            seconds=timed.evaluate,
            registration_seconds=timed.registration,
        )
        if _hand_on(
            job,
            EVALUATE,
            version=registered.version,
            dataset_sha256=dataset_sha256,
            stage_seconds=timed.model_dump(),
        ):
            return None
        return TrainResult(
            dataset_sha256=dataset_sha256,
            version=registered.version,
            metrics=registered.metrics,
            stage_seconds=timed,
        )

    kwargs: dict[str, Any] = {} if dataset_sha256 is None else {"dataset_sha256": dataset_sha256}
    if stage_seconds is not None:
        kwargs["stage_seconds"] = stage_seconds
    _step(job_id, EVALUATE, call_id, step, **kwargs)


@app.task(name=PROMOTE, **LONG_TASK)
def promote(
    job_id: str,
    version: str,
    dataset_sha256: str,
    call_id: str | None = None,
    stage_seconds: dict[str, float | None] | None = None,
) -> None:
    def step(job: Job, reporter: JobReporter) -> JobResult:
        started = time.monotonic()
        reporter.stage("promote", "started", version=version)
        decision = stages.promote_if_better(version, settings, reporter)
        timed = _timed(stage_seconds, promote=seconds_since(started))
        reporter.stage(
            "promote",
            "finished",
            promoted=decision.promoted,
            reason=decision.reason,
            seconds=timed.promote,
        )
        return TrainResult(
            dataset_sha256=dataset_sha256,
            version=version,
            # its metrics.json, on its own test.csv; the promotion holds its holdout scores
            metrics=decision.candidate_test_metrics or decision.candidate_metrics,
            promotion=decision,
            stage_seconds=timed,
        )

    _step(
        job_id,
        PROMOTE,
        call_id,
        step,
        version=version,
        dataset_sha256=dataset_sha256,
        stage_seconds=stage_seconds,
    )


@app.task(name=BATCH_PREDICT, **LONG_TASK)
def batch_predict(job_id: str, call_id: str | None = None) -> None:
    def step(job: Job, reporter: JobReporter) -> JobResult:
        dataset = params_of(job, BatchPredictParams).dataset
        reporter.stage("batch_predict", "started", dataset=dataset)
        fleet = StoreFleet(store(), app, job.owner)
        result = run_batch(job.id, dataset, settings, reporter, fleet, s3_client(settings.storage))
        reporter.stage("batch_predict", "finished", rows=result.rows, seconds=result.seconds)
        return result

    _step(job_id, BATCH_PREDICT, call_id, step)


def _timed(stage_seconds: dict[str, float | None] | None, **more: float) -> StageSeconds:
    """The stages timed so far, as the previous task sent them, and this one's."""
    return StageSeconds.model_validate({**(stage_seconds or {}), **more})


def _registered(stage_seconds: StageSeconds | None, task_s: float) -> StageSeconds:
    """The evaluate task's time split: the evaluation its metrics record, and the rest
    (card, manifest, upload) as registration."""
    timed = stage_seconds or StageSeconds()
    evaluate = timed.evaluate or 0.0
    return timed.model_copy(update={"registration": round(max(0.0, task_s - evaluate), 1)})


def _training_params(job: Job) -> TrainParams | PipelineParams:
    if isinstance(job.params, PipelineParams):
        return job.params.model_copy(
            update={"max_steps": job.params.max_steps or settings.training.pipeline_max_steps}
        )
    return params_of(job, TrainParams)
