"""A process's output kept in size-bounded files: NAME.log, rolled over to NAME.log.1 (and the
older ones along to .2, .3, ...) when it passes `max_bytes`, or when the process starts again;
at most `backups` old files are kept."""

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class LogLimits:
    max_bytes: int = 10 * 1024**2
    backups: int = 3


class RotatingLog:
    def __init__(self, path: Path, limits: LogLimits) -> None:
        self.path = path
        self.limits = limits
        self._file: IO[bytes] | None = None
        self._size = 0
        self._lock = threading.Lock()

    def open(self) -> "RotatingLog":
        """Start a fresh file; what the last run wrote is NAME.log.1."""
        with self._lock:
            self._roll()
        return self

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._size and self._size + len(data) > self.limits.max_bytes:
                self._roll()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            self._size += len(data)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        backups = self.limits.backups
        self._numbered(backups).unlink(missing_ok=True)
        for number in range(backups - 1, 0, -1):
            if self._numbered(number).exists():
                self._numbered(number).replace(self._numbered(number + 1))
        if self.path.exists():
            if backups:
                self.path.replace(self._numbered(1))
            else:
                self.path.unlink()
        self._file = self.path.open("ab")
        self._size = 0

    def _numbered(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")


def pump(source: IO[bytes], log: RotatingLog, name: str) -> threading.Thread:
    """Copy a process's output, line by line, into its log until the output ends."""

    def copy() -> None:
        for line in iter(source.readline, b""):
            log.write(line)
        source.close()

    thread = threading.Thread(target=copy, name=f"log-{name}", daemon=True)
    thread.start()
    return thread
