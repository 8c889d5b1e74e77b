"""`python -m workers QUEUE`: each queue's worker gets the pool it needs."""

from shared.settings import Settings
from workers.__main__ import worker_argv, worker_env


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_a_predict_worker_runs_threads_over_one_model_and_prefetches_a_batch_or_two() -> None:
    argv = worker_argv("predict", Settings(predict_prefetch=128))
    assert argv[:6] == ["celery", "-A", "workers.app", "worker", "-Q", "predict"]
    assert option(argv, "--pool") == "threads"
    threads = int(option(argv, "--concurrency"))
    assert int(option(argv, "--prefetch-multiplier")) * threads >= 128
    assert option(argv, "-n") == "predict@%h"


def test_train_and_evaluate_workers_take_one_long_task_at_a_time() -> None:
    for queue in ("train", "evaluate"):
        argv = worker_argv(queue, Settings(), concurrency=3)
        assert "--pool" not in argv
        assert option(argv, "--concurrency") == "3"
        assert option(argv, "--prefetch-multiplier") == "1"


def test_a_given_node_name_replaces_the_default() -> None:
    argv = worker_argv("predict", Settings(), extra=["-n", "predict2@%h"])
    assert argv.count("-n") == 1
    assert option(argv, "-n") == "predict2@%h"


def test_only_predict_workers_drop_emulated_acknowledgements() -> None:
    assert worker_env("predict") == {"AGNEWS_BROKER_ACK_EMULATION": "false"}
    assert worker_env("train") == worker_env("evaluate") == {}
    assert Settings().broker_ack_emulation is True
