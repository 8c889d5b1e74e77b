"""Peak memory of ingesting the largest archive the settings accept.

    .venv/bin/python bench/ingest_memory.py                # real rows, repeated with variations
    .venv/bin/python bench/ingest_memory.py --shape short  # the shortest distinct rows instead

Builds an archive.zip whose train.csv and test.csv together hold as many CSV bytes as
`max_csv_bytes` allows (the ingest memory budget, AGNEWS_INGEST_MEMORY_BUDGET_BYTES): train.csv
from data/archive.zip's rows, each repeat with a variation so that its text is new, test.csv
data/archive.zip's own. A fresh process then validates it as the ingest stage does (streaming,
against a holdout of data/archive.zip's test rows) and reports its peak RSS (ru_maxrss); another
process that only imports the same modules gives the baseline.
"""

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from pipeline.ingest import max_csv_bytes
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
REAL_ARCHIVE = ROOT / "data" / "archive.zip"

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from pipeline.ingest import read_csv
from pipeline.validate import HoldoutTexts, validate_archive
from shared.settings import Settings
settings = Settings()
if sys.argv[1] != "-":
    started = time.monotonic()
    holdout_rows = read_csv(Path(sys.argv[2]), settings).rows
    holdout = HoldoutTexts.of("bench", holdout_rows)
    del holdout_rows
    report = validate_archive(Path(sys.argv[1]), settings, holdout)
    seconds = time.monotonic() - started
    out = {"accepted": report.accepted, "rows": report.rows, "errors": report.errors[:2],
           "duplicates": report.duplicates, "holdout_overlap": report.holdout_overlap,
           "seconds": round(seconds, 1)}
else:
    out = {}
out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(out))
"""


def _records(name: str) -> list[list[str]]:
    with zipfile.ZipFile(REAL_ARCHIVE) as archive:
        text = archive.read(name).decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


def _line(record: list[str]) -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, quoting=csv.QUOTE_ALL).writerow(record)
    return out.getvalue().encode()


def build(path: Path, limit: int, shape: str) -> tuple[int, int]:
    """Write the archive; the CSV bytes and train rows it holds."""
    test_records = _records("test.csv")
    test = b"".join(_line(record) for record in test_records)
    room = limit - len(test)
    rows = 0
    written = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("test.csv", test)
        with archive.open("train.csv", "w", force_zip64=True) as train:
            source = _records("train.csv")
            repeat = 0
            while True:
                for record in source:
                    if shape == "short":
                        line = f"{rows % 4 + 1},{rows:x},\n".encode()
                    else:
                        klass, title, description = record
                        line = _line([klass, title, f"{description} (variant {repeat})"])
                    if written + len(line) > room:
                        return written + len(test), rows
                    train.write(line)
                    written += len(line)
                    rows += 1
                repeat += 1


def measure(archive: str, holdout: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, archive, holdout],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("real", "short"), default="real")
    args = parser.parse_args()
    settings = Settings()
    limit = max_csv_bytes(settings)
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "archive.zip"
        holdout = Path(scratch) / "holdout.csv"
        holdout.write_bytes(b"".join(_line(record) for record in _records("test.csv")))
        started = time.monotonic()
        csv_bytes, rows = build(archive, limit, args.shape)
        built = time.monotonic() - started
        baseline = measure("-", "-")
        ingest = measure(str(archive), str(holdout))
        print(
            json.dumps(
                {
                    "shape": args.shape,
                    "budget_bytes": settings.archive.ingest_memory_budget_bytes,
                    "max_csv_bytes": limit,
                    "csv_bytes": csv_bytes,
                    "archive_bytes": archive.stat().st_size,
                    "train_rows": rows,
                    "build_seconds": round(built, 1),
                    "baseline_peak_rss_mb": round(int(str(baseline["peak_rss_bytes"])) / 1e6, 1),
                    "ingest_peak_rss_mb": round(int(str(ingest["peak_rss_bytes"])) / 1e6, 1),
                    "ingest": ingest,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
