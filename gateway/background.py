"""A component's one background task, started with the app and cancelled with it."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


class Background:
    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._run = run
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def every(
    interval_s: float, work: Callable[[], Awaitable[object]], failure: str, log: logging.Logger
) -> Background:
    """`work` every `interval_s`; a failed round is logged (`failure`) and the next tries again."""

    async def rounds() -> None:
        while True:
            try:
                await work()
            except Exception as exc:
                log.debug("%s: %s", failure, exc)
            await asyncio.sleep(interval_s)

    return Background(rounds)
