"""Predict answers, as they are written: one XREAD BLOCK loop per gateway process follows the
one stream every predict job's terminal event goes to, and hands each to the request waiting for
it, reading the answer from the job's record (one round trip for every answer of a read).
Predict jobs have no stream of their own, so that an answered prediction costs Redis its small
record alone (docs/capacity.md)."""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
import redis.exceptions

from gateway.background import Background
from gateway.hub import HubTuning
from shared.contracts.jobs import Event, EventType, Job
from shared.jobstore import AsyncJobStore

log = logging.getLogger("gateway.answers")

# A predict job's events are its status and its end, with these ids (it has no stream).
PREDICT_STATUS_ID = "0-1"
PREDICT_END_ID = "0-2"


class PredictAnswers:
    def __init__(
        self, client: "redis.asyncio.Redis", store: AsyncJobStore, tuning: HubTuning
    ) -> None:
        """`client` holds one connection in XREAD at all times."""
        self.client = client
        self.store = store
        self.tuning = tuning
        # Every request waiting for a job: a POST /v1/predict and any number of event streams
        # may wait for the same job, and each gets the answer.
        self._waiting: dict[str, list[asyncio.Future[Event]]] = {}
        self.background = Background(self._run)

    @property
    def waiting(self) -> int:
        return sum(len(answers) for answers in self._waiting.values())

    def start(self) -> None:
        self.background.start()

    async def stop(self) -> None:
        await self.background.stop()

    @contextlib.asynccontextmanager
    async def expect(self, job_id: str) -> AsyncIterator["asyncio.Future[Event]"]:
        """The job's terminal event, once it is written; expect it before the job can end."""
        answer: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        answers = self._waiting.setdefault(job_id, [])
        answers.append(answer)
        try:
            yield answer
        finally:
            answers.remove(answer)
            if not answers and self._waiting.get(job_id) is answers:
                del self._waiting[job_id]

    async def _run(self) -> None:
        position: str | None = None
        delay = 0.0
        while True:
            try:
                position = position or await self._latest()
                position = await self._read(position)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if not delay:
                    log.warning("predict answers: Redis lost, retrying until it is back: %s", exc)
                delay = min(max(delay * 2, self.tuning.retry_min_s), self.tuning.retry_max_s)
                await asyncio.sleep(delay)
                continue
            except Exception:
                log.exception("predict answers: a read failed")
                delay = min(max(delay * 2, self.tuning.retry_min_s), self.tuning.retry_max_s)
                await asyncio.sleep(delay)
                continue
            delay = 0.0

    async def _latest(self) -> str:
        """Where the stream ends now: answers from here on are this process's to hand out."""
        last: Any = await self.client.xrevrange(self.store.keys.answers, count=1)
        return str(last[0][0]) if last else "0-0"

    async def _read(self, position: str) -> str:
        key = self.store.keys.answers
        reply: Any = await self.client.xread(
            {key: position}, count=self.tuning.batch, block=self.tuning.block_ms
        )
        ended: list[str] = []
        for _, entries in reply.items() if isinstance(reply, dict) else reply or []:
            for entry_id, fields in entries:
                position = entry_id
                if fields.get("job", "") in self._waiting:
                    ended.append(fields["job"])
        if ended:
            await self._hand_out(ended)
        return position

    async def _hand_out(self, job_ids: list[str]) -> None:
        """The answers of jobs this process waits for, read from their records at once."""
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.store.keys.job(job_id), "result", "error")
            rows = await pipe.execute()
        for job_id, (result, error) in zip(job_ids, rows, strict=True):
            if not (result or error):
                continue
            for answer in self._waiting.get(job_id, []):
                if not answer.done():
                    answer.set_result(_end(result, error))


def _end(result: str | None, error: str | None) -> Event:
    if result is not None:
        return Event(id=PREDICT_END_ID, type=EventType.result, data=json.loads(result))
    return Event(id=PREDICT_END_ID, type=EventType.error, data=json.loads(error or "{}"))


def ended(job: Job) -> Event | None:
    """A predict job's terminal event, as its record holds it; None while it runs."""
    if job.result is not None:
        return Event(
            id=PREDICT_END_ID, type=EventType.result, data=job.result.model_dump(mode="json")
        )
    if job.error is not None:
        return Event(
            id=PREDICT_END_ID, type=EventType.error, data=job.error.model_dump(mode="json")
        )
    return None
