"""The process (`python -m workers.listener`) that turns storage events into pipeline jobs.

It long-polls SQS where `sqs_queue_url` is set (AWS), serves the local S3 store's webhook where
`listener_token` is set (the local stack), or both; /healthz answers either way. It imports
neither torch nor the workers' tasks: it sends the first task of each job by name.
"""

import asyncio
import contextlib
import logging
import signal
from types import FrameType

import uvicorn

from shared.logs import configure_logging
from shared.settings import Settings, get_settings
from shared.storage import s3_client
from workers.listener.janitor import sweep_bucket
from workers.listener.sqs import SqsListener
from workers.listener.trigger import PipelineTrigger, scan_incoming
from workers.listener.webhook import webhook_app

log = logging.getLogger(__name__)


async def serve(settings: Settings, trigger: PipelineTrigger) -> None:
    """Run every configured adapter until SIGTERM or SIGINT, or until one of them fails."""
    stop = asyncio.Event()
    server = uvicorn.Server(
        uvicorn.Config(
            webhook_app(settings, trigger),
            host=settings.listener.host,
            port=settings.listener.port,
            lifespan="off",
            log_config=None,
            access_log=False,
        )
    )

    def stopping(signum: int, frame: FrameType | None) -> None:
        # uvicorn handles the signal while it serves, then raises it again: it lands here.
        stop.set()
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopping)
    tasks = {
        asyncio.create_task(server.serve()),
        asyncio.create_task(scan(settings, trigger, stop)),
    }
    if settings.listener.sqs_queue_url:
        tasks.add(asyncio.create_task(SqsListener(settings, trigger).run(stop)))
    if settings.listener.janitor_interval_s is not None:
        tasks.add(asyncio.create_task(sweep(settings, trigger, stop)))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.gather(*tasks)


SCAN_RETRY_S = 15.0


async def scan(settings: Settings, trigger: PipelineTrigger, stop: asyncio.Event) -> None:
    """Look for uploads whose events were missed, at start and every listener_scan_interval_s;
    a failed scan (S3 or Redis away, as when the listener starts before the store) is logged
    and tried again within SCAN_RETRY_S."""
    s3 = s3_client(settings.storage)
    while not stop.is_set():
        wait = settings.listener.scan_interval_s
        try:
            await asyncio.to_thread(scan_incoming, trigger, s3, settings.listener.scan_max_age_s)
        except Exception as exc:
            wait = min(wait, SCAN_RETRY_S)
            log.warning("scan of incoming/ failed (%s); next in %.0fs", exc, wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


async def sweep(settings: Settings, trigger: PipelineTrigger, stop: asyncio.Event) -> None:
    """The bucket's lifecycle, every janitor_interval_s (the first after one interval)."""
    interval = settings.listener.janitor_interval_s or 0.0
    s3 = s3_client(settings.storage)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        try:
            await asyncio.to_thread(sweep_bucket, trigger, s3)
        except Exception as exc:
            log.warning("janitor: the bucket's sweep failed (%s); next in %.0fs", exc, interval)


def main() -> None:
    settings = get_settings()
    log = configure_logging(settings.run, "listener")
    adapters = [
        name
        for name, configured in (
            (f"SQS {settings.listener.sqs_queue_url}", settings.listener.sqs_queue_url),
            ("the S3 store's webhook", settings.listener.token),
        )
        if configured
    ]
    log.info("listening to %s", " and ".join(adapters) or "nothing (only /healthz)")
    asyncio.run(serve(settings, PipelineTrigger.from_settings(settings)))
