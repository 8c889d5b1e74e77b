"""What monitoring costs: a predict worker's tally per text in process, and the fleet's closed-loop
throughput and p50 with monitoring on and off, alternated on fresh stacks (on, off, on, off)
because this machine's speed drifts; with --challenger, with a challenger scoring 10 % of the
answers and with none (monitoring on in both), and the share it scored and its agreement.

    .venv/bin/python -m bench.monitor_cost                 # 64 clients, 30 s a round
    .venv/bin/python -m bench.monitor_cost --challenger --clients 8
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.machine import cpu_line
from pipeline.ingest import read_archive
from pipeline.predictor import answers
from pipeline.registry import publish
from shared.contracts.monitor import MonitorReport
from shared.monitoring import ServingTally
from shared.registry import ModelRegistry
from shared.settings import Settings
from testkit.archives import REAL_ARCHIVE
from testkit.load import Connection, percentile
from testkit.models import copy_as_new_version, trained_model
from testkit.stack import LiveStack, live_stack, serve_model

CHALLENGER_SHARE = 0.1


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


def challenge(stack: LiveStack, model_dir: Path, copy: Path, text: str) -> str:
    """A copy of the serving model named challenger; returns once a worker scores with it."""
    info = copy_as_new_version(model_dir, copy)
    registry = ModelRegistry.from_settings(stack.settings.storage)
    publish(registry, copy)
    registry.name_challenger(info.version, CHALLENGER_SHARE, "bench")
    deadline = time.monotonic() + 120
    while (figures := monitor(stack).challenge) is None or figures.scored == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("no worker scored the challenger within 120 s")
        for _ in range(20):
            httpx.post(f"{stack.url}/v1/predict", json={"text": text}, timeout=30)
        time.sleep(1)
    return info.version


def monitor(stack: LiveStack) -> MonitorReport:
    production = httpx.get(f"{stack.url}/v1/models/production", timeout=30).json()["version"]
    report = httpx.get(f"{stack.url}/v1/models/{production}/monitor", timeout=30)
    return MonitorReport.model_validate_json(report.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="of on and off each")
    parser.add_argument("--predict-workers", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument(
        "--challenger", action="store_true", help="a challenger at 10 %% against none"
    )
    args = parser.parse_args()
    names = ("challenger", "none ") if args.challenger else ("on ", "off")
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
                root = Path(work) / f"stack-{round_}-{enabled}"
                with live_stack(
                    root,
                    queues=("predict",),
                    predict_workers=args.predict_workers,
                    model_poll_s=0.5,
                    monitor_enabled=enabled or args.challenger,
                ) as stack:
                    serve_model(stack, model_dir, texts[0])
                    challenged = args.challenger and enabled
                    if challenged:
                        challenge(stack, model_dir, root / "challenger", texts[0])
                        time.sleep(2 * stack.settings.monitor.flush_s)
                        before = monitor(stack)
                    latencies = asyncio.run(
                        closed_loop(stack.url, texts, args.clients, args.seconds)
                    )
                    rate = len(latencies) / args.seconds
                    p50 = percentile(latencies, 50)
                    results[enabled].append((rate, p50))
                    line = f"{names[not enabled]}: {rate:6.1f} texts/s, p50 {p50:6.1f} ms"
                    if challenged:
                        time.sleep(2 * stack.settings.monitor.flush_s)
                        line += scored_line(before, monitor(stack))
                print(line, flush=True)
    on = statistics.fmean(rate for rate, _ in results[True])
    off = statistics.fmean(rate for rate, _ in results[False])
    p50_on = statistics.fmean(p50 for _, p50 in results[True])
    p50_off = statistics.fmean(p50 for _, p50 in results[False])
    print(
        f"mean of {args.rounds}: {names[0].strip()} {on:.1f} texts/s (p50 {p50_on:.1f} ms), "
        f"{names[1].strip()} {off:.1f} (p50 {p50_off:.1f} ms): {100 * (off - on) / off:+.1f} % "
        f"of throughput, p50 {100 * (p50_on - p50_off) / p50_off:+.1f} %"
    )


def scored_line(before: MonitorReport, after: MonitorReport) -> str:
    """What the challenger scored of what production answered between the two reports."""
    if before.challenge is None or after.challenge is None:
        return "; the challenger's figures unavailable"
    answered = after.total_texts - before.total_texts
    scored = after.challenge.scored - before.challenge.scored
    agreed = after.challenge.agreed - before.challenge.agreed
    return (
        f"; challenger scored {scored} of {answered} answered ({scored / max(answered, 1):.1%}), "
        f"agreement {agreed / max(scored, 1):.1%}, {after.challenge.failed} failed"
    )


if __name__ == "__main__":
    main()
