"""`python -m stack logs`: every process's log, merged in time order and readable; with `--job`,
only the records of one job, however many processes it crossed."""

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.logs import readable


@dataclass(frozen=True)
class Line:
    process: str
    text: str
    record: dict[str, Any] | None

    @property
    def timestamp(self) -> str:
        return str((self.record or {}).get("timestamp", ""))

    def about(self, job_id: str) -> bool:
        return self.record is not None and self.record.get("job_id") == job_id


def parse(process: str, text: str) -> Line:
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    is_record = isinstance(record, dict) and "event" in record
    return Line(process, text.rstrip("\n"), record if is_record else None)


def log_files(log_dir: Path, names: Iterable[str]) -> list[Path]:
    wanted = set(names)
    return sorted(path for path in log_dir.glob("*.log") if not wanted or path.stem in wanted)


def read_lines(paths: Iterable[Path]) -> list[Line]:
    """Every line of every file, in time order; a line that is not a record (a traceback printed
    by hand, another program's log) stays after the record before it."""
    timed: list[tuple[str, int, Line]] = []
    for path in paths:
        last = ""
        for number, text in enumerate(path.read_text(errors="replace").splitlines()):
            line = parse(path.stem, text)
            last = line.timestamp or last
            timed.append((last, number, line))
    timed.sort(key=lambda entry: (entry[0], entry[2].process, entry[1]))
    return [line for _, _, line in timed]


def show(line: Line, colors: bool) -> str:
    if line.record is not None:
        return readable(line.text, colors=colors)
    return f"{line.process}: {line.text}"


def follow(paths: list[Path], poll_s: float = 0.5) -> Iterator[Line]:
    """Lines appended to the files from now on."""
    offsets = {path: path.stat().st_size for path in paths}
    while True:
        for path in paths:
            with path.open(errors="replace") as file:
                file.seek(offsets[path])
                for text in file:
                    yield parse(path.stem, text)
                offsets[path] = file.tell()
        time.sleep(poll_s)


def main(argv: list[str], log_dir: Path) -> None:
    parser = argparse.ArgumentParser(prog="python -m stack logs", description=__doc__)
    parser.add_argument("names", nargs="*", help="processes (gateway, worker-train-1, ...)")
    parser.add_argument("--job", help="only the records of this job")
    parser.add_argument("--follow", "-f", action="store_true", help="go on with new lines")
    args = parser.parse_args(argv)
    paths = log_files(log_dir, args.names)
    if not paths:
        sys.exit(f"no logs under {log_dir} (is the stack started there?)")
    colors = sys.stdout.isatty()
    lines: Iterable[Line] = read_lines(paths)
    if args.follow:
        lines = _then(lines, follow(paths))
    for line in lines:
        if args.job is None or line.about(args.job):
            print(show(line, colors), flush=True)


def _then(first: Iterable[Line], second: Iterator[Line]) -> Iterator[Line]:
    yield from first
    yield from second
