"""`python -m workers QUEUE`: each queue's worker gets the pool it needs."""

from shared.broker import transport_options
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


def test_each_worker_names_its_queue_and_gets_that_queues_visibility_timeout_and_keys() -> None:
    for queue in ("predict", "train", "evaluate"):
        assert worker_env(queue) == {"AGNEWS_WORKER_QUEUE": queue}
    settings = Settings(
        predict_visibility_timeout_s=15,
        evaluate_visibility_timeout_s=1800,
        train_visibility_timeout_s=21600,
    )
    predict = transport_options(settings, "predict")
    evaluate = transport_options(settings, "evaluate")
    train = transport_options(settings, "train")
    assert (predict["visibility_timeout"], evaluate["visibility_timeout"]) == (15, 1800)
    assert train["visibility_timeout"] == 21600
    # A predict worker's quick sweep must never see the train queue's unacknowledged messages.
    assert len({predict["unacked_index_key"], evaluate["unacked_index_key"], "unacked_index"}) == 3
    assert "unacked_index_key" not in train
    assert "ack_emulation" not in predict  # kombu's default: emulated, so acks can be late
    assert predict["visibility_timeout"] + settings.broker.restore_interval_s <= 30
