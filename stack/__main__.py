"""`python -m stack`: start the whole system locally; Ctrl-C stops it all.
`python -m stack logs`: read what its processes logged."""

import argparse
import os
import signal
import sys
from types import FrameType

from client.base_models import MPNET
from shared.logs import configure_logging
from shared.settings import Settings
from stack import logs
from stack.local import local_settings, start_stack
from stack.processes import GaveUp


def _summary(settings: Settings, port: int) -> str:
    logs = (settings.run.data_dir / "logs").resolve()
    storage = settings.storage
    drop = f"s3://{storage.bucket}/{storage.incoming_prefix}"
    mpnet = MPNET.destination(settings.run.data_dir).resolve()
    larger = f"base_model {mpnet}" if mpnet.is_dir() else "make fetch-mpnet adds it"
    return "\n".join(
        [
            "",
            "AG News stack is up:",
            f"  web app and API   http://localhost:{port}/",
            f"  API document      http://localhost:{port}/openapi.json",
            f"  Redis             {settings.redis.url}",
            f"  S3 store          {storage.endpoint_url}  bucket {storage.bucket}",
            f"  drop archive.zip  {drop}...archive.zip",
            f"  logs              {logs}/*.log",
            f"  all-mpnet-base-v2 {larger}",
            "A process that exits is restarted; Ctrl-C stops everything.",
            "",
        ]
    )


def main() -> None:
    if sys.argv[1:2] == ["logs"]:
        logs.main(sys.argv[2:], (local_settings().run.data_dir / "logs").resolve())
        return
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description=__doc__,
        epilog="`python -m stack logs [NAME ...] [--job JOB_ID] [-f]` prints the processes' logs.",
    )
    parser.add_argument("--port", type=int, default=None, help="gateway port (default 8080)")
    parser.add_argument(
        "--predict-workers",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="predict worker processes, one torch thread each (default: one per core, up to 4)",
    )
    args = parser.parse_args()
    settings = local_settings()
    port = args.port or settings.gateway.port
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    configure_logging(settings.run, "stack")
    supervisor = start_stack(settings, gateway_port=port, predict_workers=args.predict_workers)
    print(_summary(settings, port), flush=True)
    gave_up = False
    try:
        supervisor.watch(lambda: stopping)
    except GaveUp as exc:
        gave_up = True
        print(f"stopping: {exc}", file=sys.stderr, flush=True)
    finally:
        print("stopping the stack ...", flush=True)
        supervisor.stop()
    sys.exit(1 if gave_up else 0)


if __name__ == "__main__":
    main()
