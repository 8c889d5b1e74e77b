"""Soak: the local stack driven at a share of its own peak for a long time, sampled as it goes, to
show that memory, disk and latency stay flat however long it serves.

    .venv/bin/python -m bench.soak --minutes 60                  # steady, 70 % of the peak
    .venv/bin/python -m bench.soak --minutes 20 --profile burst  # 2x the peak for 2 minutes

1. Starts the whole local stack (Redis, the S3 store, the listener, the gateway, the workers) in a
   fresh directory, and serves a model: `--model DIR` (a registered-format folder such as
   bench/accuracy.py leaves), or the base model fine-tuned a few steps here.
2. Measures the fleet's peak: 64 clients, each sending one text and the next when answered
   (closed loop, which batches fuller than single texts arriving on their own); then, with
   `--peak open` (the default), the peak as the soak loads it: single texts open loop at rising
   shares of the closed-loop peak, `--ramp-s` each, up to the last rate answered whole (every
   request 200) with a p99 within `KNEE` times the first step's. The share applies to that.
3. Sends single-text predictions at `--share` of that peak, open loop (each at its scheduled
   time, whatever the answers do), for `--minutes`; the burst profile sends 2x the peak for 2
   minutes a third of the way in.
4. Every `--sample-s`: Redis's used_memory and keys, each process's RSS (with its children) and
   open files, the bytes under the data directory, and the window's requests/s, p50, p99,
   errors, shed requests (503) and lost ones (sent, with neither an answer nor a job that
   ended: a 202's job is followed to its end).

Prints the table and a verdict (growth per 10 minutes of each series after the first 10 minutes,
the default predict retention, or a sixth of a shorter run; p99 against that first part; lost
requests), and writes
bench/out/soak-PROFILE.json and a plot, soak-PROFILE.png.
"""

import argparse
import asyncio
import itertools
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.machine import cpu_line
from pipeline.ingest import read_archive
from shared.jobstore import JobKeys
from shared.redis_clients import sync_client, text
from shared.settings import Settings
from testkit.archives import REAL_ARCHIVE
from testkit.load import (
    Load,
    Outcome,
    cpu_seconds,
    disk_bytes,
    machine_ticks,
    measure_peak,
    percentile,
    rss_and_files,
)
from testkit.models import trained_model
from testkit.stack import LiveStack, live_stack, serve_model

OUT = Path(__file__).parent / "out"
ENDED = ("succeeded", "failed", "cancelled")
BURST_S = 120.0
GENERATOR = "load generator"  # this process: the clients, the sampler


@dataclass
class Sample:
    at_s: float
    redis_used_bytes: int
    redis_keys: int
    predictions_kept: int
    answers_stream_bytes: int
    disk_bytes: int
    rss_bytes: dict[str, int]
    open_files: dict[str, int]
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    shed: int
    lost: int
    offered_per_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # each process's, so far
    machine_ticks: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    profile: str
    cpu: str
    peak_per_s: float
    share: float
    minutes: float
    redis_base_bytes: int = 0
    closed_peak_per_s: float = 0.0
    ramp: list[dict[str, float]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)


