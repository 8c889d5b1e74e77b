"""celery-batches, paced by the model.

Plain `Batches` flushes its buffer every `flush_interval` seconds whatever the pool is doing, so
under load the pool queues many small batches behind the one in the model, and at low load a
request waits out the interval for nothing. Here a request that finds the model free goes to it at
once; requests that arrive while a batch is in the model gather for the next one, at most
`flush_every` of them, which goes as soon as the model is free (within one `flush_interval`).
"""

import threading
from collections.abc import Callable, Collection
from typing import Any

from celery import Celery
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from workers.transport import acknowledge


class ModelPacedBatches(Batches):  # type: ignore[misc]
    """Its tasks are acknowledged late: a batch's messages once it returns, together."""

    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self._state = threading.Lock()
        self._busy = False

    def Strategy(
        self, task: "ModelPacedBatches", app: Celery, consumer: Any
    ) -> Callable[..., None]:
        buffer_message = super().Strategy(task, app, consumer)

        def on_message(*args: Any, **kwargs: Any) -> None:
            buffer_message(*args, **kwargs)
            if not self._busy:
                self._do_flush()

        return on_message

    def flush(self, requests: Collection[Request]) -> Any:
        waiting = list(requests)
        with self._state:
            take = bool(waiting) and not self._busy
            self._busy = self._busy or take
        if not take:
            self._keep(waiting)
            return None
        self._keep(waiting[self.flush_every :])
        return self._run(waiting[: self.flush_every])

    def _run(self, requests: list[Request]) -> Any:
        """celery-batches' flush, acknowledging the batch's messages together."""
        batch = [SimpleRequest.from_request(request) for request in requests]
        return self._pool.apply_async(
            apply_batches_task,
            (self, (batch,), 0, None),
            callback=lambda _: acknowledge(requests),
        )

    def _keep(self, requests: list[Request]) -> None:
        for request in requests:
            self._pending.put(request)

    def model_released(self) -> Callable[[], None]:
        """A callable that frees the model for the next batch; calling it again does nothing."""
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):
                with self._state:
                    self._busy = False

        return release
