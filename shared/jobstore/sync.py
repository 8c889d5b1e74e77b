"""The job store for synchronous code: workers, the listener, the reaper, the CLI."""

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from shared.contracts.errors import AgNewsError, ErrorInfo, NotFound
from shared.contracts.jobs import Event, EventType, Job, JobStatus, JobType, TaskCall
from shared.contracts.results import JobResult, PredictResult
from shared.contracts.times import utcnow
from shared.jobstore.base import (
    Claim,
    PredictLoad,
    Scripts,
    claim_of,
    listed_indexes,
    newest,
    queue_create,
    recent_args,
)
from shared.jobstore.changes import (
    Change,
    cancelled,
    failed,
    progressed,
    refusal,
    started,
    succeeded,
)
from shared.jobstore.codec import DELIVERIES, decode_event, decode_job, stamp
from shared.redis_clients import sync_client
from shared.settings import Settings

_ENDED = ("succeeded", "failed", "cancelled")


class JobStore(Scripts):
    @classmethod
    def from_settings(cls, settings: Settings) -> "JobStore":
        return cls(sync_client(settings.redis), settings.redis.key_prefix, settings.jobs)

    def create(self, job: Job) -> Job:
        with self.redis.pipeline(transaction=True) as pipe:
            queue_create(pipe, self.keys, job, self.settings)
            pipe.execute()
        return job

    def get(self, job_id: str) -> Job:
        return decode_job(job_id, self.redis.hgetall(self.keys.job(job_id)))

    def predict_answers(self, job_ids: Sequence[str]) -> dict[str, PredictResult | ErrorInfo]:
        """Of these predict jobs, those that ended: each one's answer or error (an expired job's
        error says so)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), ["status", "result", "error"])
        ended: dict[str, PredictResult | ErrorInfo] = {}
        for job_id, (status, result, error) in zip(job_ids, pipe.execute(), strict=True):
            if status is None:
                ended[job_id] = ErrorInfo(
                    code=NotFound.code, message=f"predict job {job_id} expired unanswered"
                )
            elif status == JobStatus.succeeded and result is not None:
                ended[job_id] = PredictResult.model_validate_json(result)
            elif status in _ENDED:
                ended[job_id] = (
                    ErrorInfo.model_validate_json(error)
                    if error
                    else ErrorInfo(code="cancelled", message=f"predict job {job_id} was {status}")
                )
        return ended

    def recent(
        self,
        type_: JobType | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        owner: str | None = None,
    ) -> list[Job]:
        """The newest jobs; with `owner`, only the jobs that key created."""
        args = recent_args(self.keys, type_, status, limit, owner)
        indexes = listed_indexes(self.keys, type_, owner)
        return newest([self._recent(keys=[index], args=args) for index in indexes], limit)

    def _apply(self, job_id: str, change: Change) -> str:
        try:
            return str(self._emit(keys=self.keys.emit(job_id), args=change.argv(self.settings)))
        except redis.ResponseError as exc:
            raise refusal(job_id, exc) from None

    def start(self, job_id: str) -> None:
        """Mark a job running; raises JobCancelled if it was cancelled while it waited."""
        self._apply(job_id, started())

    def progress(self, job_id: str, data: Mapping[str, Any]) -> None:
        self._apply(job_id, progressed(data))

    def event(self, job_id: str, type_: EventType, data: Mapping[str, Any]) -> None:
        if type_.terminal:
            raise ValueError("end a job with succeed() or fail()")
        self._apply(job_id, Change().event(type_, data))

    def succeed(self, job_id: str, result: JobResult) -> None:
        self._apply(job_id, succeeded(result))

    def fail(self, job_id: str, error: ErrorInfo) -> None:
        self._apply(job_id, failed(error))

    def cancel(self, job_id: str) -> Job:
        self._apply(job_id, cancelled())
        return self.get(job_id)

    def claim_many(self, job_ids: Sequence[str], task: str) -> list[Claim]:
        """Take jobs for `task` in one round trip: for each job that has not ended, count a
        delivery, read its parameters and mark it running; the others are refused, saying why
        (gone, ended, cancelled while it waited)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                key = [self.keys.job(job_id)]
                self._touch(keys=key, args=["incr", f"{DELIVERIES}{task}"], client=pipe)
                pipe.hget(key[0], "params")
                self._emit(
                    keys=self.keys.emit(job_id), args=started().argv(self.settings), client=pipe
                )
            replies = pipe.execute(raise_on_error=False)
        return [
            claim_of(job_id, *replies[i : i + 3])
            for i, job_id in zip(range(0, len(replies), 3), job_ids, strict=True)
        ]

    def finish_many(
        self, outcomes: Sequence[tuple[str, JobResult | ErrorInfo]]
    ) -> list[AgNewsError | None]:
        """End jobs, each with its result or its error, in one round trip; for each, None or
        why it was not written."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, end in outcomes:
                change = failed(end) if isinstance(end, ErrorInfo) else succeeded(end)
                self._emit(
                    keys=self.keys.emit(job_id), args=change.argv(self.settings), client=pipe
                )
            replies = pipe.execute(raise_on_error=False)
        refusals: list[AgNewsError | None] = []
        for (job_id, _), reply in zip(outcomes, replies, strict=True):
            refused = refusal(job_id, reply) if isinstance(reply, redis.ResponseError) else None
            if refused is not None and not isinstance(refused, AgNewsError):
                raise refused
            refusals.append(refused)
        return refusals

    def count_delivery(self, job_id: str, task: str) -> int:
        """Count one more delivery of `task` for a job; -1 if the job has ended or expired."""
        return int(self._touch(keys=[self.keys.job(job_id)], args=["incr", f"{DELIVERIES}{task}"]))

    def heartbeat(
        self, job_id: str, task: TaskCall | None = None, *, running: bool = False
    ) -> bool:
        """The job's worker is alive (and, when named, in `task`: running it, or handing the
        job to it); False once the job has ended."""
        key = [self.keys.job(job_id)]
        if task is not None:
            self._touch(keys=key, args=["set", "task", task.model_dump_json()])
        if task is not None and running:
            self._touch(keys=key, args=["set", "running_call", task.id])
        return int(self._touch(keys=key, args=["set", "heartbeat_at", stamp(utcnow())])) == 0

    def active(self, limit: int = 10_000) -> list[Job]:
        """Jobs that have not ended, oldest first; entries of jobs gone are dropped."""
        hash_keys: list[str] = self.redis.zrange(self.keys.active, 0, limit - 1)
        with self.redis.pipeline(transaction=False) as pipe:
            for key in hash_keys:
                pipe.hgetall(key)
            rows = pipe.execute()
        jobs: list[Job] = []
        prefix = self.keys.job("")
        gone = []
        for key, row in zip(hash_keys, rows, strict=True):
            if row and row.get("status") not in _ENDED:
                jobs.append(decode_job(key.removeprefix(prefix), row))
            else:
                gone.append(key)
        if gone:
            self.redis.zrem(self.keys.active, *gone)
        return jobs

    def sweep_indexes(self, budget: int) -> int:
        """Drop index entries of train, evaluate and pipeline jobs that have expired, checking
        the oldest `budget` of each index; returns how many went. (Predict indexes forget theirs
        as new predict jobs come.)"""
        owners: list[str] = sorted(self.redis.smembers(self.keys.owners))
        indexes = [self.keys.index(), *(self.keys.index(owner) for owner in owners)]
        prefix = self.keys.job("")
        return sum(int(self._sweep(keys=[index], args=[prefix, budget])) for index in indexes)

    def predict_load(self) -> PredictLoad:
        pending, answered = self.redis.mget(self.keys.pending, self.keys.answered)
        return PredictLoad(max(0, int(pending or 0)), int(answered or 0))

    def is_cancelled(self, job_id: str) -> bool:
        status: str | None = self.redis.hget(self.keys.job(job_id), "status")
        return status == JobStatus.cancelled.value

    def events(self, job_id: str, after: str = "0-0", count: int = 1000) -> list[Event]:
        entries = self.redis.xrange(self.keys.events(job_id), min=f"({after}", count=count)
        return [decode_event(entry_id, fields) for entry_id, fields in entries]
