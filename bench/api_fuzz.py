"""Benchmark: schemathesis over the gateway's /openapi.json, many examples per operation.

Starts its own redis-server and moto S3 server and serves the gateway (open, rate limits out of
the way) on uvicorn in this process; for every documented operation (the event stream aside)
generates valid (positive) and invalid (negative) requests from the document, sends them, and
checks each answer: not a 5xx, status code, content type and body as documented. Prints the
requests tried, 5xx answers and mismatches with the document.

    .venv/bin/python bench/api_fuzz.py --examples 100
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from shared.settings import Settings
from shared.storage import s3_client
from testkit.fuzz import fuzz
from testkit.gateway import serve
from testkit.servers import moto_server, redis_server

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="per operation and mode")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as scratch,
        redis_server(Path(scratch)) as redis_url,
        moto_server() as s3_url,
    ):
        settings = Settings(
            redis_url=redis_url,
            s3_endpoint_url=s3_url,
            s3_access_key_id="testing",
            s3_secret_access_key="testing",
            bucket="fuzz-bench",
            data_dir=Path(scratch) / "data",
            predict_wait_s=0.05,
            rate_predict_burst=10**9,
            rate_jobs_burst=10**9,
        )
        s3_client(settings.storage).create_bucket(Bucket=settings.storage.bucket)
        with serve(settings) as gateway:
            started = time.perf_counter()
            report = fuzz(gateway.url, args.examples, seed=args.seed)
            elapsed = time.perf_counter() - started
    summary = {
        "operations": report.operations,
        "examples_per_operation_and_mode": args.examples,
        "requests": report.requests,
        "server_errors_5xx": report.server_errors,
        "mismatches": report.mismatches,
        "statuses": dict(sorted(report.statuses.items())),
        "seconds": round(elapsed, 1),
    }
    print(json.dumps(summary, indent=2))
    for failure in report.failures[:20]:
        print("FAIL", failure, file=sys.stderr)
    return 0 if report.server_errors == 0 and report.mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
