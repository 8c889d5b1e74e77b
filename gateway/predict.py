"""POST /v1/predict: classify texts and wait, a bounded time, for the answer."""

import asyncio

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import ratelimit
from gateway.auth import require
from gateway.errors import JobFailed
from gateway.hub import Subscription
from gateway.jobs import accepted, submit
from gateway.parsing import parse_body
from gateway.services import services
from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import Event, EventType, PredictParams

PREDICT_REQUEST = TypeAdapter(PredictParams)


async def wait_for_end(subscription: Subscription, timeout_s: float) -> Event | None:
    """The job's terminal event, or None if it has not ended within `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (left := deadline - loop.time()) > 0:
        event = await subscription.next(left)
        if event is not None and event.type.terminal:
            return event
    return None


async def predict(request: Request) -> JSONResponse:
    """200 with the predictions; the job's error if it failed; 202 with the job if still busy."""
    state = services(request)
    caller = require(request, "predict")
    ratelimit.check(request, state.limits.predict)
    params = await parse_body(request, PREDICT_REQUEST)
    job = await submit(state, params, caller)
    async with state.hub.subscribe(job.id) as subscription:
        end = await wait_for_end(subscription, state.settings.gateway.predict_wait_s)
    if end is None:
        return accepted(job)
    if end.type is EventType.error:
        raise JobFailed(ErrorInfo.model_validate(end.data), job.id)
    return JSONResponse({**end.data, "job_id": job.id})


routes = [Route("/predict", predict, methods=["POST"])]
