"""Logs as JSON lines, one record per line, from every process and every library logging through
the standard library: each record names its process and carries the job, task and model version
it concerns (bound with `bound`, or given as `extra`), so that one job can be followed across the
gateway and the workers. On a terminal the same records render as readable lines."""

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, MutableMapping
from functools import partial
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

from shared.settings import RunSettings

# What a record may carry besides its message, in the order a reader looks for them.
CONTEXT = ("job_id", "task", "version")


def _named(process: str) -> Processor:
    def add_process(logger: Any, method: str, event: EventDict) -> EventDict:
        event.setdefault("process", process)
        return event

    return add_process


def _in_order(logger: Any, method: str, event: EventDict) -> EventDict:
    """The fields a reader scans first, first."""
    first = ("timestamp", "level", "process", "logger", *CONTEXT, "event")
    return {
        **{name: event[name] for name in first if name in event},
        **{name: value for name, value in event.items() if name not in first},
    }


def _renderer(run: RunSettings) -> Processor:
    console = run.log_format == "console" or (run.log_format == "auto" and sys.stderr.isatty())
    if console:
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    return structlog.processors.JSONRenderer(serializer=partial(json.dumps, ensure_ascii=False))


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes, not what it was when configured."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def configure_logging(run: RunSettings, process: str) -> logging.Logger:
    """Every record of this process, through the root logger, to stderr."""
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(allow=CONTEXT),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _named(process),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _in_order,
            _renderer(run),
        ],
    )
    handler = _Stderr()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(run.log_level.upper())
    structlog.configure(
        processors=[*chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return logging.getLogger(process)


@contextlib.contextmanager
def bound(**context: str | None) -> Iterator[None]:
    """Records logged in this block (in this thread or task) carry `context`."""
    given = {name: value for name, value in context.items() if value is not None}
    with structlog.contextvars.bound_contextvars(**given):
        yield


def readable(line: str, *, colors: bool = False) -> str:
    """A JSON log line as a console line (other lines as they are)."""
    try:
        record: MutableMapping[str, Any] = json.loads(line)
    except ValueError:
        return line.rstrip("\n")
    if not isinstance(record, dict) or "event" not in record:
        return line.rstrip("\n")
    return str(structlog.dev.ConsoleRenderer(colors=colors)(None, "", record))
