"""The job store for the gateway's event loop."""

from collections.abc import Sequence

import redis

from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import Event, Job, JobStatus, JobType
from shared.jobstore.base import (
    Message,
    PredictLoad,
    Scripts,
    listed_indexes,
    newest,
    queue_create,
    recent_args,
)
from shared.jobstore.changes import Change, cancelled, failed, refusal
from shared.jobstore.codec import decode_event, decode_job
from shared.redis_clients import async_client
from shared.settings import Settings


class AsyncJobStore(Scripts):
    @classmethod
    def from_settings(cls, settings: Settings) -> "AsyncJobStore":
        return cls(async_client(settings.redis), settings.redis.key_prefix, settings.jobs)

    async def create(self, job: Job) -> Job:
        await self.create_together([job], [])
        return job

    async def create_together(self, jobs: Sequence[Job], messages: Sequence[Message]) -> None:
        """Store new jobs and push their messages, all in one transaction: every job with its
        message, or none of them."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for job in jobs:
                queue_create(pipe, self.keys, job, self.settings)
            for message in messages:
                pipe.lpush(message.queue, message.body)
            await pipe.execute()

    async def get(self, job_id: str) -> Job:
        return decode_job(job_id, await self.redis.hgetall(self.keys.job(job_id)))

    async def recent(
        self,
        type_: JobType | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        owner: str | None = None,
    ) -> list[Job]:
        """The newest jobs; with `owner`, only the jobs that key created."""
        args = recent_args(self.keys, type_, status, limit, owner)
        indexes = listed_indexes(self.keys, type_, owner)
        return newest([await self._recent(keys=[index], args=args) for index in indexes], limit)

    async def _apply(self, job_id: str, change: Change) -> None:
        try:
            await self._emit(keys=self.keys.emit(job_id), args=change.argv(self.settings))
        except redis.ResponseError as exc:
            raise refusal(job_id, exc) from None

    async def cancel(self, job_id: str) -> Job:
        await self._apply(job_id, cancelled())
        return await self.get(job_id)

    async def fail(self, job_id: str, error: ErrorInfo) -> None:
        await self._apply(job_id, failed(error))

    async def predict_load(self) -> PredictLoad:
        pending, answered = await self.redis.mget(self.keys.pending, self.keys.answered)
        return PredictLoad(max(0, int(pending or 0)), int(answered or 0))

    async def events(
        self, job_id: str, after: str = "0-0", until: str = "+", count: int = 1000
    ) -> list[Event]:
        """Events after `after` up to and including `until`, without waiting."""
        entries = await self.redis.xrange(
            self.keys.events(job_id), min=f"({after}", max=until, count=count
        )
        return [decode_event(entry_id, fields) for entry_id, fields in entries]
