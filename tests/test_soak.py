"""bench/soak.py in short, on the real stack with a short predict retention: once the retention
has passed, what Redis holds stops growing however long predictions come, no prediction's record
outlives the retention, nothing sent is lost, and an answered prediction costs Redis under 1 KB.
A change that lets state grow again fails here."""

import asyncio
import time
from collections.abc import Iterator

import pytest

from pipeline.ingest import read_archive
from shared.jobstore import JobStore
from shared.redis_clients import sync_client
from shared.settings import Settings
from testkit.archives import REAL_ARCHIVE
from testkit.load import Load
from testkit.models import tiny_model
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
        predict_job_ttl_s=RETENTION_S,
        predict_job_timeout_s=RETENTION_S - 5,
        predict_redeliver_s=RETENTION_S - 15,
        model_poll_s=0.5,
    ) as running:
        serve_model(running, model, "Stocks rally as oil prices fall")
        yield running


def test_redis_holds_a_bounded_state_under_steady_predictions(stack: LiveStack) -> None:
    texts = [row.text for row in read_archive(REAL_ARCHIVE, Settings()).test.rows[:500]]
    redis = sync_client(stack.settings.redis)
    store = JobStore.from_settings(stack.settings)
    base_memory, base_keys = int(redis.info("memory")["used_memory"]), int(redis.dbsize())
    samples: list[tuple[float, int, int, int]] = []
    load = Load(stack.url, texts, connections=16)

    def sample(started: float) -> None:
        # What each kept prediction costs: Redis's memory past its base and past the answers
        # stream (a fixed cost, at most its maxlen), over the predictions kept now.
        answers = int(redis.memory_usage(store.keys.answers) or 0)
        memory = int(redis.info("memory")["used_memory"]) - base_memory - answers
        kept = int(redis.zcard(store.keys.predict_index))
        samples.append((time.monotonic() - started, memory, int(redis.dbsize()), kept))

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
    # kept at once, the retention being a third of the run.
    kept = RATE * RETENTION_S
    settled = [entry for entry in samples if entry[0] > RETENTION_S + 10]
    for _, memory, _, held in settled:
        assert 0.8 * kept <= held <= 1.2 * kept
        assert memory / held < 1024, memory / held
    # Past the retention, keys and memory stay flat: no more than a tenth above where they were
    # when the first predictions expired.
    assert max(keys for _, _, keys, _ in settled) <= base_keys + 1.2 * kept + 10
    first, last = settled[0][1], settled[-1][1]
    assert last <= 1.1 * first + 64 * 1024, (first, last)

    # No prediction's record outlives the retention.
    for key in redis.scan_iter(match=store.keys.job("*"), count=1000):
        ttl = redis.ttl(key)
        assert ttl != -1, f"{key} has no expiry"  # -2: it expired since the scan listed it
        assert ttl <= RETENTION_S, (key, ttl)
    assert redis.zcard(store.keys.predict_index) <= 1.1 * kept + 10
