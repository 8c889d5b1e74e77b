"""What monitoring costs: a predict worker's tally per text in process, and the fleet's closed-loop
throughput and p50 with monitoring on and off, alternated on fresh stacks (on, off, on, off)
because this machine's speed drifts.

    .venv/bin/python -m bench.monitor_cost                 # 64 clients, 30 s a round
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_line
from pipeline.ingest import read_archive
from pipeline.predictor import answers
from shared.monitoring import ServingTally
from shared.settings import Settings
from testkit.archives import REAL_ARCHIVE
from testkit.load import Connection, percentile
from testkit.models import trained_model
from testkit.stack import live_stack, serve_model


def tally_cost(texts: int, batch: int) -> float:
    """Microseconds per text that ServingTally.add takes, on answers like a worker's."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(texts, 4)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predictions = answers(probabilities, [False] * texts)
    lengths = rng.integers(10, 120, size=texts).tolist()
    tally = ServingTally(Settings().monitor, "bench")
    started = time.perf_counter()
    for start in range(0, texts, batch):
        tally.add(
            "v1",
            "onnx-int8",
            predictions[start : start + batch],
            lengths[start : start + batch],
            0.01,
        )
    return (time.perf_counter() - started) / texts * 1e6


async def closed_loop(url: str, texts: list[str], clients: int, seconds: float) -> list[float]:
    """Each client sends a text and the next when answered; the latencies of the answered."""
    latencies: list[float] = []

    async def client(offset: int, until: float, keep: bool) -> None:
        connection = Connection(url)
        index = offset
        try:
            while time.perf_counter() < until:
                began = time.perf_counter()
                status, _ = await connection.predict(texts[index % len(texts)])
                index += 1
                if keep and status == 200:
                    latencies.append((time.perf_counter() - began) * 1000)
        finally:
            connection.close()

    warm = time.perf_counter() + 5
    await asyncio.gather(*(client(i * 97, warm, False) for i in range(clients)))
    until = time.perf_counter() + seconds
    await asyncio.gather(*(client(i * 89, until, True) for i in range(clients)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="of on and off each")
    parser.add_argument("--predict-workers", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args()
    print(f"CPU: {cpu_line()}", flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for batch in (1, 8, 64):
        print(f"tally: {tally_cost(20_000, batch):.1f} µs per text in batches of {batch}")
    texts = [row.text for row in read_archive(REAL_ARCHIVE, Settings()).test.rows]
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as work:
        model_dir = trained_model(Path(work) / "model", 20)
        for round_ in range(args.rounds):
            for enabled in (True, False):
                with live_stack(
                    Path(work) / f"stack-{round_}-{enabled}",
                    queues=("predict",),
                    predict_workers=args.predict_workers,
                    model_poll_s=0.5,
                    monitor_enabled=enabled,
                ) as stack:
                    serve_model(stack, model_dir, texts[0])
                    latencies = asyncio.run(
                        closed_loop(stack.url, texts, args.clients, args.seconds)
                    )
                rate = len(latencies) / args.seconds
                p50 = percentile(latencies, 50)
                results[enabled].append((rate, p50))
                state = "on " if enabled else "off"
                print(f"monitoring {state}: {rate:6.1f} texts/s, p50 {p50:6.1f} ms", flush=True)
    on = statistics.fmean(rate for rate, _ in results[True])
    off = statistics.fmean(rate for rate, _ in results[False])
    p50_on = statistics.fmean(p50 for _, p50 in results[True])
    p50_off = statistics.fmean(p50 for _, p50 in results[False])
    print(
        f"mean of {args.rounds}: on {on:.1f} texts/s (p50 {p50_on:.1f} ms), off {off:.1f} "
        f"(p50 {p50_off:.1f} ms): monitoring costs {100 * (off - on) / off:+.1f} % of throughput"
    )


if __name__ == "__main__":
    main()
