"""Log records as JSON lines that carry the job, task and version they concern, and the stack's
reader that follows one job across every process's log."""

import json
import logging
from pathlib import Path

import pytest

from shared.logs import bound, configure_logging, readable
from shared.settings import RunSettings
from stack.logs import log_files, read_lines


def lines_of(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_a_record_carries_its_process_and_the_job_task_and_version_bound_to_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(RunSettings(log_format="json"), "worker-train")
        log = logging.getLogger("pipeline.train")
        with bound(job_id="j1", task="agnews.train", version=None):
            log.info("plan: %d steps — ok", 5)
            log.warning("a version", extra={"version": "2026-12-06T10-00-00-abcd"})
        log.info("outside")
        first, second, outside = lines_of(capsys)
    finally:
        root.handlers = handlers
        root.setLevel(level)
    assert first["event"] == "plan: 5 steps — ok"
    assert (first["job_id"], first["task"]) == ("j1", "agnews.train")
    assert first["process"] == "worker-train"
    assert "version" not in first
    assert second["version"] == "2026-12-06T10-00-00-abcd"
    assert "job_id" not in outside
    assert list(first)[:4] == ["timestamp", "level", "process", "logger"]


def test_a_json_line_reads_as_a_console_line_and_other_lines_stay() -> None:
    line = json.dumps(
        {"timestamp": "2026-12-06T10:00:00Z", "level": "info", "event": "ready", "job_id": "j1"}
    )
    shown = readable(line)
    assert "ready" in shown
    assert "job_id=j1" in shown
    assert "{" not in shown
    assert readable("redis-server: Ready to accept connections\n") == (
        "redis-server: Ready to accept connections"
    )


def record(timestamp: str, event: str, **fields: str) -> str:
    return json.dumps({"timestamp": timestamp, "level": "info", "event": event, **fields}) + "\n"


def test_one_job_is_followed_in_time_order_across_the_logs_of_every_process(
    tmp_path: Path,
) -> None:
    (tmp_path / "gateway.log").write_text(
        record("2026-12-06T10:00:01Z", "created pipeline job j1", job_id="j1")
        + record("2026-12-06T10:00:05Z", "another job", job_id="j2")
    )
    (tmp_path / "worker-train.log").write_text(
        record("2026-12-06T10:00:03Z", "running agnews.train", job_id="j1")
        + "Traceback (most recent call last): a line that is no record\n"
        + record("2026-12-06T10:00:02Z", "an older record, written later", job_id="j1")
    )
    (tmp_path / "redis.log").write_text("1:M 06 Dec 2026 Ready to accept connections\n")

    every = read_lines(log_files(tmp_path, []))
    assert len(every) == 6
    followed = [line for line in every if line.about("j1")]
    assert [line.record["event"] for line in followed if line.record] == [
        "created pipeline job j1",
        "an older record, written later",
        "running agnews.train",
    ]
    assert [line.process for line in followed] == ["gateway", "worker-train", "worker-train"]
    assert [path.name for path in log_files(tmp_path, ["gateway"])] == ["gateway.log"]
