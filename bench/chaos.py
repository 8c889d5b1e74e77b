"""Faults against the real local stack: what each costs in requests, stuck jobs and time.

    .venv/bin/python bench/chaos.py [--requests 2000] [--clients 32]

Starts the local stack (Redis with AOF, SeaweedFS, listener, gateway, predict workers) on free
loopback ports with the supervisor watching it, promotes the tests' tiny model, then runs each
scenario under a load of `--clients` clients sending one text per request (the next when
answered) until `--requests` were sent:

- predict-kill: one of two predict workers SIGKILLed a third of the way in;
- redis-kill: redis-server SIGKILLed a third of the way in (the supervisor restarts it from its
  AOF; gateway, workers and listener reconnect by themselves).

Each request ends 200 (answered within the gateway's wait), or 202 with a job that is followed
until it ends: answered late. A request is lost when it got neither 200 nor a 202 whose job
succeeded within 60 s. Stuck: the scenario's jobs not ended 60 s after the load stopped.
Recover: seconds from the fault to the first 200 answered to a request sent after the fault.

Then, on a second stack with train and evaluate workers (quick profile, `--steps` steps, a
checkpoint every `--steps // 4`), one upload to incoming/ per scenario, whose pipeline job the
listener starts:

- train-kill: the train worker's process group SIGKILLed once training passed its first
  checkpoint; the reaper sends the task again after the heartbeat timeout and the restarted
  worker resumes from the checkpoint;
- s3-stop: production is first a model trained for one step on the same rows, then the S3
  store (SeaweedFS) is SIGSTOPped for 30 s once training began; the scenario counts only if the
  pipeline then promotes its model over that production (the holdout decides);
- listener-stop: the listener SIGSTOPped while 3 archives are uploaded, then resumed; the
  store's webhook retries and the listener's scan of incoming/ find them.

For those, "requests" are pipeline jobs (uploads for listener-stop); lost: jobs that did not
succeed, or for s3-stop did not promote (uploads without exactly one job); recover: seconds
from the fault to the job's end (to the third upload's job for listener-stop).
"""

import argparse
import asyncio
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.machine import cpu_line
from pipeline.registry import publish
from shared.jobstore import JobStore
from shared.registry import ModelRegistry
from shared.storage import s3_client
from testkit.archives import MINI_ARCHIVE
from testkit.models import tiny_model, trained_model
from testkit.stack import LiveStack, live_stack, restarting

TEXTS = [
    "Stocks rally as the central bank holds rates",
    "The striker scored twice in the cup final",
    "New chip doubles battery life of phones",
    "Rebels seize the capital after peace talks fail",
    "Quarterly profit beats forecasts at the carmaker",
    "Astronomers find water on a distant moon",
    "Tennis champion withdraws with a knee injury",
    "Oil prices slide as supply grows",
]
FOLLOW_S = 60.0


@dataclass
class Outcome:
    sent: int = 0
    ok: int = 0
    late: list[str] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    first_ok_after_fault: float | None = None


@dataclass
class Row:
    scenario: str
    sent: int
    answered_200: int
    answered_late: int
    lost: int
    refused: int
    stuck_after_60s: int
    recover_s: float | None

    def line(self) -> str:
        recover = "—" if self.recover_s is None else f"{self.recover_s:.1f} s"
        return (
            f"| {self.scenario} | {self.sent} | {self.answered_200} | {self.answered_late} | "
            f"{self.lost} (refused {self.refused}) | {self.stuck_after_60s} | {recover} |"
        )


HEADER = (
    "| scenario | requests sent | answered 200 | answered later via its job | lost "
    "| jobs stuck after 60 s | time to recover |\n|---|---|---|---|---|---|---|"
)


async def load(
    url: str, clients: int, total: int, fault_at: int, fault: Any, deadline_s: float
) -> tuple[Outcome, float]:
    outcome = Outcome()
    fault_time: list[float] = []
    started = time.monotonic()

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while outcome.sent < total and time.monotonic() - started < deadline_s:
                outcome.sent += 1
                if outcome.sent == fault_at:
                    fault_time.append(time.monotonic())
                    fault()
                sent_at = time.monotonic()
                try:
                    response = await http.post(
                        "/v1/predict", json={"text": TEXTS[index % len(TEXTS)]}
                    )
                except httpx.HTTPError as exc:
                    outcome.refusals[type(exc).__name__] += 1
                    await asyncio.sleep(0.2)
                    continue
                if response.status_code == 200:
                    outcome.ok += 1
                    if (
                        fault_time
                        and sent_at > fault_time[0]
                        and outcome.first_ok_after_fault is None
                    ):
                        outcome.first_ok_after_fault = time.monotonic() - fault_time[0]
                elif response.status_code == 202:
                    outcome.late.append(response.json()["id"])
                else:
                    outcome.refusals[f"{response.status_code} {response.text[:120]}"] += 1
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return outcome, fault_time[0] if fault_time else time.monotonic()


