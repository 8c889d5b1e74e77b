"""Feedback: POST /v1/feedback stores a person's label for a text in S3 before it answers;
GET /v1/feedback lists the latest; GET /v1/feedback/review lists the answers the predict workers
were least sure of, for a person to confirm or correct.

A feedback text passes the checks a dataset row does: its length against the text limit, a label
of the four (by name or class index 1..4), and a text that is not empty once cleaned as training
cleans it (a text that is not UTF-8, a lone surrogate, is already invalid JSON). With `job_id`,
the version and the label the job answered are read from the job while it is kept (a predict job
lives minutes); an expired job, or another key's, is not an error: what the client sent stands.
"""

import asyncio
from collections.abc import Iterable
from datetime import timedelta

from pydantic import BaseModel, Field, TypeAdapter
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import ratelimit
from gateway.auth import Principal, principal, require
from gateway.parsing import parse_body, parse_query
from gateway.retrain import retrain_if_due
from gateway.services import Services, services
from shared.contracts.errors import InvalidRequest, NotFound
from shared.contracts.feedback import (
    Feedback,
    FeedbackList,
    FeedbackRequest,
    ReviewList,
    UncertainAnswer,
)
from shared.contracts.jobs import JobType
from shared.contracts.models import VERSION_PATTERN
from shared.contracts.results import PredictResult
from shared.contracts.times import utcnow
from shared.feedback import KEY_CHARS, FeedbackStore, text_sha256
from shared.monitoring import MonitorKeys, uncertain_answer
from shared.settings import Settings
from shared.text import clean_text


class FeedbackQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=500)


class ReviewQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=500)
    version: str | None = Field(
        default=None,
        pattern=f"^{VERSION_PATTERN.pattern}$",
        description="the version whose answers to review (default: production)",
    )


FEEDBACK_REQUEST = TypeAdapter(FeedbackRequest)
FEEDBACK_QUERY = TypeAdapter(FeedbackQuery)
REVIEW_QUERY = TypeAdapter(ReviewQuery)


def store_of(state: Services) -> FeedbackStore:
    return FeedbackStore(state.s3, state.settings.storage)


def checked_text(body: FeedbackRequest, settings: Settings) -> str:
    """The text as training cleans it; InvalidRequest where a dataset would drop or flag it."""
    limit = settings.limits.max_text_chars
    if len(body.text) > limit:
        raise InvalidRequest(
            f"text: {len(body.text)} characters; the limit is {limit}",
            details={"fields": ["text"], "limit": limit},
        )
    cleaned = clean_text(body.text)
    if not cleaned:
        raise InvalidRequest(
            "text: nothing is left once it is cleaned (markup, entities or control characters "
            "only)",
            details={"fields": ["text"]},
        )
    return cleaned


async def job_answer(request: Request, job_id: str, index: int) -> tuple[str, str] | None:
    """(version, label) the predict job answered for its text at `index`; None where the job
    has expired, is another key's, or has no answer. An index beyond its texts, or a job of
    another type, is a 422."""
    state = services(request)
    try:
        job = await state.store.get(job_id)
    except NotFound:
        return None
    if not principal(request).owns(job):
        return None
    if job.type is not JobType.predict:
        raise InvalidRequest(
            f"job_id: {job_id} is a {job.type.value} job; feedback corrects a predict job's answer",
            details={"fields": ["job_id"], "type": job.type.value},
        )
    texts = job.texts or 0
    if index >= texts:
        raise InvalidRequest(
            f"index: job {job_id} classified {texts} text{'s' if texts != 1 else ''} "
            f"(index 0 to {texts - 1}); {index} is out of range",
            details={"fields": ["index"], "texts": texts},
        )
    if not isinstance(job.result, PredictResult) or index >= len(job.result.predictions):
        return None
    return job.result.model_version, job.result.predictions[index].label


async def record_of(request: Request, caller: Principal, body: FeedbackRequest) -> Feedback:
    cleaned = checked_text(body, services(request).settings)
    index = None if body.job_id is None else (body.index or 0)
    found = None
    if body.job_id is not None and index is not None:
        found = await job_answer(request, body.job_id, index)
    version, predicted = found if found else (body.model_version, body.predicted)
    label = body.label_name
    return Feedback.model_validate(
        {
            "text": cleaned,
            "text_sha256": text_sha256(cleaned),
            "label": label,
            "given_by": caller.name,
            "model_version": version,
            "predicted": predicted,
            "agreed": None if predicted is None else predicted == label,
            "from_job": found is not None,
            "job_id": body.job_id,
            "index": index,
            "at": utcnow(),
        }
    )


async def give_feedback(request: Request) -> JSONResponse:
    """201 with the record, once it is in S3."""
    state = services(request)
    caller = require(request, "predict")
    ratelimit.check(request, state.limits.feedback)
    body = await parse_body(request, FEEDBACK_REQUEST)
    record = await record_of(request, caller, body)
    await asyncio.to_thread(store_of(state).put, record)
    await retrain_if_due(state, record.text_sha256[:KEY_CHARS])
    return JSONResponse(record.model_dump(mode="json"), status_code=201)


async def list_feedback(request: Request) -> JSONResponse:
    """The texts given feedback last, newest first, each with its latest."""
    require(request, "read")
    state = services(request)
    ratelimit.check(request, state.limits.reads)
    query = parse_query(request.query_params, FEEDBACK_QUERY)
    records = await asyncio.to_thread(store_of(state).recent, query.limit)
    return JSONResponse(FeedbackList(feedback=records).model_dump(mode="json"))


async def review(request: Request) -> JSONResponse:
    """Production's (or `version`'s) newest uncertain answers, less those whose text was given
    feedback within `monitor.keep_s`."""
    require(request, "read")
    state = services(request)
    ratelimit.check(request, state.limits.reads)
    query = parse_query(request.query_params, REVIEW_QUERY)
    monitor = state.settings.monitor
    version = query.version
    if version is None:
        pointer = await asyncio.to_thread(state.registry.production)
        version = pointer.version if pointer else None
    listing = ReviewList(version=version, threshold=monitor.review_confidence, uncertain=[])
    if version is None or not monitor.review_keep:
        return JSONResponse(listing.model_dump(mode="json"))
    key = MonitorKeys(state.settings.redis.key_prefix).uncertain(version)
    members = await state.store.redis.zrevrange(key, 0, monitor.review_keep - 1, withscores=True)
    answers = newest_per_text(uncertain_answer(member, at) for member, at in members)
    since = utcnow() - timedelta(seconds=monitor.keep_s)
    given = await asyncio.to_thread(store_of(state).texts_since, since)
    listing.uncertain = [
        answer
        for answer in answers
        if text_sha256(clean_text(answer.text))[:KEY_CHARS] not in given
    ][: query.limit]
    return JSONResponse(listing.model_dump(mode="json"))


def newest_per_text(answers: Iterable[UncertainAnswer]) -> list[UncertainAnswer]:
    """Each text once, its newest answer (the input newest first)."""
    seen: dict[str, UncertainAnswer] = {}
    for answer in answers:
        seen.setdefault(answer.text, answer)
    return list(seen.values())


class FeedbackEndpoint(HTTPEndpoint):
    """One route for both methods, so that a 405 names them both in its Allow header."""

    async def post(self, request: Request) -> JSONResponse:
        return await give_feedback(request)

    async def get(self, request: Request) -> JSONResponse:
        return await list_feedback(request)


routes = [Route("/feedback", FeedbackEndpoint), Route("/feedback/review", review, methods=["GET"])]
