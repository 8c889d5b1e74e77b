"""Redis per answered prediction: 2,000 single-text predictions from 32 clients on the local
stack, each client sending its next when the last is answered; Redis's memory before and after (its
used_memory less connection and AOF buffers, and less the answers stream, a fixed cost of at
most its maxlen), per prediction kept, and
the longest time to live of any predict job's key against the retention.

    .venv/bin/python -m bench.retention
"""

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path

from bench.machine import cpu_line
from pipeline.ingest import read_archive
from shared.jobstore import JobKeys
from shared.redis_clients import sync_client
from shared.settings import Settings
from testkit.archives import REAL_ARCHIVE
from testkit.load import Connection
from testkit.models import trained_model
from testkit.servers import held_memory
from testkit.stack import live_stack, serve_model


async def send(url: str, texts: list[str], total: int, clients: int) -> dict[int, int]:
    """`total` predictions over `clients` closed-loop clients; how many got each status."""
    statuses: dict[int, int] = {}
    queue = iter(range(total))

    async def client() -> None:
        connection = Connection(url)
        try:
            for index in queue:
                status, _ = await connection.predict(texts[index % len(texts)])
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--predict-workers", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args()
    print(f"CPU: {cpu_line()}", flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = [row.text for row in read_archive(REAL_ARCHIVE, Settings()).test.rows]
    with tempfile.TemporaryDirectory() as work:
        model_dir = trained_model(Path(work) / "model", 20)
        with live_stack(
            Path(work) / "stack", predict_workers=args.predict_workers, model_poll_s=0.5
        ) as stack:
            serve_model(stack, model_dir, texts[0])
            redis = sync_client(stack.settings.redis)
            keys = JobKeys(stack.settings.redis.key_prefix)
            before = held_memory(redis)
            stream_before = int(redis.memory_usage(keys.answers) or 0)
            kept_before = int(redis.zcard(keys.predict_index))
            statuses = asyncio.run(send(stack.url, texts, args.predictions, args.clients))
            after = held_memory(redis)
            stream_after = int(redis.memory_usage(keys.answers) or 0)
            kept = int(redis.zcard(keys.predict_index)) - kept_before
            ttls = [
                int(redis.ttl(keys.job(str(job_id))))
                for job_id in redis.zrange(keys.predict_index, 0, -1)
            ]
            retention = stack.settings.jobs.predict_ttl_s
    grown = after - before - (stream_after - stream_before)
    report = {
        "statuses": statuses,
        "predictions_kept": kept,
        "redis_used_before_bytes": before,
        "redis_used_after_bytes": after,
        "answers_stream_growth_bytes": stream_after - stream_before,
        "redis_bytes_per_prediction": round(grown / kept, 1) if kept else None,
        "longest_predict_ttl_s": max(ttls, default=None),
        "predict_retention_s": retention,
        "keys_without_ttl": sum(1 for ttl in ttls if ttl < 0),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
