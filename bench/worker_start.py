"""A predict worker (re)starting while requests wait: does it hold any before its model loads?

    .venv/bin/python -m bench.worker_start [--requests 8] [--timing-s 3]

Starts the local stack with one predict worker, promotes the tests' tiny model and waits until
it answers; then SIGKILLs the worker, sends `--requests` requests (each waits in the predict
queue), and starts the worker again. Every half second until all are served it reads Redis: the
request messages still queued (free for any worker) and those the worker holds unacknowledged (less
what the killed one held); and the worker's log: whether its model is loaded ("now serving")
and whether Celery said " ready.". `--timing-s` is the worker's serving_timing_s, which
lengthens its load.
"""

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

from bench.machine import cpu_line
from pipeline.registry import publish
from shared.registry import ModelRegistry
from testkit.models import tiny_model
from testkit.stack import live_stack

QUEUE = "predict"
UNACKED = f"unacked:{QUEUE}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--timing-s", type=float, default=3.0)
    args = parser.parse_args()
    print(f"CPU: {cpu_line()}", flush=True)
    with (
        tempfile.TemporaryDirectory() as scratch,
        live_stack(
            Path(scratch),
            queues=(QUEUE,),
            serving_timing_s=args.timing_s,
            serving_forward_batch="auto",
        ) as stack,
    ):
        registry = ModelRegistry.from_settings(stack.settings.storage)
        version = publish(registry, tiny_model(Path(scratch) / "tiny")).version
        registry.promote(version, "bench")
        while httpx.post(f"{stack.url}/v1/predict", json={"text": "warm"}, timeout=60).is_error:
            time.sleep(0.5)
        worker = next(s for s in stack.supervisor.services if s.name == "worker-predict")
        assert worker.process is not None
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        answers: list[int] = []

        def ask() -> None:
            response = httpx.post(f"{stack.url}/v1/predict", json={"text": "news"}, timeout=120)
            answers.append(response.status_code)

        clients = [threading.Thread(target=ask) for _ in range(args.requests)]
        for client in clients:
            client.start()
        store = redis.Redis.from_url(stack.settings.redis.url)
        time.sleep(2)  # the gateway has queued them (several jobs may share a message)
        held_before_ready = 0
        # What the killed worker held stays unacknowledged until the visibility timeout.
        orphaned = int(store.hlen(UNACKED))
        worker.start(stack.supervisor.log_dir, stack.supervisor.env)
        log = stack.supervisor.log_dir / f"{worker.name}.log"
        started = time.monotonic()
        loaded_at: float | None = None
        print("| s | queued | held by the worker | model loaded | Celery ready |")
        print("|---|---|---|---|---|")
        while time.monotonic() - started < 120:
            text = log.read_text()
            loaded, ready = "now serving" in text, " ready." in text
            held = int(store.hlen(UNACKED)) - orphaned
            if loaded and loaded_at is None:
                loaded_at = time.monotonic() - started
            if not loaded:
                held_before_ready = max(held_before_ready, held)
            print(
                f"| {time.monotonic() - started:.1f} | {store.llen(QUEUE)} | {held} "
                f"| {loaded} | {ready} |",
                flush=True,
            )
            if loaded and held == 0 and store.llen(QUEUE) == 0:
                break
            time.sleep(0.5)
        for client in clients:
            client.join()
        print(
            f"\nmodel loaded {loaded_at} s after the start; the most requests held before it: "
            f"{held_before_ready}; HTTP answers {sorted(answers)} (202: served after the gateway's "
            f"wait of {stack.settings.gateway.predict_wait_s:.0f} s)"
        )


if __name__ == "__main__":
    main()
