"""The local supervisor: restarts with backoff, gives up on a process that keeps dying, and reads
readiness from this run's log only."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from stack.logfiles import LogLimits, RotatingLog
from stack.processes import GaveUp, RestartPolicy, Service, Supervisor, log_says

POLICY = RestartPolicy(max_restarts=3, window_s=60, backoff_s=0.1, backoff_max_s=0.4)


def test_backoff_doubles_up_to_its_cap_and_gives_up_after_too_many_exits_in_the_window() -> None:
    assert POLICY.delay([100.0], 100.0) == pytest.approx(0.1)
    assert POLICY.delay([100.0, 101.0], 101.0) == pytest.approx(0.2)
    assert POLICY.delay([1.0, 100.0, 101.0], 101.0) == pytest.approx(0.2)  # 1.0 left the window
    assert POLICY.delay([99.0, 100.0, 101.0], 101.0) is None
    capped = RestartPolicy(max_restarts=99, backoff_s=1, backoff_max_s=5)
    assert capped.delay([float(t) for t in range(10)], 9.0) == 5


def _service(name: str, code: str) -> Service:
    return Service(name=name, argv=[sys.executable, "-c", code], ready=lambda: True)


def _tick_until(supervisor: Supervisor, done: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        supervisor.tick()
        time.sleep(0.02)


def test_a_process_that_dies_is_restarted_and_each_restart_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(tmp_path, {}, POLICY)
    # Dies once (it leaves a marker), then stays up.
    marker = tmp_path / "died-once"
    code = (
        "import pathlib, sys, time\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists(): m.touch(); print('dying'); sys.exit(3)\n"
        "print('second life', flush=True); time.sleep(60)\n"
    )
    service = supervisor.start(_service("flaky", code))
    first = service.process
    try:
        _tick_until(supervisor, lambda: service.process is not first)
        _tick_until(supervisor, lambda: "second life" in (tmp_path / "flaky.log").read_text())
        assert not service.exited()
        assert "dying" in (tmp_path / "flaky.log.1").read_text()
        assert "flaky exited with code 3; restart 1" in caplog.text
        assert "flaky restarted" in caplog.text
    finally:
        supervisor.stop()
    assert service.process is not None
    assert service.process.poll() is not None


def test_a_process_that_keeps_dying_stops_the_watch_with_a_message_naming_it(
    tmp_path: Path,
) -> None:
    supervisor = Supervisor(tmp_path, {}, POLICY)
    supervisor.start(_service("crasher", "import sys; sys.exit(7)"))
    try:
        with pytest.raises(GaveUp, match=r"crasher exited 3 times within 60s \(last code 7\)"):
            supervisor.watch(lambda: False, interval_s=0.02)
    finally:
        supervisor.stop()


def test_readiness_is_not_fooled_by_the_previous_runs_log(tmp_path: Path) -> None:
    (tmp_path / "worker.log").write_text("celery@host ready.\n")
    code = "import time; time.sleep(1.0); print('celery@host ready.', flush=True); time.sleep(60)"
    service = Service(
        name="worker",
        argv=[sys.executable, "-c", code],
        ready=log_says(tmp_path / "worker.log", " ready."),
    )
    supervisor = Supervisor(tmp_path, {}, POLICY)
    service.start(tmp_path, {})
    supervisor.services.append(service)
    try:
        assert not service.ready()
        service.wait_ready()
        assert (tmp_path / "worker.log.1").read_text() == "celery@host ready.\n"
    finally:
        supervisor.stop()


def test_stop_ends_the_watch_and_every_process(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, {}, POLICY)
    service = supervisor.start(_service("sleeper", "import time; time.sleep(60)"))
    stop_at = time.monotonic() + 0.3
    supervisor.watch(lambda: time.monotonic() > stop_at, interval_s=0.02)
    supervisor.stop()
    assert service.process is not None
    assert service.process.poll() is not None


def test_services_started_together_are_all_running_before_any_is_waited_on(
    tmp_path: Path,
) -> None:
    # "first" is ready only once "second" has written its log: waiting on each in turn, the
    # way services are started one by one, would time out on "first".
    first = Service(
        name="first",
        argv=[sys.executable, "-c", "import time; time.sleep(60)"],
        ready=log_says(tmp_path / "second.log", "up"),
        start_timeout_s=10,
    )
    second = _service("second", "import time; print('up', flush=True); time.sleep(60)")
    supervisor = Supervisor(tmp_path, {}, POLICY)
    try:
        supervisor.start_together([first, second])
        assert supervisor.services == [first, second]
    finally:
        supervisor.stop()


# On SIGTERM it leaves its marker, waits up to 10 s for its peer's, and says whether it came.
_PEER = """
import pathlib, signal, sys, time
me, peer = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def stop(*_):
    me.touch()
    deadline = time.monotonic() + 10
    while not peer.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print("peer stopping too" if peer.exists() else "alone", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("up", flush=True)
time.sleep(60)
"""

# On SIGTERM it says whether the process whose pid is in argv[1]'s file still runs.
_CLIENT = """
import os, pathlib, signal, sys, time
def stop(*_):
    pid = int(pathlib.Path(sys.argv[1]).read_text())
    try:
        os.kill(pid, 0)
        print("broker still up", flush=True)
    except ProcessLookupError:
        print("broker gone", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("up", flush=True)
time.sleep(60)
"""


def test_stop_signals_the_services_together_and_the_first_started_last(tmp_path: Path) -> None:
    def service(name: str, code: str, *args: Path) -> Service:
        return Service(
            name=name,
            argv=[sys.executable, "-c", code, *map(str, args)],
            ready=log_says(tmp_path / f"{name}.log", "up"),
        )

    broker_pid = tmp_path / "broker.pid"
    supervisor = Supervisor(tmp_path, {}, POLICY)
    broker = supervisor.start(_service("broker", "import time; time.sleep(60)"))
    assert broker.process is not None
    broker_pid.write_text(str(broker.process.pid))
    supervisor.start_together(
        [
            service("a", _PEER, tmp_path / "a.stopping", tmp_path / "b.stopping"),
            service("b", _PEER, tmp_path / "b.stopping", tmp_path / "a.stopping"),
            service("client", _CLIENT, broker_pid),
        ]
    )
    supervisor.stop()
    assert (tmp_path / "a.log").read_text().splitlines() == ["up", "peer stopping too"]
    assert (tmp_path / "b.log").read_text().splitlines() == ["up", "peer stopping too"]
    assert (tmp_path / "client.log").read_text().splitlines() == ["up", "broker still up"]
    assert broker.process.poll() is not None


def test_a_service_that_ignores_sigterm_is_killed_after_its_stop_timeout(tmp_path: Path) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    stubborn = Service(
        name="stubborn",
        argv=[sys.executable, "-c", code],
        ready=log_says(tmp_path / "stubborn.log", "up"),
        stop_timeout_s=0.5,
    )
    supervisor = Supervisor(tmp_path, {}, POLICY)
    supervisor.start(stubborn)
    supervisor.stop()
    assert stubborn.process is not None
    assert stubborn.process.returncode == -signal.SIGKILL


def test_a_process_log_rolls_over_at_its_size_and_keeps_a_few_old_files(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "gateway.log", LogLimits(max_bytes=100, backups=2)).open()
    for number in range(30):
        log.write(f"line {number:02d} of about twenty bytes\n".encode())
    log.close()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    assert all(path.stat().st_size <= 100 for path in tmp_path.iterdir())
    assert (tmp_path / "gateway.log").read_text().splitlines()[-1].startswith("line 29")
    assert (tmp_path / "gateway.log.1").read_text().splitlines()[-1].startswith("line 2")

    again = RotatingLog(tmp_path / "gateway.log", LogLimits(max_bytes=100, backups=2)).open()
    again.close()
    assert (tmp_path / "gateway.log").read_text() == ""
    assert "line 29" in (tmp_path / "gateway.log.1").read_text()


def test_a_service_output_reaches_its_rotating_log(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(50): print('x' * 49, flush=True)"
    service = Service(name="talker", argv=[sys.executable, "-c", code], ready=lambda: True)
    service.start(tmp_path, dict(os.environ), LogLimits(max_bytes=1000, backups=1))
    assert service.process is not None
    service.process.wait(10)
    service.wait_stopped()
    sizes = {path.name: path.stat().st_size for path in tmp_path.iterdir()}
    assert set(sizes) == {"talker.log", "talker.log.1"}
    assert max(sizes.values()) <= 1000
