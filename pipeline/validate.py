"""The rules a dataset must pass before anything trains on it, and the report of how it did."""

from collections import Counter
from dataclasses import asdict, dataclass
from math import floor
from typing import Any

from pydantic import BaseModel

from pipeline.ingest import BAD_ROW_RULES, RawDataset, Rule, Split
from pipeline.labels import LABELS
from shared.errors import DatasetInvalid
from shared.settings import Settings


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
    problems: list[dict[str, Any]]
    problems_total: int
    errors: list[str]
    warnings: list[str]


@dataclass
class _Facts:
    split: Split
    bad: list[str]
    empty_lines: list[int]
    per_class: dict[str, int]
    duplicates: int
    conflicting: int
    over_long: int


def validate(dataset: RawDataset, settings: Settings) -> ValidationReport:
    facts = [_facts(split, settings) for split in dataset.splits()]
    errors: list[str] = []
    warnings: list[str] = []
    for fact in facts:
        _check_rows(fact, settings, errors, warnings)
    for fact in facts:
        _check_classes(fact, settings, errors)
    train_rows = len(dataset.train.rows)
    if train_rows < settings.min_train_rows:
        errors.append(
            f"train.csv has {train_rows} usable rows; at least {settings.min_train_rows} are "
            "needed to train"
        )
    train_texts = {row.text for row in dataset.train.rows}
    overlap = sum(1 for text in {row.text for row in dataset.test.rows} if text in train_texts)
    if overlap:
        warnings.append(
            f"{overlap} test.csv texts also appear in train.csv: accuracy on test.csv will read "
            "higher than on unseen news"
        )
    problems = [problem for split in dataset.splits() for problem in split.problems]
    return ValidationReport(
        accepted=not errors,
        dataset_sha256=dataset.sha256,
        archive_bytes=dataset.archive_bytes,
        dialect={fact.split.name: fact.split.dialect for fact in facts},
        rows={fact.split.name: len(fact.split.rows) for fact in facts},
        rows_per_class={fact.split.name: fact.per_class for fact in facts},
        bad_rows={fact.split.name: len(fact.bad) for fact in facts},
        duplicates={fact.split.name: fact.duplicates for fact in facts},
        conflicting_duplicates={fact.split.name: fact.conflicting for fact in facts},
        empty_texts={fact.split.name: len(fact.empty_lines) for fact in facts},
        over_long_texts={fact.split.name: fact.over_long for fact in facts},
        train_test_overlap=overlap,
        problems=[asdict(problem) for problem in problems[: settings.report_max_problems]],
        problems_total=len(problems),
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


def _facts(split: Split, settings: Settings) -> _Facts:
    counts = Counter(row.label for row in split.rows)
    labels: dict[str, set[int]] = {}
    for row in split.rows:
        labels.setdefault(row.text, set()).add(row.label)
    return _Facts(
        split=split,
        bad=[problem.message for problem in split.problems if problem.rule in BAD_ROW_RULES],
        empty_lines=[problem.line for problem in split.problems if problem.rule == Rule.EMPTY_TEXT],
        per_class={label: counts[index] for index, label in enumerate(LABELS)},
        duplicates=len(split.rows) - len(labels),
        conflicting=sum(1 for found in labels.values() if len(found) > 1),
        over_long=sum(1 for row in split.rows if len(row.text) > settings.max_text_chars),
    )


def _check_rows(fact: _Facts, settings: Settings, errors: list[str], warnings: list[str]) -> None:
    name, bad = fact.split.name, fact.bad
    records = len(fact.split.rows) + len(fact.split.problems)
    allowed = min(settings.max_bad_rows, floor(settings.max_bad_row_fraction * records))
    if len(bad) > allowed:
        errors.append(
            f"{bad[0]} ({name} has {_count(len(bad), 'unreadable row')}; at most {allowed} of its "
            f"{records} may be dropped)"
        )
    elif bad:
        warnings.append(
            f"{name}: dropped {_count(len(bad), 'unreadable row')}, the first: {bad[0]}"
        )
    if fact.empty_lines:
        warnings.append(
            f"{name}: dropped {_count(len(fact.empty_lines), 'row')} whose title and description "
            f"are empty (the first on line {fact.empty_lines[0]})"
        )
    if fact.duplicates:
        conflicting = f"; their labels disagree for {_count(fact.conflicting, 'text')}"
        warnings.append(
            f"{name}: {_count(fact.duplicates, 'row')} repeat an earlier row's text exactly"
            + (conflicting if fact.conflicting else "")
        )
    if fact.over_long:
        warnings.append(
            f"{name}: {_count(fact.over_long, 'text')} longer than {settings.max_text_chars:,} "
            "characters; the model reads only their beginning"
        )
    counts = fact.per_class
    smallest, largest = min(counts, key=counts.__getitem__), max(counts, key=counts.__getitem__)
    if counts[smallest] and counts[largest] > settings.max_class_imbalance * counts[smallest]:
        warnings.append(
            f"{name}: classes are imbalanced, {counts[largest]} rows of {largest} against "
            f"{counts[smallest]} of {smallest} (more than {settings.max_class_imbalance:g}:1)"
        )


def _check_classes(fact: _Facts, settings: Settings, errors: list[str]) -> None:
    for index, (label, count) in enumerate(fact.per_class.items()):
        if count < settings.min_class_rows:
            has = "no rows" if count == 0 else f"only {count} rows"
            errors.append(
                f"{fact.split.name} has {has} of class {index + 1} ({label}); every class needs "
                f"at least {settings.min_class_rows}"
            )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
