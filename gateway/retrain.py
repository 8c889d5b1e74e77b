"""Feedback that retrains by itself: with `feedback_retrain_after` set, the feedback that brings
the texts given feedback since the last such start to that many starts a with_feedback pipeline
(promotion decides on the holdout as always).

The texts since are a Redis set of their keys (at most `feedback_retrain_after` of them); one
script adds a text and, once the set is full, empties it and says so, so that of any number of
gateways exactly one starts the pipeline. A start that fails puts its texts back for the next
feedback to try again."""

import logging

from redis.asyncio import Redis

from gateway.admission import admit_training
from gateway.jobs import submit
from gateway.services import Services
from shared.contracts.jobs import Job, JobType, PipelineParams, new_job_id
from shared.monitoring import MonitorKeys
from shared.redis_clients import text

log = logging.getLogger("gateway.retrain")

# KEYS[1]: the set; ARGV[1]: the text's key, ARGV[2]: how many make a pipeline due.
# Returns the set's members when this text made it due (and empties it), else nothing.
_COUNT = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then return {} end
local texts = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return texts
"""


async def retrain_if_due(state: Services, text_key: str) -> Job | None:
    """The with_feedback pipeline this feedback (on the text `text_key`) started, if it made one
    due. Feedback is stored before this runs: a failure here is logged, never the caller's."""
    due = state.settings.monitor.feedback_retrain_after
    if due is None:
        return None
    redis: Redis = state.store.redis
    pending = MonitorKeys(state.settings.redis.key_prefix).feedback_pending
    try:
        texts = [text(member) for member in await redis.eval(_COUNT, 1, pending, text_key, due)]
    except Exception:
        log.exception("feedback could not be counted toward the next with_feedback pipeline")
        return None
    if not texts:
        return None
    try:
        await admit_training(state.store, state.settings, state.metrics)
        job = Job(id=new_job_id(), type=JobType.pipeline, params=PipelineParams(with_feedback=True))
        await submit(state, job)
    except Exception:
        log.exception(
            "%d texts given feedback made a pipeline due, and it could not start; the "
            "next feedback tries again",
            len(texts),
        )
        await redis.sadd(pending, *texts)
        return None
    log.info("%d texts given feedback: started with_feedback pipeline %s", len(texts), job.id)
    return job
