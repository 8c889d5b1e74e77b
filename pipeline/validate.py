"""The rules a dataset must pass before anything trains on it, and the report of how it did.

Validation holds no rows: each row is counted and its text hashed (8 bytes), so an archive is
validated as it streams out of the zip (`validate_archive`), in memory bounded by its row count.
Texts are compared by the hash of their cleaned form, the same text `clean_text` makes for
training: between test.csv and train.csv, and between train.csv and the promotion holdout.
"""

import hashlib
from array import array
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from math import floor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from pipeline.ingest import (
    BAD_ROW_RULES,
    SPLITS,
    Dialect,
    RawDataset,
    Row,
    RowProblem,
    Rule,
    stream_archive,
)
from shared.contracts.errors import DatasetInvalid
from shared.contracts.labels import LABELS
from shared.settings import Settings

TextIds = NDArray[np.uint64]


class ValidationReport(BaseModel):
    """JSON-serialisable: stored beside the dataset and sent to the job's event stream."""

    accepted: bool
    dataset_sha256: str
    archive_bytes: int
    dialect: dict[str, str]
    rows: dict[str, int]
    rows_per_class: dict[str, dict[str, int]]
    bad_rows: dict[str, int]
    duplicates: dict[str, int]
    conflicting_duplicates: dict[str, int]
    empty_texts: dict[str, int]
    over_long_texts: dict[str, int]
    train_test_overlap: int
    test_in_train_fraction: float = 0.0
    holdout_sha256: str | None = None
    holdout_rows: int | None = None
    holdout_overlap: int | None = None
    problems: list[dict[str, Any]]
    problems_total: int
    errors: list[str]
    warnings: list[str]


def text_id(text: str) -> int:
    """A 62-bit hash of a cleaned text: equal texts, equal ids."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


@dataclass(frozen=True)
class HoldoutTexts:
    """The promotion holdout as validation compares it: its sha256, rows and distinct text ids."""

    sha256: str
    rows: int
    texts: TextIds

    @classmethod
    def of(cls, sha256: str, rows: Iterable[Row]) -> "HoldoutTexts":
        ids = [text_id(row.text) for row in rows]
        return cls(sha256, len(ids), np.unique(np.array(ids, dtype=np.uint64)))


class SplitFacts:
    """What validation needs of one CSV, gathered row by row (a RowSink): counts, the first
    problems, and one 8-byte key per row (text id and label) until `finish` sorts them."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.dialect: str = Dialect.ORIGINAL
        self.rows = 0
        self.counts = [0] * len(LABELS)
        self.over_long = 0
        self.bad = 0
        self.first_bad = ""
        self.empty = 0
        self.first_empty_line = 0
        self.problems: list[RowProblem] = []
        self.problems_total = 0
        self.duplicates = 0
        self.conflicting = 0
        self.texts: TextIds = np.empty(0, dtype=np.uint64)
        self._keys = array("Q")
        self._max_chars = settings.limits.max_text_chars
        self._keep = settings.archive.report_max_problems

    def row(self, row: Row) -> None:
        self.rows += 1
        self.counts[row.label] += 1
        if len(row.text) > self._max_chars:
            self.over_long += 1
        self._keys.append(text_id(row.text) << 2 | row.label)

    def problem(self, problem: RowProblem) -> None:
        self.problems_total += 1
        if len(self.problems) < self._keep:
            self.problems.append(problem)
        if problem.rule in BAD_ROW_RULES:
            self.bad += 1
            self.first_bad = self.first_bad or problem.message
        elif problem.rule == Rule.EMPTY_TEXT:
            self.empty += 1
            self.first_empty_line = self.first_empty_line or problem.line

    @property
    def records(self) -> int:
        return self.rows + self.problems_total

    @property
    def per_class(self) -> dict[str, int]:
        return dict(zip(LABELS, self.counts, strict=True))

    def finish(self) -> "SplitFacts":
        """Sort the keys into distinct texts, duplicates and texts with conflicting labels."""
        keys = np.frombuffer(self._keys, dtype=np.uint64).copy()
        self._keys = array("Q")
        keys.sort()
        pairs = keys[_run_starts(keys)]
        del keys
        texts = pairs >> np.uint64(2)
        del pairs
        repeats = texts[1:] == texts[:-1]
        # a text with two labels or more is a run of equal ids among the distinct (text, label)
        self.conflicting = int(np.count_nonzero(repeats[1:] & ~repeats[:-1])) + int(
            bool(repeats[:1].any())
        )
        self.texts = texts[np.concatenate(([True], ~repeats))] if len(texts) else texts
        self.duplicates = self.rows - len(self.texts)
        return self


