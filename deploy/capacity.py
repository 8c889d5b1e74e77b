"""What Redis holds at steady state, from the request rate and the retention settings, and the
ElastiCache node that holds it: docs/capacity.md explains each term; `python -m deploy.capacity`
prints the sizing of the AWS fleet's defaults.

Redis memory depends on the rates and the retentions, never on uptime:

    M = P * λ * T  +  S  +  J * (H + E * e)  +  B  +  M₀,  and the node's memory ≥ M * F

P bytes kept per answered prediction (its record and index entry), λ predictions per second,
T the predict retention (AGNEWS_PREDICT_JOB_TTL_S); S the answers stream (its maxlen * s bytes);
J train, evaluate and pipeline jobs kept (their rate * AGNEWS_JOB_TTL_S), each a hash of H bytes
and at most E events (AGNEWS_EVENT_STREAM_MAXLEN) of e bytes; B the broker's share: predict
requests waiting (at most what the fleet answers within AGNEWS_PREDICT_WAIT_S, admission sheds
the rest) and those held unacknowledged; M₀ Redis itself; F the allocator's overhead and headroom.
"""

import math
from dataclasses import dataclass

from shared.settings import Settings

# Measured: tests/test_soak.py and bench/soak.py (bench/RESULTS.md).
BYTES_PER_PREDICTION = 1024
ANSWER_ENTRY_BYTES = 64
JOB_HASH_BYTES = 4096
EVENT_BYTES = 320
WAITING_TEXT_BYTES = 1024  # a waiting prediction's record and its share of a broker message
REDIS_ITSELF_BYTES = 8 * 2**20
OVERHEAD = 1.5  # fragmentation (jemalloc measured 1.3) and headroom for AOF rewrites

# What one predict instance of the fleet answers, at full load (deploy/README.md, measured:
# 110 predictions/s per vCPU; c7i.xlarge: 4 vCPUs).
PREDICTIONS_PER_INSTANCE = 440.0
# Usable memory of ElastiCache node types, GiB (AWS's published figures).
NODE_GIB = {
    "cache.t4g.small": 1.37,
    "cache.t4g.medium": 3.09,
    "cache.m7g.large": 6.38,
    "cache.r7g.large": 13.07,
    "cache.r7g.xlarge": 26.32,
}


@dataclass(frozen=True)
class Load:
    predictions_per_s: float
    jobs_per_day: float = 100.0


def redis_bytes(load: Load, settings: Settings) -> int:
    predictions = BYTES_PER_PREDICTION * load.predictions_per_s * settings.jobs.predict_ttl_s
    answers = ANSWER_ENTRY_BYTES * settings.jobs.answers_maxlen
    jobs_kept = load.jobs_per_day * settings.jobs.ttl_s / 86_400
    jobs = jobs_kept * (JOB_HASH_BYTES + settings.jobs.event_stream_maxlen * EVENT_BYTES)
    waiting = WAITING_TEXT_BYTES * load.predictions_per_s * settings.gateway.predict_wait_s
    held = (
        WAITING_TEXT_BYTES
        * settings.serving.prefetch
        * math.ceil(load.predictions_per_s / PREDICTIONS_PER_INSTANCE)
    )
    return round(predictions + answers + jobs + waiting + held + REDIS_ITSELF_BYTES)


def smallest_node(required_bytes: float) -> str:
    """The smallest node type whose memory holds `required_bytes` with the overhead."""
    for node, gib in sorted(NODE_GIB.items(), key=lambda item: item[1]):
        if gib * 2**30 >= required_bytes * OVERHEAD:
            return node
    raise ValueError(f"no node type listed holds {required_bytes / 2**30:.1f} GiB")


def fleet_maximum(predict_max_size: int) -> Load:
    """The predict rate of the predict group at its largest, every instance busy."""
    return Load(predictions_per_s=predict_max_size * PREDICTIONS_PER_INSTANCE)


def main() -> None:
    settings = Settings()
    for size in (1, 3, 10):
        load = fleet_maximum(size)
        need = redis_bytes(load, settings)
        print(
            f"{size:3d} predict instances, {load.predictions_per_s:6.0f} predictions/s: "
            f"{need / 2**30:5.2f} GiB in Redis -> {smallest_node(need)}"
        )


if __name__ == "__main__":
    main()
