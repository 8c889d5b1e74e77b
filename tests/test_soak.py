"""bench/soak.py in short, on the real stack with a short predict retention: once the retention
has passed, what Redis holds stops growing however long predictions come, no prediction's record
outlives the retention, nothing sent is lost, and an answered prediction costs Redis under 1 KB.
A change that lets state grow again fails here. And /metrics counts every answer of both
predict workers, once each."""

import asyncio
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from pipeline.ingest import read_archive
from shared.broker import transport_options
from shared.jobstore import JobStore
from shared.redis_clients import sync_client, text
from shared.settings import Settings
from testkit.archives import REAL_ARCHIVE
from testkit.load import Load
from testkit.models import tiny_model
from testkit.servers import held_memory
from testkit.stack import LiveStack, live_stack, serve_model

pytestmark = pytest.mark.slow

RETENTION_S = 30
RATE = 15.0  # texts/s: well inside what the fleet answers on two busy cores


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    model = tiny_model(tmp_path_factory.mktemp("model"))
    with live_stack(
        tmp_path_factory.mktemp("stack"),
        queues=("predict",),
        predict_workers=2,
        predict_job_ttl_s=RETENTION_S,
        predict_job_timeout_s=RETENTION_S - 5,
        predict_redeliver_s=RETENTION_S - 15,
        model_poll_s=0.5,
        # The review sample is bounded by its own size (200 texts, docs/capacity.md) and fills
        # as the run goes: kept small here, its filling does not read as growth.
        review_keep=10,
    ) as running:
        serve_model(running, model, "Stocks rally as oil prices fall")
        yield running


def test_redis_holds_a_bounded_state_under_steady_predictions(stack: LiveStack) -> None:
    texts = [row.text for row in read_archive(REAL_ARCHIVE, Settings()).test.rows[:500]]
    redis = sync_client(stack.settings.redis)
    store = JobStore.from_settings(stack.settings)
    options = transport_options(stack.settings, "predict")
    # Sized by the answers stream's maxlen and the broker's messages in flight, not by what is kept.
    fixed = {store.keys.answers, "predict", options["unacked_key"], options["unacked_index_key"]}
    base_memory, base_keys = held_memory(redis), int(redis.dbsize())
    samples: list[tuple[float, int, int, int, int]] = []
    load = Load(stack.url, texts, connections=16)

    def footprint() -> int:
        """What the kept records take: every key but the fixed ones, exactly (no sampling of
        their members), and the keyspace's own tables."""
        names = [key for key in redis.scan_iter(count=1000) if text(key) not in fixed]
        records = sum(int(redis.memory_usage(key, samples=0) or 0) for key in names)
        tables = redis.memory_stats().get("db.0", {})
        return records + sum(int(size) for size in tables.values())

    def sample(started: float) -> None:
        bounded = sum(int(redis.memory_usage(key) or 0) for key in fixed)
        memory, keys = held_memory(redis) - bounded - base_memory, int(redis.dbsize())
        kept = int(redis.zcard(store.keys.predict_index))
        samples.append((time.monotonic() - started, memory, keys, kept, footprint()))

    async def drive() -> None:
        sending = asyncio.create_task(load.run(lambda _: RATE, 3 * RETENTION_S))
        started = time.monotonic()
        while not sending.done():
            await asyncio.wait([sending], timeout=5)
            sample(started)
        await sending

    asyncio.run(drive())
    statuses = [outcome.status for outcome in load.outcomes]
    assert statuses.count(200) == len(statuses) > 0.9 * RATE * 3 * RETENTION_S

    # While kept, an answered prediction costs Redis under 1 KB; about RATE * RETENTION_S are
    # kept at once, the retention being a third of the run. (bench/retention.py measures the
    # same from used_memory over 2,000 predictions, where the allocator's own swings of some
    # 100 KB weigh less.)
    kept = RATE * RETENTION_S
    settled = [entry for entry in samples if entry[0] > RETENTION_S + 10]
    for _, _, _, held, records in settled:
        assert 0.8 * kept <= held <= 1.2 * kept
        assert records / held < 1024, (records, held)
    # Past the retention, keys and memory stay flat: the last third of the samples no more than a
    # tenth above the first third (medians: the allocator swings by some 100 KB either way).
    assert max(keys for _, _, keys, _, _ in settled) <= base_keys + 1.2 * kept + 10
    third = max(1, len(settled) // 3)
    first = statistics.median(memory for _, memory, _, _, _ in settled[:third])
    last = statistics.median(memory for _, memory, _, _, _ in settled[-third:])
    assert last <= 1.1 * first + 64 * 1024, (first, last)

    # No prediction's record outlives the retention.
    for key in redis.scan_iter(match=store.keys.job("*"), count=1000):
        ttl = redis.ttl(key)
        assert ttl != -1, f"{key} has no expiry"  # -2: it expired since the scan listed it
        assert ttl <= RETENTION_S, (key, ttl)
    assert redis.zcard(store.keys.predict_index) <= 1.1 * kept + 10


def test_metrics_count_every_answer_of_every_predict_worker(stack: LiveStack) -> None:
    """Both predict workers count what they answer; the gateway exports the fleet's sum."""
    texts = [row.text for row in read_archive(REAL_ARCHIVE, Settings()).test.rows[:200]]
    version = httpx.get(f"{stack.url}/v1/models/production").json()["version"]
    before = _settled(stack, version)  # the last test's answers all counted
    load = Load(stack.url, texts, connections=16)
    asyncio.run(load.run(lambda _: 40.0, 5))
    answered = [outcome.status for outcome in load.outcomes].count(200)
    assert answered == len(load.outcomes) > 150
    deadline = time.monotonic() + 3 * stack.settings.monitor.flush_s + 5
    while _answered(stack.url, version) < before + answered and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _answered(stack.url, version) == before + answered
    serving = [
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(f"{stack.url}/metrics").text.splitlines()
        if line.startswith("agnews_serving_workers{")
    ]
    assert sum(serving) == 2


def _settled(stack: LiveStack, version: str) -> float:
    """The count once no flush changes it: the workers flush every monitor_flush_s."""
    wait_s = stack.settings.monitor.flush_s + stack.settings.serving.model_poll_s + 1
    last, now = -1.0, _answered(stack.url, version)
    while now != last:
        time.sleep(wait_s)
        last, now = now, _answered(stack.url, version)
    return now


def _answered(url: str, version: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("agnews_predictions_total{") and f'version="{version}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