def _run_starts(sorted_ids: TextIds) -> NDArray[np.bool_]:
    starts = np.ones(len(sorted_ids), dtype=np.bool_)
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=starts[1:])
    return starts


def _shared(ids: TextIds, among: TextIds) -> int:
    """How many of the distinct sorted `ids` are in the sorted `among`."""
    if not len(ids) or not len(among):
        return 0
    at = np.minimum(np.searchsorted(among, ids), len(among) - 1)
    return int(np.count_nonzero(among[at] == ids))


def facts_of(
    rows: Iterable[Row], problems: Iterable[RowProblem], name: str, dialect: str, settings: Settings
) -> SplitFacts:
    facts = SplitFacts(name, settings)
    facts.dialect = dialect
    for row in rows:
        facts.row(row)
    for problem in problems:
        facts.problem(problem)
    return facts.finish()


def validate(
    dataset: RawDataset, settings: Settings, holdout: HoldoutTexts | None = None
) -> ValidationReport:
    """Validate a dataset already read into rows."""
    train, test = (
        facts_of(split.rows, split.problems, split.name, split.dialect, settings)
        for split in dataset.splits()
    )
    return report(train, test, dataset.sha256, dataset.archive_bytes, settings, holdout)


def validate_archive(
    path: Path, settings: Settings, holdout: HoldoutTexts | None = None
) -> ValidationReport:
    """Validate an archive as its rows stream out of the zip, holding none of them."""
    sinks = {name: SplitFacts(name, settings) for name in SPLITS}
    sha256, size = stream_archive(path, settings, sinks)
    train, test = (sinks[name].finish() for name in SPLITS)
    return report(train, test, sha256, size, settings, holdout)


def report(
    train: SplitFacts,
    test: SplitFacts,
    sha256: str,
    archive_bytes: int,
    settings: Settings,
    holdout: HoldoutTexts | None = None,
) -> ValidationReport:
    facts = (train, test)
    errors: list[str] = []
    warnings: list[str] = []
    for fact in facts:
        _check_rows(fact, settings, errors, warnings)
    for fact in facts:
        _check_classes(fact, settings, errors)
    if train.rows < settings.archive.min_train_rows:
        errors.append(
            f"train.csv has {train.rows} usable rows; at least "
            f"{settings.archive.min_train_rows} are needed to train"
        )
    overlap = _shared(test.texts, train.texts)
    fraction = overlap / len(test.texts) if len(test.texts) else 0.0
    if overlap and fraction >= settings.archive.max_test_in_train_fraction:
        errors.append(
            f"test.csv lies mostly inside train.csv: {overlap} of its {len(test.texts)} distinct "
            f"texts ({fraction:.1%}) also appear in train.csv, and at "
            f"{settings.archive.max_test_in_train_fraction:.0%} or more a test set measures "
            "memory, not accuracy; keep test.csv's rows out of train.csv"
        )
    elif overlap:
        warnings.append(
            f"{overlap} test.csv texts also appear in train.csv: accuracy on test.csv will read "
            "higher than on unseen news"
        )
    holdout_overlap = None
    if holdout is not None:
        holdout_overlap = _shared(holdout.texts, train.texts)
        allowed = floor(settings.archive.holdout_max_overlap_fraction * holdout.rows)
        if holdout_overlap > allowed:
            errors.append(
                f"train.csv holds {holdout_overlap} of the {holdout.rows} texts of the promotion "
                f"holdout (sha256 {holdout.sha256[:12]}, "
                f"{holdout_overlap / max(holdout.rows, 1):.1%}); at most {allowed} "
                f"({settings.archive.holdout_max_overlap_fraction:.0%}) may be there, since models "
                "are compared on the holdout: remove those rows from train.csv"
            )
    problems = [*train.problems, *test.problems]
    return ValidationReport(
        accepted=not errors,
        dataset_sha256=sha256,
        archive_bytes=archive_bytes,
        dialect={fact.name: fact.dialect for fact in facts},
        rows={fact.name: fact.rows for fact in facts},
        rows_per_class={fact.name: fact.per_class for fact in facts},
        bad_rows={fact.name: fact.bad for fact in facts},
        duplicates={fact.name: fact.duplicates for fact in facts},
        conflicting_duplicates={fact.name: fact.conflicting for fact in facts},
        empty_texts={fact.name: fact.empty for fact in facts},
        over_long_texts={fact.name: fact.over_long for fact in facts},
        train_test_overlap=overlap,
        test_in_train_fraction=round(fraction, 6),
        holdout_sha256=holdout.sha256 if holdout else None,
        holdout_rows=holdout.rows if holdout else None,
        holdout_overlap=holdout_overlap,
        problems=[asdict(problem) for problem in problems[: settings.archive.report_max_problems]],
        problems_total=train.problems_total + test.problems_total,
        errors=errors,
        warnings=warnings,
    )


