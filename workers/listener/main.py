"""The process (`python -m workers.listener`) that turns storage events into pipeline jobs.

It long-polls SQS where `sqs_queue_url` is set (AWS), serves the local S3 store's webhook where
`listener_token` is set (the local stack), or both; /healthz answers either way. It imports
neither torch nor the workers' tasks: it sends the first task of each job by name.
"""

import asyncio
import signal
from types import FrameType

import uvicorn

from shared.logs import configure_logging
from shared.settings import Settings, get_settings
from workers.listener.sqs import SqsListener
from workers.listener.trigger import PipelineTrigger
from workers.listener.webhook import webhook_app


async def serve(settings: Settings, trigger: PipelineTrigger) -> None:
    """Run every configured adapter until SIGTERM or SIGINT, or until one of them fails."""
    stop = asyncio.Event()
    server = uvicorn.Server(
        uvicorn.Config(
            webhook_app(settings, trigger),
            host=settings.listener_host,
            port=settings.listener_port,
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
    tasks = {asyncio.create_task(server.serve())}
    if settings.sqs_queue_url:
        tasks.add(asyncio.create_task(SqsListener(settings, trigger).run(stop)))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.gather(*tasks)


def main() -> None:
    settings = get_settings()
    log = configure_logging(settings, "listener")
    adapters = [
        name
        for name, configured in (
            (f"SQS {settings.sqs_queue_url}", settings.sqs_queue_url),
            ("the S3 store's webhook", settings.listener_token),
        )
        if configured
    ]
    log.info("listening to %s", " and ".join(adapters) or "nothing (only /healthz)")
    asyncio.run(serve(settings, PipelineTrigger.from_settings(settings)))
