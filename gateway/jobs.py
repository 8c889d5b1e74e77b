"""Job endpoints: create (and send the first task), list, read, cancel."""

import asyncio
import logging

from pydantic import TypeAdapter
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.parsing import parse_body, parse_query
from gateway.schemas import JobQuery
from gateway.services import Services, services
from shared.errors import ErrorInfo, InvalidRequest, ServiceUnavailable
from shared.jobs import Job, JobParams, JobType, PredictParams, new_job_id
from shared.settings import Settings
from shared.tasks import dispatch

log = logging.getLogger("gateway")

JOB_REQUEST: TypeAdapter[JobParams] = TypeAdapter(JobParams)
JOB_QUERY = TypeAdapter(JobQuery)
JOB_TAGS = frozenset(JobType)


def check_predict_limits(params: PredictParams, settings: Settings) -> None:
    if len(params.texts) > settings.max_texts:
        raise InvalidRequest(
            f"texts: {len(params.texts)} texts given; the limit is {settings.max_texts}",
            details={"fields": ["texts"], "limit": settings.max_texts},
        )
    for index, text in enumerate(params.texts):
        if len(text) > settings.max_text_chars:
            raise InvalidRequest(
                f"texts[{index}]: {len(text)} characters; the limit is {settings.max_text_chars}",
                details={
                    "fields": [f"texts[{index}]"],
                    "index": index,
                    "limit": settings.max_text_chars,
                },
            )


async def submit(state: Services, params: JobParams) -> Job:
    """Store a new job and send its first task; a job that cannot be sent is failed, not left."""
    if isinstance(params, PredictParams):
        check_predict_limits(params, state.settings)
    job = Job(id=new_job_id(), type=JobType(params.type), params=params)
    await state.store.create(job)
    try:
        await asyncio.to_thread(dispatch, state.celery, job)
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


class Jobs(HTTPEndpoint):
    async def post(self, request: Request) -> JSONResponse:
        params = await parse_body(request, JOB_REQUEST, tags=JOB_TAGS)
        return accepted(await submit(services(request), params))

    async def get(self, request: Request) -> JSONResponse:
        query = parse_query(request.query_params, JOB_QUERY)
        jobs = await services(request).store.recent(query.type, query.status, query.limit)
        return JSONResponse({"jobs": [job.public() for job in jobs]})


class OneJob(HTTPEndpoint):
    async def get(self, request: Request) -> JSONResponse:
        job = await services(request).store.get(request.path_params["job_id"])
        return JSONResponse(job.public())

    async def delete(self, request: Request) -> JSONResponse:
        """Cancel: 409 (with the status in details) when the job has already ended."""
        job = await services(request).store.cancel(request.path_params["job_id"])
        return JSONResponse(job.public())


routes = [Route("/jobs", Jobs), Route("/jobs/{job_id}", OneJob)]