def check(report: ValidationReport) -> None:
    """Raise DatasetInvalid, quoting the first error, unless the report accepts the dataset."""
    if report.accepted:
        return
    more = len(report.errors) - 1
    suffix = f" (and {_count(more, 'more problem')})" if more else ""
    raise DatasetInvalid(report.errors[0] + suffix, details={"report": report.model_dump()})


def _check_rows(
    fact: SplitFacts, settings: Settings, errors: list[str], warnings: list[str]
) -> None:
    name, bad = fact.name, fact.bad
    records = fact.records
    allowed = min(
        settings.archive.max_bad_rows, floor(settings.archive.max_bad_row_fraction * records)
    )
    if bad > allowed:
        errors.append(
            f"{fact.first_bad} ({name} has {_count(bad, 'unreadable row')}; at most {allowed} of "
            f"its {records} may be dropped)"
        )
    elif bad:
        warnings.append(
            f"{name}: dropped {_count(bad, 'unreadable row')}, the first: {fact.first_bad}"
        )
    if fact.empty:
        warnings.append(
            f"{name}: dropped {_count(fact.empty, 'row')} whose title and description "
            f"are empty (the first on line {fact.first_empty_line})"
        )
    if fact.duplicates:
        conflicting = f"; their labels disagree for {_count(fact.conflicting, 'text')}"
        warnings.append(
            f"{name}: {_count(fact.duplicates, 'row')} repeat an earlier row's text exactly"
            + (conflicting if fact.conflicting else "")
        )
    if fact.over_long:
        warnings.append(
            f"{name}: {_count(fact.over_long, 'text')} longer than "
            f"{settings.limits.max_text_chars:,} characters; the model reads only their beginning"
        )
    counts = fact.per_class
    smallest, largest = min(counts, key=counts.__getitem__), max(counts, key=counts.__getitem__)
    if (
        counts[smallest]
        and counts[largest] > settings.archive.max_class_imbalance * counts[smallest]
    ):
        warnings.append(
            f"{name}: classes are imbalanced, {counts[largest]} rows of {largest} against "
            f"{counts[smallest]} of {smallest} "
            f"(more than {settings.archive.max_class_imbalance:g}:1)"
        )


def _check_classes(fact: SplitFacts, settings: Settings, errors: list[str]) -> None:
    for index, (label, count) in enumerate(fact.per_class.items()):
        if count < settings.archive.min_class_rows:
            has = "no rows" if count == 0 else f"only {count} rows"
            errors.append(
                f"{fact.name} has {has} of class {index + 1} ({label}); every class needs "
                f"at least {settings.archive.min_class_rows}"
            )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
