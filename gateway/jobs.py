"""Job endpoints: create (and send the first task), list, read, cancel."""

import asyncio
import logging

import redis.exceptions
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import TypeAdapter
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import ratelimit
from gateway.admission import admit_training
from gateway.auth import Principal, principal, require
from gateway.parsing import parse_body, parse_query
from gateway.schemas import JobOutput, JobQuery
from gateway.services import Services, services
from shared.broker import dispatch
from shared.contracts.errors import ErrorInfo, InvalidRequest, NotFound, ServiceUnavailable
from shared.contracts.jobs import (
    BATCH_INPUT_SUFFIXES,
    BatchPredictParams,
    DatasetParams,
    EvaluateParams,
    Job,
    JobParams,
    JobType,
    PipelineParams,
    PredictParams,
    TrainParams,
    new_job_id,
)
from shared.contracts.results import BatchPredictResult
from shared.contracts.stages import first_task
from shared.logs import bound
from shared.redis_clients import backoff
from shared.settings import Settings
from shared.sources import api_base_model, api_dataset, api_model_version
from shared.storage import parse_s3_url

log = logging.getLogger("gateway")

JOB_REQUEST: TypeAdapter[JobParams] = TypeAdapter(JobParams)
JOB_QUERY = TypeAdapter(JobQuery)
JOB_TAGS = frozenset(JobType)
BROKER_AWAY = (OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def check_predict_limits(params: PredictParams, settings: Settings) -> None:
    if len(params.texts) > settings.limits.max_texts:
        raise InvalidRequest(
            f"texts: {len(params.texts)} texts given; the limit is {settings.limits.max_texts}",
            details={"fields": ["texts"], "limit": settings.limits.max_texts},
        )
    for index, text in enumerate(params.texts):
        if len(text) > settings.limits.max_text_chars:
            raise InvalidRequest(
                f"texts[{index}]: {len(text)} characters; the limit is "
                f"{settings.limits.max_text_chars}",
                details={
                    "fields": [f"texts[{index}]"],
                    "index": index,
                    "limit": settings.limits.max_text_chars,
                },
            )


def api_params(params: JobParams, settings: Settings) -> JobParams:
    """An API job's parameters with its sources checked: datasets from the bucket's incoming/
    or datasets/ only, allowlisted base models, and no `source` (the listener's to set)."""
    if isinstance(params, PredictParams):
        check_predict_limits(params, settings)
        return params
    if isinstance(params, BatchPredictParams):
        dataset = api_dataset(params.dataset, settings, BATCH_INPUT_SUFFIXES)
        return params.model_copy(update={"dataset": dataset})
    assert isinstance(params, DatasetParams | PipelineParams)
    update: dict[str, object] = {}
    if params.dataset is not None:
        update["dataset"] = api_dataset(params.dataset, settings)
    if isinstance(params, TrainParams | PipelineParams) and params.base_model is not None:
        update["base_model"] = api_base_model(params.base_model, settings)
    if isinstance(params, EvaluateParams) and params.model_version is not None:
        update["model_version"] = api_model_version(params.model_version)
    if isinstance(params, PipelineParams) and params.source is not None:
        raise InvalidRequest(
            "source: only the storage listener names the object version a pipeline starts from",
            details={"fields": ["source"]},
        )
    return params.model_copy(update=update)


async def send_first_task(celery: Celery, settings: Settings, job: Job) -> None:
    """Each try fails fast; while the broker is away (Redis restarting), the next comes after
    the Redis clients' backoff, as many times as they retry, and no thread waits meanwhile."""
    for failures in range(settings.redis.retries + 1):
        try:
            await asyncio.to_thread(dispatch, celery, job)
            return
        except BROKER_AWAY as exc:
            if failures == settings.redis.retries:
                raise
            log.info("job %s not sent, the task broker is away (%s); trying again", job.id, exc)
            await asyncio.sleep(backoff().compute(failures + 1))


def new_job(state: Services, params: JobParams, owner: Principal) -> Job:
    """The job a request asks for, its sources checked against what API jobs may read."""
    params = api_params(params, state.settings)
    return Job(id=new_job_id(), type=JobType(params.type), params=params, owner=owner.name)


async def submit(state: Services, job: Job) -> Job:
    """Store a new job and send its first task; a job that cannot be sent is failed, not left.
    A predict job and its message are stored together, in one round trip (`PredictSender`)."""
    if job.type is JobType.predict:
        return await state.predicts.submit(job)
    with bound(job_id=job.id, task=first_task(job.type)):
        return await _create_and_send(state, job)


async def _create_and_send(state: Services, job: Job) -> Job:
    await state.store.create(job)
    log.info("created %s job %s", job.type, job.id)
    try:
        await send_first_task(state.celery, state.settings, job)
    except Exception as exc:
        reason = f"could not queue the job: task broker unavailable: {exc}"
        try:
            await state.store.fail(job.id, ErrorInfo(code=ServiceUnavailable.code, message=reason))
        except Exception:
            log.exception("job %s was not queued and could not be marked failed", job.id)
        raise ServiceUnavailable(reason, details={"job_id": job.id}) from exc
    return job


def accepted(job: Job) -> JSONResponse:
    return JSONResponse(job.public(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


async def visible_job(request: Request, job_id: str) -> Job:
    """A job the caller may see: any job for admin keys, else only its own (404 for others',
    so that ids of other keys' jobs are not confirmed)."""
    job = await services(request).store.get(job_id)
    if not principal(request).owns(job):
        raise NotFound(f"job {job_id} does not exist or has expired")
    return job


class Jobs(HTTPEndpoint):
    async def post(self, request: Request) -> JSONResponse:
        """Predict and batch jobs need the `predict` scope; training, evaluation and pipelines
        `admin`."""
        state = services(request)
        params = await parse_body(request, JOB_REQUEST, tags=JOB_TAGS)
        predicts = isinstance(params, PredictParams | BatchPredictParams)
        caller = require(request, "predict" if predicts else "admin")
        ratelimit.check(request, state.limits.jobs)
        job = new_job(state, params, caller)
        if job.type is JobType.predict:
            state.admission.admit(job.texts or 0)
        elif job.type in (JobType.train, JobType.pipeline):
            await admit_training(state.store, state.settings, state.metrics)
        return accepted(await submit(state, job))

    async def get(self, request: Request) -> JSONResponse:
        """Admin keys list every job; other keys only their own."""
        caller = principal(request)
        ratelimit.check(request, services(request).limits.reads)
        query = parse_query(request.query_params, JOB_QUERY)
        owner = None if caller.admin else caller.name
        jobs = await services(request).store.recent(query.type, query.status, query.limit, owner)
        return JSONResponse({"jobs": [job.public() for job in jobs]})


class OneJob(HTTPEndpoint):
    async def get(self, request: Request) -> JSONResponse:
        ratelimit.check(request, services(request).limits.reads)
        job = await visible_job(request, request.path_params["job_id"])
        return JSONResponse(job.public())

    async def delete(self, request: Request) -> JSONResponse:
        """Cancel one's own job (admin: any); 409 (details name the status) if it has ended."""
        job_id = request.path_params["job_id"]
        await visible_job(request, job_id)
        job = await services(request).store.cancel(job_id)
        return JSONResponse(job.public())


async def job_output(request: Request) -> JSONResponse:
    """A presigned GET of a finished batch job's predictions.csv."""
    ratelimit.check(request, services(request).limits.reads)
    job = await visible_job(request, request.path_params["job_id"])
    if not isinstance(job.result, BatchPredictResult):
        raise NotFound(f"job {job.id} has no output file: only a succeeded batch_predict job has")
    state = services(request)
    bucket, key = parse_s3_url(job.result.output, state.settings.storage)
    expiry = state.settings.gateway.presign_expiry_s
    url = await asyncio.to_thread(
        state.s3_public.generate_presigned_url,
        "get_object",
        Params={"Bucket": bucket, "Key": key},
        ExpiresIn=expiry,
    )
    return JSONResponse(JobOutput(key=key, url=url, expires_in=expiry).model_dump())


routes = [
    Route("/jobs", Jobs),
    Route("/jobs/{job_id}", OneJob),
    Route("/jobs/{job_id}/output", job_output, methods=["GET"]),
]
