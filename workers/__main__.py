"""Start one queue's Celery worker with the pool that queue needs: `python -m workers predict`.

predict: two threads in one process sharing one model; one batch is in the model while the
other's answers are written; requests beyond `predict_prefetch` wait in Redis for any worker.
train and evaluate: long tasks, one at a time per process. Every task is acknowledged after its
work is written; each queue has its own visibility timeout (see `shared.tasks.transport_options`).
"""

import argparse
import math
import os
import sys
from collections.abc import Sequence

from shared.contracts.stages import QUEUES
from shared.settings import Settings, get_settings

PREDICT_THREADS = 2


def worker_argv(
    queue: str, settings: Settings, concurrency: int = 1, extra: Sequence[str] = ()
) -> list[str]:
    if queue == "predict":
        pool = [
            "--pool",
            "threads",
            "--concurrency",
            str(PREDICT_THREADS),
            "--prefetch-multiplier",
            str(math.ceil(settings.serving.prefetch / PREDICT_THREADS)),
        ]
    else:
        pool = ["--concurrency", str(concurrency), "--prefetch-multiplier", "1"]
    return [
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        queue,
        *pool,
        "--loglevel",
        settings.run.log_level,
        "--without-gossip",
        "--without-mingle",
        *(extra if "-n" in extra else ["-n", f"{queue}@%h", *extra]),
    ]


def worker_env(queue: str) -> dict[str, str]:
    """Settings a queue's worker overrides: the queue, which picks its broker options."""
    return {"AGNEWS_WORKER_QUEUE": queue}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("queue", choices=QUEUES)
    parser.add_argument("--concurrency", type=int, default=1, help="processes (train, evaluate)")
    parser.epilog = "Other options go to `celery worker` as they are (e.g. -n name@%%h)."
    args, extra = parser.parse_known_args()
    os.environ.update(worker_env(args.queue))
    argv = worker_argv(args.queue, get_settings(), args.concurrency, extra)
    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    os.execv(celery, argv)


if __name__ == "__main__":
    main()