class Sampler:
    def __init__(self, stack: LiveStack, load: Load) -> None:
        self.stack = stack
        self.load = load
        self.started = self.last = time.perf_counter()
        self.seen = 0
        self.offered = 0
        self.unresolved: set[str] = set()  # 202s' jobs not yet seen ended
        self.lost = 0
        self.redis = sync_client(stack.settings.redis)
        self.keys = JobKeys(stack.settings.redis.key_prefix)

    def sample(self) -> Sample:
        memory = int(self.redis.info("memory")["used_memory"])
        keys = int(self.redis.dbsize())
        kept = int(self.redis.zcard(self.keys.predict_index))
        stream = int(self.redis.memory_usage(self.keys.answers) or 0)
        rss, files, cpu = {}, {}, {GENERATOR: time.process_time()}
        for service in self.stack.supervisor.services:
            if service.process is not None and service.process.poll() is None:
                rss[service.name], files[service.name] = rss_and_files(service.process.pid)
                cpu[service.name] = cpu_seconds(service.process.pid)
        window = self.load.outcomes[self.seen :]
        self.seen = len(self.load.outcomes)
        now = time.perf_counter()
        span, self.last = max(now - self.last, 1e-9), now
        answered = [o.latency_ms for o in window if o.status == 200]
        self._follow(window)
        offered, self.offered = self.load.offered - self.offered, self.load.offered
        return Sample(
            at_s=round(now - self.started, 1),
            redis_used_bytes=memory,
            redis_keys=keys,
            predictions_kept=kept,
            answers_stream_bytes=stream,
            disk_bytes=disk_bytes(self.stack.settings.run.data_dir),
            rss_bytes=rss,
            open_files=files,
            requests_per_s=round(len(answered) / span, 1),
            p50_ms=round(percentile(answered, 50), 1),
            p99_ms=round(percentile(answered, 99), 1),
            errors=sum(1 for o in window if o.status not in (200, 202, 503)),
            shed=sum(1 for o in window if o.status == 503),
            lost=self.lost,
            offered_per_s=round(offered / span, 1),
            cpu_s=cpu,
            machine_ticks=machine_ticks(),
        )

    def _follow(self, window: list[Outcome]) -> None:
        """A request lost is one with no answer and no job that ended: a 202's job is read
        until it ends (from Redis, all at once: a burst leaves thousands); a request with no
        answer at all has no job to read."""
        self.lost += sum(1 for o in window if o.status == 0)
        self.unresolved |= {o.job_id for o in window if o.job_id is not None}
        following = sorted(self.unresolved)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in following:
            pipe.hget(self.keys.job(job_id), "status")
        for job_id, status in zip(following, pipe.execute(), strict=True):
            if status is not None and text(status) in ENDED:
                self.unresolved.discard(job_id)

    def settle(self, grace_s: float) -> None:
        """Follow the 202s still open for `grace_s`; what has not ended then is lost."""
        deadline = time.perf_counter() + grace_s
        while self.unresolved and time.perf_counter() < deadline:
            self._follow([])
            time.sleep(1.0)
        self.lost += len(self.unresolved)
        self.unresolved.clear()


RAMP = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
KNEE = 2.0  # a ramp step passes with its p99 within this times the first step's


async def open_loop_peak(
    url: str, texts: list[str], closed_peak: float, step_s: float
) -> tuple[float, list[dict[str, float]]]:
    """The highest rate the fleet answers whole, open loop, before its latency turns up: rising
    shares of the closed-loop peak, each sent for step_s; a step passes where every request is
    answered 200 with a p99 within KNEE times the first step's. The last passing rate, and each
    step's figures."""
    steps: list[dict[str, float]] = []
    peak, first_p99 = RAMP[0] * closed_peak, None
    for share in RAMP:
        rate = share * closed_peak
        load = Load(url, texts, 128)
        await load.run(lambda _, rate=rate: rate, step_s)
        latencies = [o.latency_ms for o in load.outcomes if o.status == 200]
        p99 = percentile(latencies, 99) if latencies else math.inf
        first_p99 = first_p99 or p99
        whole = len(latencies) == load.offered
        passed = whole and p99 <= KNEE * first_p99
        steps.append(
            {
                "rate": round(rate, 1),
                "answered": len(latencies),
                "offered": load.offered,
                "p50_ms": round(percentile(latencies, 50), 1) if latencies else math.inf,
                "p99_ms": round(p99, 1),
                "passed": float(passed),
            }
        )
        print(f"ramp {rate:6.1f}/s: {steps[-1]}", flush=True)
        if not passed:
            break
        peak = rate
    return peak, steps


def burst_window(seconds: float) -> tuple[float, float]:
    return seconds / 3, seconds / 3 + BURST_S


def schedule(profile: str, peak: float, share: float, seconds: float) -> Any:
    burst_from, burst_to = burst_window(seconds)

    def rate_at(elapsed: float) -> float:
        if profile == "burst" and burst_from <= elapsed < burst_to:
            return 2.0 * peak
        return share * peak

    return rate_at