def follow(url: str, job_ids: list[str], timeout_s: float) -> dict[str, str]:
    """Each job's status once it ended, or its status when `timeout_s` ran out."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, str] = {}
    pending = list(job_ids)
    with httpx.Client(base_url=url, timeout=10) as http:
        while pending:
            still = []
            for job_id in pending:
                try:
                    job = http.get(f"/v1/jobs/{job_id}").json()
                    status[job_id] = job.get("status", "missing")
                except httpx.HTTPError:
                    status[job_id] = "unreachable"
                if status[job_id] not in ("succeeded", "failed", "cancelled"):
                    still.append(job_id)
            pending = still
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(1)
    return status


def active_jobs(stack: LiveStack) -> int:
    return len(JobStore.from_settings(stack.settings).active())


def wait_served(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (
                httpx.post(f"{url}/v1/predict", json={"text": "warm"}, timeout=30).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the stack never answered 200")


def kill(stack: LiveStack, name: str) -> None:
    service = next(s for s in stack.supervisor.services if s.name == name)
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGKILL)
    print(f"  SIGKILL {name} (pid {service.process.pid})", flush=True)


def scenario(stack: LiveStack, name: str, victim: str, args: argparse.Namespace) -> Row:
    wait_served(stack.url)
    print(f"{name}: {args.clients} clients, {args.requests} requests", flush=True)
    outcome, _ = asyncio.run(
        load(
            stack.url,
            args.clients,
            args.requests,
            args.requests // 3,
            lambda: kill(stack, victim),
            deadline_s=args.deadline_s,
        )
    )
    load_ended = time.monotonic()
    for reason, count in outcome.refusals.items():
        print(f"  refused {count}: {reason}", flush=True)
    status = follow(stack.url, outcome.late, FOLLOW_S)
    late_ok = sum(1 for s in status.values() if s == "succeeded")
    stuck = active_jobs(stack)
    if stuck:
        time.sleep(max(0.0, load_ended + FOLLOW_S - time.monotonic()))
        stuck = active_jobs(stack)
    return Row(
        scenario=name,
        sent=outcome.sent,
        answered_200=outcome.ok,
        answered_late=late_ok,
        lost=outcome.sent - outcome.ok - late_ok,
        refused=outcome.refusals.total(),
        stuck_after_60s=stuck,
        recover_s=outcome.first_ok_after_fault,
    )


@contextmanager
def watched_stack(root: Path) -> Iterator[LiveStack]:
    with live_stack(
        root, queues=("predict",), predict_workers=2, model_poll_s=0.5, restart_backoff_s=0.5
    ) as stack:
        registry = ModelRegistry.from_settings(stack.settings.storage)
        registry.promote(publish(registry, tiny_model(root / "tiny")).version, "chaos")
        with restarting(stack):
            yield stack


TERMINAL = ("succeeded", "failed", "cancelled")


def signal_group(stack: LiveStack, name: str, signum: int) -> None:
    service = next(s for s in stack.supervisor.services if s.name == name)
    assert service.process is not None
    os.killpg(service.process.pid, signum)
    print(f"  {signal.Signals(signum).name} {name} (group {service.process.pid})", flush=True)


def upload(stack: LiveStack, key: str) -> None:
    s3_client(stack.settings.storage).upload_file(
        str(MINI_ARCHIVE), stack.settings.storage.bucket, key
    )


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(http.get(f"/v1/jobs/{job_id}").json())


def wait_job(http: httpx.Client, job_id: str, done: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = job(http, job_id)
        if done(found) or found["status"] in TERMINAL or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def training_step(found: dict[str, Any]) -> int:
    progress = found.get("progress") or {}
    return int(progress.get("step", 0)) if progress.get("stage") == "train" else 0


def pipeline_jobs(http: httpx.Client, keys: list[str]) -> dict[str, list[str]]:
    """The pipeline jobs each uploaded key started."""
    jobs = http.get("/v1/jobs", params={"type": "pipeline", "limit": 100}).json()["jobs"]
    return {
        key: [j["id"] for j in jobs if (j["params"].get("source") or {}).get("key") == key]
        for key in keys
    }


def started_job(http: httpx.Client, key: str, timeout_s: float) -> str:
    """The pipeline job the listener started for an upload, once there is one."""
    deadline = time.monotonic() + timeout_s
    while not (ids := pipeline_jobs(http, [key])[key]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no pipeline job for {key} after {timeout_s:.0f} s")
        time.sleep(0.5)
    return ids[0]


def pipeline_fault(
    stack: LiveStack,
    name: str,
    key: str,
    fault_at_step: int,
    fault: Any,
    args: argparse.Namespace,
    *,
    must_promote: bool = False,
) -> Row:
    print(f"{name}: the pipeline of one upload, {args.steps} steps", flush=True)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        upload(stack, key)
        job_id = started_job(http, key, args.deadline_s)
        wait_job(http, job_id, lambda j: training_step(j) >= fault_at_step, args.deadline_s)
        fault_time = time.monotonic()
        fault()
        ended = wait_job(http, job_id, lambda j: False, args.deadline_s)
        recover = time.monotonic() - fault_time
    promotion = (ended.get("result") or {}).get("promotion") or {}
    ok = ended["status"] == "succeeded" and (promotion.get("promoted") or not must_promote)
    print(f"  job {ended['id']} {ended['status']}; {ended.get('error') or promotion.get('reason')}")
    for event in JobStore.from_settings(stack.settings).events(ended["id"]):
        message = str(event.data.get("message", ""))
        if "resumed" in message or "checkpoint" in message:
            print(f"  event: {message}", flush=True)
    return Row(name, 1, int(ok), 0, int(not ok), 0, int(ended["status"] not in TERMINAL), recover)


def listener_stop(stack: LiveStack, args: argparse.Namespace) -> Row:
    print("listener stopped while 3 archives are uploaded", flush=True)
    signal_group(stack, "listener", signal.SIGSTOP)
    keys = [f"incoming/chaos-listener-{i}/archive.zip" for i in range(3)]
    for key in keys:
        upload(stack, key)
    time.sleep(20)
    resumed = time.monotonic()
    signal_group(stack, "listener", signal.SIGCONT)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for key in keys:
            started_job(http, key, args.deadline_s)
        recover = time.monotonic() - resumed
        time.sleep(10)  # late duplicates would show by now
        counts = {key: len(ids) for key, ids in pipeline_jobs(http, keys).items()}
    print(f"  pipeline jobs per upload: {list(counts.values())}", flush=True)
    once = sum(1 for n in counts.values() if n == 1)
    return Row("listener stopped, 3 uploads", 3, once, 0, 3 - once, 0, 0, recover)


def weaker_production(stack: LiveStack, model_dir: Path) -> None:
    """Production becomes a model trained for one step on the same rows: a candidate that learned
    anything beats it on the holdout, so the scenario shows promotion after the fault."""
    registry = ModelRegistry.from_settings(stack.settings.storage)
    version = publish(registry, model_dir).version
    registry.promote(version, "chaos: a deliberately weak production for the candidate to beat")
    print(f"  production is now {version}, trained for one step", flush=True)


def pipeline_scenarios(root: Path, args: argparse.Namespace) -> list[Row]:
    rows = []
    weak = trained_model(root / "weak", steps=1)
    with (
        live_stack(
            root,
            queues=("train", "evaluate"),
            training_profile="quick",
            checkpoint_every_steps=max(1, args.steps // 4),
            pipeline_max_steps=args.steps,
            restart_backoff_s=0.5,
        ) as stack,
        restarting(stack),
    ):
        first = max(2, args.steps // 4 + 2)
        rows.append(
            pipeline_fault(
                stack,
                "train worker SIGKILLed",
                "incoming/chaos-train-kill/archive.zip",
                first,
                lambda: signal_group(stack, "worker-train", signal.SIGKILL),
                args,
            )
        )

        def s3_away() -> None:
            signal_group(stack, "s3", signal.SIGSTOP)
            time.sleep(30)
            signal_group(stack, "s3", signal.SIGCONT)

        weaker_production(stack, weak)
        rows.append(
            pipeline_fault(
                stack,
                "S3 stopped 30 s in training",
                "incoming/chaos-s3/archive.zip",
                1,
                s3_away,
                args,
                must_promote=True,
            )
        )
        rows.append(listener_stop(stack, args))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--deadline-s", type=float, default=240.0, help="most seconds of load")
    parser.add_argument("--steps", type=int, default=40, help="training steps of a pipeline")
    parser.add_argument("--only", choices=["predict", "pipeline"], default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"CPU: {cpu_line()}", flush=True)
    rows = []
    if args.only in (None, "predict"):
        with (
            tempfile.TemporaryDirectory(prefix="agnews-chaos-") as tmp,
            watched_stack(Path(tmp)) as stack,
        ):
            rows.append(scenario(stack, "predict worker SIGKILLed", "worker-predict-2", args))
            rows.append(scenario(stack, "redis-server SIGKILLed", "redis", args))
    if args.only in (None, "pipeline"):
        with tempfile.TemporaryDirectory(prefix="agnews-chaos-") as tmp:
            rows.extend(pipeline_scenarios(Path(tmp), args))
    print()
    print(f"CPU: {cpu_line()}")
    print(HEADER)
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    main()
