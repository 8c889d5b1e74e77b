"""A batch-prediction job's input file, read whole and checked before any row is classified.

Three layouts: a CSV in the AG News layout (class index, title, description; the class may be
empty, or the column absent: title, description), a CSV with a `text` header (and optionally a
`label` or `class index` column), or JSON lines each with `text` (and optionally `label`: a label
name or a class index 1..4). The file is read through a byte counter that stops at
`batch_max_bytes`, as UTF-8; every row's text is cleaned as ingest cleans it. Any problem fails
the job with the first few problems' line numbers: a partial output is never presented as whole.
"""

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pipeline.text import clean_text
from shared.contracts.errors import DatasetInvalid, PayloadTooLarge
from shared.contracts.labels import LABELS

SHOWN_PROBLEMS = 5
_CLASS_IDS = {str(index + 1): index for index in range(len(LABELS))} | {
    label.lower(): index for index, label in enumerate(LABELS)
}
_AG_HEADERS = (("class index", "title", "description"), ("class_index", "title", "description"))
_TEXT_COLUMN = "text"
_LABEL_COLUMNS = ("label", "class index", "class_index", "class")


@dataclass(frozen=True, slots=True)
class BatchRow:
    line: int
    text: str
    label: int | None


class _Problems:
    def __init__(self, name: str) -> None:
        self.name = name
        self.found: list[str] = []
        self.count = 0

    def add(self, line: int, message: str) -> None:
        self.count += 1
        if len(self.found) < SHOWN_PROBLEMS:
            self.found.append(f"line {line}: {message}")

    def raise_any(self) -> None:
        if self.count:
            more = (
                f" (and {self.count - len(self.found)} more)" if self.count > SHOWN_PROBLEMS else ""
            )
            raise DatasetInvalid(
                f"{self.name}: {self.count} rows cannot be classified; "
                f"{'; '.join(self.found)}{more}. Nothing was classified: fix the file and submit "
                "it again",
                details={"rule": "batch_input", "problems": self.found},
            )


class Readable(Protocol):
    def read(self, amt: int | None = ..., /) -> bytes: ...


def read_batch_input(stream: Readable, name: str, max_bytes: int, max_rows: int) -> list[BatchRow]:
    """Every row of the file, or DatasetInvalid (PayloadTooLarge past `max_bytes`)."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{name} is larger than the {max_bytes:,} bytes a batch job reads; split it",
            details={"limit": max_bytes},
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetInvalid(f"{name} is UTF-16 text; save it as UTF-8", details={"rule": "utf8"})
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetInvalid(
            f"{name} is not UTF-8 (byte {exc.start}); save it as UTF-8",
            details={"rule": "utf8"},
        ) from None
    problems = _Problems(name)
    lower = name.lower()
    rows = list(
        _json_lines(text, problems) if lower.endswith((".jsonl", ".json")) else _csv(text, problems)
    )
    problems.raise_any()
    if not rows:
        raise DatasetInvalid(f"{name} holds no rows to classify", details={"rule": "empty"})
    if len(rows) > max_rows:
        raise PayloadTooLarge(
            f"{name} holds {len(rows):,} rows, more than the {max_rows:,} a batch job takes; "
            "split it",
            details={"limit": max_rows},
        )
    return rows


_NO_LABEL = -1


def _label(value: object, line: int, problems: _Problems) -> int | None:
    """A label id; _NO_LABEL where there is none; None after a problem."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return _NO_LABEL
    key = str(value).strip().lower()
    if key in _CLASS_IDS:
        return _CLASS_IDS[key]
    shown = key if len(key) <= 40 else key[:40] + "…"
    problems.add(line, f'label "{shown}" is none of {", ".join(LABELS)} or 1..{len(LABELS)}')
    return None


def _row(line: int, text: str, label: int | None, problems: _Problems) -> BatchRow | None:
    if label is None:
        return None
    if not text:
        problems.add(line, "the text is empty")
        return None
    return BatchRow(line, text, None if label == _NO_LABEL else label)


def _json_lines(text: str, problems: _Problems) -> Iterator[BatchRow]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.add(line, f"not a JSON object ({exc.msg})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            problems.add(line, 'expected an object with a string "text"')
            continue
        label = _label(record.get("label"), line, problems)
        if (row := _row(line, clean_text(record["text"]), label, problems)) is not None:
            yield row


def _csv(text: str, problems: _Problems) -> Iterator[BatchRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    layout: tuple[int | None, int, int | None] | None = None  # label, text or title, description
    line = 1
    try:
        for record in reader:
            first, line = line, reader.line_num + 1
            if not any(field.strip() for field in record):
                continue
            if layout is None:
                layout, is_header = _layout(record)
                if is_header:
                    continue
            row = _csv_row(record, layout, first, problems)
            if row is not None:
                yield row
    except csv.Error as exc:
        problems.add(line, f"unreadable CSV ({exc})")


def _layout(record: list[str]) -> tuple[tuple[int | None, int, int | None], bool]:
    names = [field.strip().lower() for field in record]
    if _TEXT_COLUMN in names:
        label = next((names.index(c) for c in _LABEL_COLUMNS if c in names), None)
        return (label, names.index(_TEXT_COLUMN), None), True
    for header in _AG_HEADERS:
        if sorted(names) == sorted(header):
            return (names.index(header[0]), names.index("title"), names.index("description")), True
    if names == ["title", "description"]:
        return (None, 0, 1), True
    return ((0, 1, 2) if len(record) == 3 else (None, 0, 1)), False


def _csv_row(
    record: list[str],
    layout: tuple[int | None, int, int | None],
    line: int,
    problems: _Problems,
) -> BatchRow | None:
    label_at, text_at, description_at = layout
    width = max(index for index in layout if index is not None) + 1
    if len(record) != width and not (description_at is None and len(record) >= width):
        expected = (
            "3 fields (class index, title, description) or 2 (title, description)"
            if description_at is not None
            else f"{width} fields, as the header"
        )
        problems.add(line, f"expected {expected}, found {len(record)}")
        return None
    label = _label(record[label_at], line, problems) if label_at is not None else _NO_LABEL
    description = record[description_at] if description_at is not None else ""
    return _row(line, clean_text(record[text_at], description), label, problems)