def connections_for(profile: str, peak: float, wait_s: float) -> int:
    """Enough that the generator never holds back what the gateway would admit: in a burst, every
    request sent for as long as an admitted one may wait, and some for the refused."""
    if profile == "burst":
        return math.ceil(2.0 * peak * max(wait_s, 1.0)) + 128
    return 128


async def drive(run: Run, stack: LiveStack, texts: list[str], args: argparse.Namespace) -> Load:
    wait_s = stack.settings.gateway.predict_wait_s
    connections = args.connections or connections_for(args.profile, run.peak_per_s, wait_s)
    print(f"{connections} connections", flush=True)
    load = Load(stack.url, texts, connections)
    sampler = Sampler(stack, load)
    seconds = args.minutes * 60
    rate_at = schedule(args.profile, run.peak_per_s, args.share, seconds)
    sending = asyncio.create_task(load.run(rate_at, seconds))
    while not sending.done():
        await asyncio.wait([sending], timeout=args.sample_s)
        sample = await asyncio.to_thread(sampler.sample)
        run.samples.append(sample)
        print(row(sample), flush=True)
    await asyncio.to_thread(sampler.settle, 60.0)
    run.samples[-1].lost = sampler.lost
    return load


def row(sample: Sample) -> str:
    rss = sum(sample.rss_bytes.values()) / 2**20
    return (
        f"{sample.at_s:7.0f} s  redis {sample.redis_used_bytes / 2**20:7.1f} MB "
        f"{sample.redis_keys:7d} keys  rss {rss:7.0f} MB  disk {sample.disk_bytes / 2**20:7.1f} MB"
        f"  {sample.requests_per_s:6.1f}/s (offered {sample.offered_per_s:6.1f})  "
        f"p50 {sample.p50_ms:6.1f}  p99 {sample.p99_ms:7.1f} ms  errors {sample.errors}  "
        f"shed {sample.shed}  lost {sample.lost}"
    )


def growth_per_10_min(points: list[tuple[float, float]]) -> float:
    """The least-squares slope over the points, per 10 minutes, as a percentage of their mean."""
    if len(points) < 3:
        return 0.0
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    if denominator == 0 or mean_y == 0:
        return 0.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / denominator
    return round(100 * slope * 600 / mean_y, 2)


def series(samples: list[Sample]) -> Iterator[tuple[str, list[tuple[float, float]]]]:
    yield "redis used_memory", [(s.at_s, s.redis_used_bytes) for s in samples]
    yield "redis keys", [(s.at_s, s.redis_keys) for s in samples]
    yield "disk under the data dir", [(s.at_s, s.disk_bytes) for s in samples]
    for name in samples[-1].rss_bytes:
        yield f"rss {name}", [(s.at_s, s.rss_bytes.get(name, 0)) for s in samples]
    for name in samples[-1].open_files:
        yield f"open files {name}", [(s.at_s, s.open_files.get(name, 0)) for s in samples]


def judge(run: Run, load: Load, warmup_s: float) -> dict[str, Any]:
    """Growth of each series after `warmup_s`, p99 against the warm-up's, lost requests; for the
    burst profile, what was shed in the burst and p99 a minute after it."""
    growth = {
        name: growth_per_10_min([p for p in points if p[0] > warmup_s])
        for name, points in series(run.samples)
    }
    first = load.outcomes[0].sent_at if load.outcomes else 0.0
    early = [
        o.latency_ms for o in load.outcomes if o.status == 200 and o.sent_at - first <= warmup_s
    ]
    p99_first = percentile(early, 99)
    burst_from, burst_to = burst_window(run.minutes * 60)
    steady = [
        s
        for s in run.samples
        if s.at_s > warmup_s
        and not (run.profile == "burst" and burst_from < s.at_s < burst_to + 60)
    ]
    p99_later = max((s.p99_ms for s in steady), default=0.0)
    memory = {k: v for k, v in growth.items() if k.startswith(("redis used", "rss"))}
    statuses = [o.status for o in load.outcomes]
    burst = {}
    if run.profile == "burst":
        in_burst = [o for o in load.outcomes if burst_from <= o.sent_at - first < burst_to]
        after = [
            o.latency_ms
            for o in load.outcomes
            if burst_to + 60 <= o.sent_at - first < burst_to + 120 and o.status == 200
        ]
        burst = {
            "burst_sent": len(in_burst),
            "burst_shed_503": sum(1 for o in in_burst if o.status == 503),
            "p99_a_minute_after_ms": round(percentile(after, 99), 1),
        }
    return {
        "warmup_s": warmup_s,
        "growth_pct_per_10_min": growth,
        "largest_memory_growth_pct": max(memory.values(), default=0.0),
        "p99_first_ms": round(p99_first, 1),
        "p99_worst_window_ms": p99_later,
        "p99_ratio": round(p99_later / p99_first, 2) if p99_first else None,
        "sent": len(statuses),
        "answered": statuses.count(200),
        "accepted_202": statuses.count(202),
        "shed_503": statuses.count(503),
        "errors": sum(1 for s in statuses if s not in (0, 200, 202, 503)),
        "lost": run.samples[-1].lost if run.samples else 0,
        "redis_bytes_per_kept_prediction": per_prediction(run, warmup_s),
        "cpu_in_slow_windows": episodes(run, warmup_s, p99_first),
        **burst,
    }


