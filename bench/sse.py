"""Benchmark: one gateway process (uvicorn, one worker) serving many concurrent SSE clients.

Starts its own redis-server and `python -m gateway`, measures cold start (spawn -> /healthz 200),
opens N event streams (one job each), publishes events to every job through JobStore (the path a
worker takes) from another process, then checks that each client got every event of its job exactly
once, in order, ending with the terminal event. Prints delivery latency and the gateway's RSS.

    .venv/bin/python bench/sse.py --clients 1000 --events 10
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

from shared.jobstore import JobStore
from shared.settings import Settings
from testkit.job_results import train_job, train_result
from testkit.servers import free_port, redis_server

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Client:
    job_id: str
    frames: list[tuple[str, str, dict[str, object], float]] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def memory_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        name: int(re.search(rf"{name}:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        for name in ("VmRSS", "VmHWM")
    }


def start_gateway(
    redis_url: str, port: int, prefix: str, clients: int
) -> tuple[subprocess.Popen[bytes], float]:
    # Every client here is one address: the caps on streams and reads per caller are lifted.
    env = {
        **os.environ,
        "AGNEWS_REDIS_URL": redis_url,
        "AGNEWS_KEY_PREFIX": prefix,
        "AGNEWS_HTTP_HOST": "127.0.0.1",
        "AGNEWS_HTTP_PORT": str(port),
        "AGNEWS_LOG_LEVEL": "WARNING",
        "AGNEWS_MAX_STREAMS_PER_KEY": str(clients),
        "AGNEWS_RATE_READS_BURST": str(clients),
    }
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError("the gateway exited")
        time.sleep(0.005)


async def follow(session: aiohttp.ClientSession, base: str, client: Client) -> None:
    try:
        async with session.get(f"{base}/v1/jobs/{client.job_id}/events") as response:
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {await response.text()}")
            entry: dict[str, str] = {}
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line:
                    name, _, value = line.partition(":")
                    if name:
                        entry[name] = value.removeprefix(" ")
                    continue
                if "event" in entry:
                    data = json.loads(entry["data"])
                    client.frames.append((entry["id"], entry["event"], data, time.time()))
                    client.subscribed.set()
                entry = {}
    except Exception as exc:
        client.error = f"{type(exc).__name__}: {exc}"
        client.subscribed.set()


def publish(redis_url: str, prefix: str, jobs: list[str], events: int, interval: float) -> None:
    """Runs in its own process, like a worker, so that it never competes with the clients."""
    store = JobStore.from_settings(Settings(redis_url=redis_url, key_prefix=prefix))
    for job_id in jobs:
        store.start(job_id)
    for step in range(events):
        time.sleep(interval)
        for job_id in jobs:
            store.progress(job_id, {"step": step, "total": events, "sent": time.time()})
    time.sleep(interval)
    for job_id in jobs:
        store.succeed(job_id, train_result())


async def run(args: argparse.Namespace) -> None:
    fd_limit = raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        settings = Settings(redis_url=redis_url, key_prefix="bench")
        port = free_port()
        process, cold_start = start_gateway(
            redis_url, port, settings.redis.key_prefix, args.clients
        )
        try:
            idle = memory_kb(process.pid)
            store = JobStore.from_settings(settings)
            jobs = [store.create(train_job()).id for _ in range(args.clients)]
            clients = [Client(job_id) for job_id in jobs]
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                began = time.perf_counter()
                tasks = [asyncio.create_task(follow(session, base, c)) for c in clients]
                await asyncio.gather(*(c.subscribed.wait() for c in clients))
                connect_s = time.perf_counter() - began
                connected = memory_kb(process.pid)
                publisher = multiprocessing.get_context("spawn").Process(
                    target=publish,
                    args=(redis_url, settings.redis.key_prefix, jobs, args.events, args.interval),
                )
                publisher.start()
                _, late = await asyncio.wait(tasks, timeout=args.timeout)
                for task in late:
                    task.cancel()
                publisher.join()
                if publisher.exitcode != 0:
                    raise RuntimeError(f"the publisher failed with exit code {publisher.exitcode}")
            final = memory_kb(process.pid)
        finally:
            process.terminate()
            process.wait(30)

        served = delivered = 0
        latencies: list[float] = []
        problems: list[str] = []
        for client in clients:
            expected = [event.id for event in store.events(client.job_id)]
            got = [frame[0] for frame in client.frames]
            if client.error or got != expected or client.frames[-1][1] != "result":
                problems.append(f"{client.job_id}: {client.error or 'events differ'}")
                continue
            served += 1
            delivered += len(got)
            latencies += [
                received - float(data["sent"])  # type: ignore[arg-type]
                for _, _, data, received in client.frames
                if "sent" in data
            ]

    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(f"clients                   {args.clients} (fd limit {fd_limit})")
    print(f"events per job            {args.events} progress + 4 status/result")
    print(f"cold start (spawn->200)   {cold_start:.2f} s")
    print(f"all clients subscribed    {connect_s:.2f} s")
    print(f"clients served correctly  {served}/{args.clients}")
    print(f"events delivered          {delivered} (each exactly once, in order)")
    print(
        f"latency p50 / p99 / max   {quantiles[49] * 1000:.1f} / {quantiles[98] * 1000:.1f} / "
        f"{max(latencies, default=0) * 1000:.1f} ms"
    )
    print(f"gateway RSS idle          {idle['VmRSS'] / 1024:.1f} MB")
    print(f"gateway RSS, all streams  {connected['VmRSS'] / 1024:.1f} MB")
    print(f"gateway RSS peak (VmHWM)  {final['VmHWM'] / 1024:.1f} MB")
    for problem in problems[:10]:
        print("PROBLEM", problem)
    if problems:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10, help="progress events per job")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between rounds")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the end")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
