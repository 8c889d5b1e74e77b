"""POST /v1/predict: classify texts and wait, a bounded time, for the answer."""

import asyncio

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import ratelimit
from gateway.auth import require
from gateway.errors import JobFailed
from gateway.jobs import accepted, new_job, submit
from gateway.parsing import parse_body
from gateway.services import services
from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import EventType, PredictParams

PREDICT_REQUEST = TypeAdapter(PredictParams)


async def predict(request: Request) -> JSONResponse:
    """200 with the predictions; the job's error if it failed; 202 with the job if still busy."""
    state = services(request)
    caller = require(request, "predict")
    ratelimit.check(request, state.limits.predict)
    params = await parse_body(request, PREDICT_REQUEST)
    job = new_job(state, params, caller)
    state.admission.admit(job.texts or 0)
    async with state.answers.expect(job.id) as answer:
        await submit(state, job)
        try:
            end = await asyncio.wait_for(answer, state.settings.gateway.predict_wait_s)
        except TimeoutError:
            return accepted(job)
    if end.type is EventType.error:
        raise JobFailed(ErrorInfo.model_validate(end.data), job.id)
    return JSONResponse({**end.data, "job_id": job.id})


routes = [Route("/predict", predict, methods=["POST"])]