def cpu_use(before: Sample, after: Sample) -> dict[str, float]:
    """Over one window: the machine's busy, iowait and steal shares of its CPU time (%), and the
    cores each process used."""
    ticks = {k: after.machine_ticks.get(k, 0) - v for k, v in before.machine_ticks.items()}
    total = sum(ticks.values()) or 1
    idle = ticks.get("idle", 0) + ticks.get("iowait", 0)
    span = max(after.at_s - before.at_s, 1e-9)
    use = {
        "machine busy %": round(100 * (total - idle) / total, 1),
        "iowait %": round(100 * ticks.get("iowait", 0) / total, 1),
        "steal %": round(100 * ticks.get("steal", 0) / total, 1),
    }
    for name, seconds in after.cpu_s.items():
        if name in before.cpu_s:
            use[f"{name} cores"] = round((seconds - before.cpu_s[name]) / span, 2)
    return use


def pairs(samples: list[Sample]) -> Iterator[tuple[Sample, Sample]]:
    """Consecutive samples that both read the CPU."""
    for before, after in itertools.pairwise(samples):
        if before.machine_ticks and after.machine_ticks:
            yield before, after


def episodes(run: Run, warmup_s: float, p99_first: float) -> dict[str, Any]:
    """What the machine did in the windows whose p99 passed 1.5x the warm-up's, against the
    other windows after it (medians): a process that took more, or CPU the machine lost (iowait,
    steal), shows there."""
    slow: list[dict[str, float]] = []
    usual: list[dict[str, float]] = []
    for before, after in pairs(run.samples):
        if after.at_s <= warmup_s:
            continue
        (slow if after.p99_ms > 1.5 * p99_first else usual).append(cpu_use(before, after))

    def medians(windows: list[dict[str, float]]) -> dict[str, float]:
        names = {name for window in windows for name in window}
        return {
            name: round(statistics.median(w.get(name, 0.0) for w in windows), 2)
            for name in sorted(names)
        }

    return {"slow_windows": len(slow), "slow": medians(slow), "usual": medians(usual)}


