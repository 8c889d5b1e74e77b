"""Predict jobs stored together: the jobs submitted while the last transaction was in flight go
in the next one, a message per `per_message` of them.

Under load requests come in bursts (a batch's answers release its clients at once, and they send
again), and a message per job cost each predict worker a Redis round trip to record it as
unacknowledged, and Celery's handling, per job. A message naming several jobs costs that once. A
lone request waits for nothing: with no transaction in flight its own starts within a few turns
of the event loop, time enough for the requests read in the same turn to join it.
"""

import asyncio
from collections.abc import Callable

from shared.contracts.jobs import Job
from shared.jobstore import AsyncJobStore, Message

# Event-loop turns a transaction waits before it takes what is pending: the requests whose bytes
# arrived together reach `submit` within them.
GATHER_TURNS = 3


class PredictSender:
    def __init__(
        self,
        store: AsyncJobStore,
        message: Callable[[list[str]], Message],
        per_message: int,
    ) -> None:
        self._store = store
        self._message = message
        self._per_message = per_message
        self._pending: list[tuple[Job, asyncio.Future[None]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def submit(self, job: Job) -> Job:
        """Store a predict job with a message naming it; raises what storing it raised."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((job, done))
        if self._sending is None:
            self._sending = asyncio.create_task(self._send_pending())
        await done
        return job

    async def _send_pending(self) -> None:
        try:
            while self._pending:
                for _ in range(GATHER_TURNS):
                    await asyncio.sleep(0)
                taken, self._pending = self._pending, []
                await self._send(taken)
        finally:
            self._sending = None

    async def _send(self, taken: list[tuple[Job, asyncio.Future[None]]]) -> None:
        jobs = [job for job, _ in taken]
        groups = [jobs[i : i + self._per_message] for i in range(0, len(jobs), self._per_message)]
        try:
            await self._store.create_together(
                jobs, [self._message([job.id for job in group]) for group in groups]
            )
        except asyncio.CancelledError:
            for _, done in taken:
                done.cancel()
            raise
        except Exception as exc:
            for _, done in taken:
                if not done.done():
                    done.set_exception(exc)
        else:
            for _, done in taken:
                if not done.done():
                    done.set_result(None)
