"""Load on a live gateway, for the benchmarks and the soak test: predictions sent one text at a
time over kept-alive HTTP/1.1 connections, as lean as a generator sharing the cores with the
system can be; closed loop (each client sends its next text when answered) or open loop (each
request at its scheduled time); and what each process of the stack holds."""

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Outcome:
    sent_at: float
    latency_ms: float
    status: int  # 0: no answer at all
    job_id: str | None = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Connection:
    """One kept-alive HTTP/1.1 connection to the gateway, as minimal as a load generator that
    shares the cores with the system can make it."""

    def __init__(self, url: str) -> None:
        self.url = urlparse(url)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def predict(self, text: str) -> tuple[int, dict[str, Any]]:
        if self.reader is not None and self.reader.at_eof():
            self.close()  # the gateway closed it while idle, as a client's pool would notice
        if self.writer is None:
            host, port = self.url.hostname or "127.0.0.1", self.url.port or 80
            self.reader, self.writer = await asyncio.open_connection(host, port)
        assert self.reader is not None
        body = json.dumps({"text": text}).encode()
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: {self.url.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Load:
    """Predictions sent at a rate that a schedule gives, over a pool of connections."""

    def __init__(self, url: str, texts: list[str], connections: int) -> None:
        self.url = url
        self.texts = texts
        self.connections = connections
        self.outcomes: list[Outcome] = []
        self.offered = 0

    async def run(self, rate_at: Any, seconds: float) -> None:
        """Send for `seconds`, `rate_at(elapsed)` requests per second."""
        tickets: asyncio.Queue[float | None] = asyncio.Queue()
        senders = [asyncio.create_task(self._sender(tickets)) for _ in range(self.connections)]
        start = time.perf_counter()
        due = start
        while (now := time.perf_counter()) < start + seconds:
            rate = max(rate_at(now - start), 0.1)
            while due <= now:
                tickets.put_nowait(due)
                self.offered += 1
                due += 1.0 / rate
            await asyncio.sleep(min(0.005, max(0.0, due - now)))
        for _ in senders:
            tickets.put_nowait(None)
        await asyncio.gather(*senders)

    async def _sender(self, tickets: "asyncio.Queue[float | None]") -> None:
        connection = Connection(self.url)
        index = len(self.outcomes) * 31
        try:
            while (due := await tickets.get()) is not None:
                index += 1
                try:
                    status, body = await connection.predict(self.texts[index % len(self.texts)])
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                    connection.close()
                    status, body = 0, {}
                latency = (time.perf_counter() - due) * 1000
                job = body.get("id") if status == 202 else None
                self.outcomes.append(Outcome(due, latency, status, job))
        finally:
            connection.close()


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def rss_and_files(pid: int) -> tuple[int, int]:
    rss = files = 0
    for member in process_tree(pid):
        try:
            rss += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
            files += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue
    return rss, files


TICKS = os.sysconf("SC_CLK_TCK")
MACHINE_CPU = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its live descendants."""
    ticks = 0
    for member in process_tree(pid):
        try:
            # After the command's closing parenthesis: field 3 (state) on; utime, stime: 14, 15.
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / TICKS


def machine_ticks() -> dict[str, int]:
    """The machine's CPU time so far by kind (/proc/stat's first line), in clock ticks: steal is
    what the hypervisor gave other guests."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return dict(zip(MACHINE_CPU, map(int, first), strict=False))


def disk_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


async def measure_peak(url: str, texts: list[str], clients: int, seconds: float) -> float:
    """Closed loop: each client sends the next text when the last is answered."""
    answered = 0

    async def client(offset: int, until: float) -> None:
        nonlocal answered
        connection = Connection(url)
        index = offset
        try:
            while time.perf_counter() < until:
                status, _ = await connection.predict(texts[index % len(texts)])
                index += 1
                answered += status == 200
        finally:
            connection.close()

    await asyncio.gather(*(client(i * 97, time.perf_counter() + 3) for i in range(clients)))
    answered = 0
    started = time.perf_counter()
    await asyncio.gather(*(client(i * 89, started + seconds) for i in range(clients)))
    return answered / (time.perf_counter() - started)