def per_prediction(run: Run, warmup_s: float) -> float | None:
    """Redis's memory past its start and past the answers stream (a fixed cost), over the
    predictions kept, at the settled samples' worst."""
    base = run.redis_base_bytes
    ratios = [
        (s.redis_used_bytes - base - s.answers_stream_bytes) / s.predictions_kept
        for s in run.samples
        if s.at_s > warmup_s and s.predictions_kept
    ]
    return round(max(ratios), 1) if ratios else None


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.at_s / 60 for s in run.samples]
    figure, axes = plt.subplots(5, 1, figsize=(10, 15), sharex=True)
    axes[0].plot(minutes, [s.redis_used_bytes / 2**20 for s in run.samples], label="Redis used")
    axes[0].plot(minutes, [s.disk_bytes / 2**20 for s in run.samples], label="disk (data dir)")
    axes[0].set_ylabel("MB")
    for name in run.samples[-1].rss_bytes:
        axes[1].plot(minutes, [s.rss_bytes.get(name, 0) / 2**20 for s in run.samples], label=name)
    axes[1].set_ylabel("RSS, MB")
    axes[2].plot(minutes, [s.requests_per_s for s in run.samples], label="answered/s")
    axes[2].plot(minutes, [s.offered_per_s for s in run.samples], label="offered/s")
    axes[2].plot(minutes, [s.shed for s in run.samples], label="shed (503) per sample")
    axes[2].set_ylabel("requests")
    axes[3].plot(minutes, [s.p50_ms for s in run.samples], label="p50")
    axes[3].plot(minutes, [s.p99_ms for s in run.samples], label="p99")
    axes[3].set_ylabel("ms")
    windows = [(after.at_s / 60, cpu_use(before, after)) for before, after in pairs(run.samples)]
    for name in ("machine busy %", "iowait %", "steal %"):
        axes[4].plot(
            [m for m, _ in windows], [use.get(name, 0.0) for _, use in windows], label=name
        )
    cores = axes[4].twinx()
    for name in run.samples[-1].cpu_s:
        points = [(m, use.get(f"{name} cores", 0.0)) for m, use in windows]
        cores.plot(
            [m for m, _ in points], [c for _, c in points], label=name, linewidth=0.8, alpha=0.7
        )
    cores.set_ylabel("cores")
    cores.legend(fontsize=6, loc="upper right")
    axes[4].set_ylabel("% of the machine's CPU")
    axes[4].set_xlabel("minutes")
    for axis in axes:
        axis.legend(fontsize=7, loc="upper left")
        axis.grid(alpha=0.3)
    title = f"soak ({run.profile}): {run.share:.0%} of {run.peak_per_s:.0f} texts/s, {run.cpu}"
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--profile", choices=["steady", "burst"], default="steady")
    parser.add_argument("--share", type=float, default=0.7, help="of the peak, sent steadily")
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--peak-s", type=float, default=60.0)
    parser.add_argument("--peak", choices=["open", "closed"], default="open")
    parser.add_argument("--ramp-s", type=float, default=30.0, help="each step of the open ramp")
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="at once (default: 128, and for a burst as many as it could hold waiting)",
    )
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--predict-workers", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--set", action="append", default=[], help="a setting, NAME=VALUE")
    args = parser.parse_args()
    # Stopped by a signal, the stack it started stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"CPU: {cpu_line()}", flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides: dict[str, Any] = dict(item.split("=", 1) for item in args.set)
    texts = [row.text for row in read_archive(REAL_ARCHIVE, Settings()).test.rows]
    with tempfile.TemporaryDirectory() as work:
        model_dir = args.model or trained_model(Path(work) / "model", 20)
        with live_stack(
            Path(work) / "stack",
            predict_workers=args.predict_workers,
            model_poll_s=0.5,
            **overrides,
        ) as stack:
            version = serve_model(stack, model_dir, texts[0])
            base = int(sync_client(stack.settings.redis).info("memory")["used_memory"])
            closed = asyncio.run(measure_peak(stack.url, texts, 64, args.peak_s))
            print(f"served {version}; peak {closed:.1f} texts/s (64 clients, closed loop)")
            peak, ramp = closed, list[dict[str, float]]()
            if args.peak == "open":
                peak, ramp = asyncio.run(open_loop_peak(stack.url, texts, closed, args.ramp_s))
                print(f"peak {peak:.1f} texts/s open loop, single texts", flush=True)
            run = Run(args.profile, cpu_line(), round(peak, 1), args.share, args.minutes, base)
            run.closed_peak_per_s, run.ramp = round(closed, 1), ramp
            load = asyncio.run(drive(run, stack, texts, args))
    run.verdict = judge(run, load, warmup_s=min(600.0, args.minutes * 10))
    OUT.mkdir(exist_ok=True)
    (OUT / f"soak-{args.profile}.json").write_text(json.dumps(asdict(run), indent=2))
    plot(run, OUT / f"soak-{args.profile}.png")
    print(json.dumps(run.verdict, indent=2))


if __name__ == "__main__":
    main()
