"""How fast an upload starts its pipeline, on the local stack (real SeaweedFS, Redis, listener).

    .venv/bin/python bench/trigger.py --uploads 5

Starts Redis, the listener, SeaweedFS, the gateway and an evaluate-queue worker (which runs the
ingest task that marks a pipeline job running) on free ports, then puts archive.zip under the
incoming prefix N times, one after another. For each it prints the time from put_object returning
to the job being created and to its first `running` status event (both read from Redis's own
clocks: the job's created_at and its event's stream id), then p50 and max of each.
A negative time means SeaweedFS's filer notified the listener before its answer to the put
reached the client.
"""

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from shared.contracts.jobs import EventType, Job, JobType
from shared.jobstore import JobStore
from shared.storage import s3_client
from testkit.stack import live_stack

ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "archive_mini.zip"


def wait_for_job(store: JobStore, key: str, timeout_s: float) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job in store.recent(JobType.pipeline, limit=20):
            source = getattr(job.params, "source", None)
            if source is not None and source.key == key:
                return job
        time.sleep(0.005)
    raise TimeoutError(f"no pipeline job for {key} after {timeout_s}s")


def running_at(store: JobStore, job_id: str, timeout_s: float) -> float:
    """The epoch time of the job's `running` status event."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in store.events(job_id):
            if event.type is EventType.status and event.data.get("status") == "running":
                return int(event.id.split("-")[0]) / 1000
        time.sleep(0.005)
    raise TimeoutError(f"job {job_id} was not running after {timeout_s}s")


def summary(name: str, seconds: list[float]) -> str:
    return (
        f"{name:<24} p50 {statistics.median(seconds):.3f}s  max {max(seconds):.3f}s  "
        f"(n={len(seconds)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--no-worker", action="store_true", help="measure to job creation only")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    began = time.monotonic()
    queues = () if args.no_worker else ("evaluate",)
    created: list[float] = []
    running: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="agnews-bench-trigger-") as workdir,
        live_stack(Path(workdir), queues=queues) as stack,
    ):
        print(f"stack up in {time.monotonic() - began:.1f}s", flush=True)
        settings = stack.settings
        store = JobStore.from_settings(settings)
        s3 = s3_client(settings.storage)
        body = ARCHIVE.read_bytes()
        for index in range(args.uploads):
            key = f"{settings.storage.incoming_prefix}bench-{index}/archive.zip"
            s3.put_object(Bucket=settings.storage.bucket, Key=key, Body=body)
            uploaded = time.time()
            job = wait_for_job(store, key, args.timeout)
            created.append(job.created_at.timestamp() - uploaded)
            line = f"upload {index}: job {job.id} created after {created[-1]:.3f}s"
            if not args.no_worker:
                running.append(running_at(store, job.id, args.timeout) - uploaded)
                line += f", running after {running[-1]:.3f}s"
            print(line, flush=True)
    print(summary("upload -> job created", created))
    if running:
        print(summary("upload -> job running", running))
    print(f"measured at {datetime.now().isoformat(timespec='seconds')}")


if __name__ == "__main__":
    main()
