"""A batch job over a file of real test texts against the fleet's interactive throughput, and what
it does to interactive latency: on one fresh local stack,

1. the single-text p50 of one client, idle;
2. the fleet's interactive e2e throughput at 64 closed-loop clients;
3. a batch_predict job over test.csv (7,600 rows in the AG News layout), timed from its creation
   to its end, with one client's single-text p50 measured while it runs.

    .venv/bin/python -m bench.batch
"""

import argparse
import asyncio
import os
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx

from bench.machine import cpu_line
from bench.monitor_cost import closed_loop
from pipeline.ingest import read_archive
from shared.settings import Settings
from shared.storage import s3_client
from testkit.archives import REAL_ARCHIVE
from testkit.load import Connection, percentile
from testkit.models import trained_model
from testkit.stack import LiveStack, live_stack, serve_model


async def one_client(url: str, texts: list[str], stop: threading.Event, warm: bool) -> list[float]:
    """One client's latencies, one text at a time, until `stop`."""
    connection = Connection(url)
    latencies: list[float] = []
    index = 0
    try:
        while not stop.is_set():
            began = time.perf_counter()
            status, _ = await connection.predict(texts[index % len(texts)])
            index += 1
            if status == 200 and not (warm and index <= 5):
                latencies.append((time.perf_counter() - began) * 1000)
    finally:
        connection.close()
    return latencies


def idle_p50(url: str, texts: list[str], seconds: float) -> float:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    return percentile(asyncio.run(one_client(url, texts, stop, warm=True)), 50)


def batch_run(stack: LiveStack, texts: list[str]) -> tuple[dict[str, object], float, float]:
    """The batch job's result, its wall seconds, and one client's p50 while it ran."""
    settings = stack.settings
    key = "incoming/bench/test.csv"
    with zipfile.ZipFile(REAL_ARCHIVE) as archive:
        data = archive.read("test.csv")
    s3_client(settings.storage).put_object(Bucket=settings.storage.bucket, Key=key, Body=data)
    stop = threading.Event()
    latencies: list[float] = []

    def interactive() -> None:
        latencies.extend(asyncio.run(one_client(stack.url, texts, stop, warm=False)))

    client = threading.Thread(target=interactive)
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        began = time.perf_counter()
        job = http.post("/v1/jobs", json={"type": "batch_predict", "dataset": key}).json()
        client.start()
        while (found := http.get(f"/v1/jobs/{job['id']}").json())["status"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            time.sleep(0.2)
        wall = time.perf_counter() - began
    stop.set()
    client.join()
    if found["status"] != "succeeded":
        raise RuntimeError(f"the batch job ended {found['status']}: {found.get('error')}")
    return found["result"], wall, percentile(latencies, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--predict-workers", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--chunk-texts", type=int, default=Settings().batch.chunk_texts)
    parser.add_argument("--in-flight", type=int, default=Settings().batch.in_flight)
    args = parser.parse_args()
    print(f"CPU: {cpu_line()}", flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = [row.text for row in read_archive(REAL_ARCHIVE, Settings()).test.rows]
    with tempfile.TemporaryDirectory() as work:
        model_dir = trained_model(Path(work) / "model", 20)
        with live_stack(
            Path(work) / "stack",
            queues=("predict", "evaluate"),
            predict_workers=args.predict_workers,
            model_poll_s=0.5,
            batch_chunk_texts=args.chunk_texts,
            batch_in_flight=args.in_flight,
        ) as stack:
            serve_model(stack, model_dir, texts[0])
            idle = idle_p50(stack.url, texts, 15)
            print(f"one client, idle: p50 {idle:.1f} ms", flush=True)
            latencies = asyncio.run(closed_loop(stack.url, texts, args.clients, args.seconds))
            interactive = len(latencies) / args.seconds
            print(
                f"interactive, {args.clients} clients: {interactive:.1f} texts/s, "
                f"p50 {percentile(latencies, 50):.1f} ms",
                flush=True,
            )
            result, wall, during = batch_run(stack, texts)
    rows = int(str(result["rows"]))
    rate = rows / wall
    print(
        f"batch of {rows} rows (chunks of {args.chunk_texts}, {args.in_flight} in flight): "
        f"{wall:.1f} s, {rate:.1f} rows/s = {rate / interactive:.2f} x interactive; "
        f"accuracy {result['accuracy']}"
    )
    print(f"one client while it ran: p50 {during:.1f} ms = {during / idle:.2f} x idle")


if __name__ == "__main__":
    main()
