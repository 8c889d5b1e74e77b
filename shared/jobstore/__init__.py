"""Jobs in Redis. A train, evaluate or pipeline job is a hash, a capped stream of its events and
entries in the job indexes, kept `job_ttl_s` once it ends. A predict job is a hash that expires
`predict_job_ttl_s` after its creation and, once answered, keeps its answer, not its texts; its
terminal event goes to the one stream of answers the gateways follow.

Every write that changes a job also appends its event, atomically, in one Lua script that
refuses to touch a job that has already ended: the last event of every job is its terminal
`result` or `error`, whatever races between a worker finishing and a client cancelling.
"""

from shared.jobstore.aio import AsyncJobStore
from shared.jobstore.base import Claim, Message, PredictLoad
from shared.jobstore.codec import decode_event, decode_job, encode_job
from shared.jobstore.keys import JobKeys
from shared.jobstore.sync import JobStore

__all__ = [
    "AsyncJobStore",
    "Claim",
    "JobKeys",
    "JobStore",
    "Message",
    "PredictLoad",
    "decode_event",
    "decode_job",
    "encode_job",
]
