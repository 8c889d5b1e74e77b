import json
from pathlib import Path

import pytest

from pipeline.ingest import RawDataset, read_archive
from pipeline.validate import HoldoutTexts, ValidationReport, check, validate, validate_archive
from shared.contracts.errors import DatasetInvalid
from shared.settings import Settings
from testkit.archives import REAL_ARCHIVE, Record, make_archive, mini_records


@pytest.fixture
def local() -> Settings:
    return Settings(s3_endpoint_url=None)


def dataset(
    tmp_path: Path,
    settings: Settings,
    train: list[Record] | None = None,
    test: list[Record] | None = None,
) -> RawDataset:
    return read_archive(make_archive(tmp_path / "archive.zip", train, test), settings)


def of_class(records: list[Record], klass: str) -> list[Record]:
    return [record for record in records if record[0] == klass]


def without_class(records: list[Record], klass: str) -> list[Record]:
    return [record for record in records if record[0] != klass]


def test_accepts_archive_mini(tmp_path: Path, local: Settings) -> None:
    data = dataset(tmp_path, local)
    report = validate(data, local)
    check(report)
    assert report.accepted
    assert report.errors == []
    assert report.dataset_sha256 == data.sha256
    assert report.dialect == {"train.csv": "kaggle", "test.csv": "kaggle"}
    assert report.rows == {"train.csv": 400, "test.csv": 80}
    assert report.rows_per_class["test.csv"] == {
        "World": 20,
        "Sports": 20,
        "Business": 20,
        "Sci/Tech": 20,
    }
    assert report.problems == []
    assert report.problems_total == 0
    assert ValidationReport.model_validate_json(report.model_dump_json()) == report


def test_accepts_the_real_archive(local: Settings) -> None:
    report = validate(read_archive(REAL_ARCHIVE, local), local)
    assert report.accepted, report.errors
    assert report.rows == {"train.csv": 33_120, "test.csv": 4_000}
    assert set(report.rows_per_class["train.csv"].values()) == {8_280}
    assert report.dialect == {"train.csv": "original", "test.csv": "original"}
    json.dumps(report.model_dump())


def test_rejects_a_bad_row_beyond_the_tolerance_quoting_it(tmp_path: Path, local: Settings) -> None:
    train = mini_records("train.csv")
    train[41][0] = "7"
    train[99][0] = "x"
    report = validate(dataset(tmp_path, local, train=train), local)
    assert not report.accepted
    first = 'train.csv line 43: class index "7" is not one of 1..4'
    assert report.errors == [
        f"{first} (train.csv has 2 unreadable rows; at most 0 of its 400 may be dropped)"
    ]
    assert report.bad_rows == {"train.csv": 2, "test.csv": 0}
    assert report.problems[0] == {
        "file": "train.csv",
        "line": 43,
        "rule": "class_out_of_range",
        "message": first,
    }
    with pytest.raises(DatasetInvalid, match=f"^{first} ") as caught:
        check(report)
    assert caught.value.details["report"]["accepted"] is False
    assert caught.value.code == "dataset_invalid"


def test_drops_a_few_bad_rows_with_a_warning(tmp_path: Path, local: Settings) -> None:
    tolerant = local.replace(max_bad_row_fraction=0.01)
    train = mini_records("train.csv")
    train[0][0] = "0"
    train[1][0] = "5"
    report = validate(dataset(tmp_path, tolerant, train=train), tolerant)
    assert report.accepted
    assert report.rows["train.csv"] == 398
    assert report.warnings == [
        'train.csv: dropped 2 unreadable rows, the first: train.csv line 2: class index "0" is '
        "not one of 1..4"
    ]


def test_rejects_a_class_missing_from_test_csv(tmp_path: Path, local: Settings) -> None:
    test = without_class(mini_records("test.csv"), "3")
    report = validate(dataset(tmp_path, local, test=test), local)
    assert report.errors == [
        "test.csv has no rows of class 3 (Business); every class needs at least 10"
    ]
    with pytest.raises(DatasetInvalid, match=r"^test.csv has no rows of class 3 \(Business\)"):
        check(report)


def test_rejects_a_class_with_too_few_rows(tmp_path: Path, local: Settings) -> None:
    train = mini_records("train.csv")
    train = without_class(train, "2") + of_class(train, "2")[:4]
    report = validate(dataset(tmp_path, local, train=train), local)
    assert report.errors == [
        "train.csv has only 4 rows of class 2 (Sports); every class needs at least 10"
    ]
    assert (
        "train.csv: classes are imbalanced, 100 rows of World against 4 of Sports"
        in (report.warnings[0])
    )


def test_rejects_too_few_training_rows(tmp_path: Path, local: Settings) -> None:
    demanding = local.replace(min_train_rows=1_000)
    report = validate(dataset(tmp_path, demanding), demanding)
    assert report.errors == ["train.csv has 400 usable rows; at least 1000 are needed to train"]


def test_lists_every_error_and_counts_the_rest(tmp_path: Path, local: Settings) -> None:
    train = without_class(mini_records("train.csv"), "4")
    test = without_class(mini_records("test.csv"), "1")
    report = validate(dataset(tmp_path, local, train=train, test=test), local)
    assert len(report.errors) == 2
    with pytest.raises(
        DatasetInvalid, match=r"\(Sci/Tech\); every class .* \(and 1 more problem\)$"
    ):
        check(report)


def test_warns_about_duplicates_empty_long_texts_and_overlap(
    tmp_path: Path, local: Settings
) -> None:
    settings = local.replace(max_text_chars=250)
    train = mini_records("train.csv")
    test = mini_records("test.csv")
    train += [train[0], train[1], [("2" if train[2][0] != "2" else "1"), *train[2][1:]]]
    train += [["1", " ", ""]]
    test += train[:5]
    report = validate(dataset(tmp_path, settings, train=train, test=test), settings)
    assert report.accepted
    assert report.duplicates == {"train.csv": 3, "test.csv": 0}
    assert report.conflicting_duplicates == {"train.csv": 1, "test.csv": 0}
    assert report.empty_texts == {"train.csv": 1, "test.csv": 0}
    assert report.train_test_overlap == 5
    assert report.over_long_texts["train.csv"] > 0
    assert report.rows["train.csv"] == 403
    assert report.problems_total == 1
    assert report.warnings[:2] == [
        "train.csv: dropped 1 row whose title and description are empty (the first on line 405)",
        "train.csv: 3 rows repeat an earlier row's text exactly; their labels disagree for 1 text",
    ]
    assert report.warnings[-1].startswith("5 test.csv texts also appear in train.csv")
    assert any("longer than 250 characters" in warning for warning in report.warnings)


def test_caps_the_problems_it_lists(tmp_path: Path, local: Settings) -> None:
    settings = local.replace(report_max_problems=3)
    train = mini_records("train.csv")
    for record in train[:5]:
        record[0] = "9"
    report = validate(dataset(tmp_path, settings, train=train), settings)
    assert [problem["line"] for problem in report.problems] == [2, 3, 4]
    assert report.problems_total == 5


def test_streaming_validation_reports_what_reading_every_row_does(
    tmp_path: Path, local: Settings
) -> None:
    settings = local.replace(max_text_chars=250, report_max_problems=2)
    train = mini_records("train.csv")
    test = mini_records("test.csv")
    train += [train[0], train[1], [("2" if train[2][0] != "2" else "1"), *train[2][1:]]]
    train += [["1", " ", ""], ["9", "a", "b"], ["x", "c", "d"]]
    test += train[:5]
    path = make_archive(tmp_path / "archive.zip", train, test)
    holdout = HoldoutTexts.of("f" * 64, read_archive(path, settings).test.rows[:10])
    streamed = validate_archive(path, settings, holdout)
    assert streamed == validate(read_archive(path, settings), settings, holdout)
    assert streamed.conflicting_duplicates == {"train.csv": 1, "test.csv": 0}
    assert streamed.problems_total == 3
    assert len(streamed.problems) == 2


def with_train_texts(records: list[Record], count: int) -> list[Record]:
    """test.csv of `count` train.csv texts (relabelled, which does not matter) and the rest of
    archive_mini's test.csv: 80 rows."""
    train = mini_records("train.csv")
    shared = [[str(index % 4 + 1), *train[index][1:]] for index in range(count)]
    return shared + records[count:]


@pytest.mark.parametrize(("inside", "accepted"), [(39, True), (40, False), (80, False)])
def test_refuses_a_test_set_mostly_inside_train(
    tmp_path: Path, local: Settings, inside: int, accepted: bool
) -> None:
    test = with_train_texts(mini_records("test.csv"), inside)
    report = validate(dataset(tmp_path, local, test=test), local)
    assert report.train_test_overlap == inside
    assert report.test_in_train_fraction == inside / 80
    assert report.accepted is accepted
    if accepted:
        assert report.warnings[-1].startswith(f"{inside} test.csv texts also appear")
    else:
        assert report.errors == [
            f"test.csv lies mostly inside train.csv: {inside} of its 80 distinct texts "
            f"({inside / 80:.1%}) also appear in train.csv, and at 50% or more a test set "
            "measures memory, not accuracy; keep test.csv's rows out of train.csv"
        ]
        with pytest.raises(DatasetInvalid, match=r"test\.csv lies mostly inside train\.csv"):
            check(report)


def test_the_test_in_train_threshold_is_a_setting(tmp_path: Path, local: Settings) -> None:
    strict = local.replace(max_test_in_train_fraction=0.1)
    test = with_train_texts(mini_records("test.csv"), 8)
    assert not validate(dataset(tmp_path, strict, test=test), strict).accepted
    assert validate(dataset(tmp_path, local, test=test), local).accepted


@pytest.mark.parametrize(("overlap", "accepted"), [(0, True), (4, True), (5, False)])
def test_refuses_a_train_set_overlapping_the_holdout(
    tmp_path: Path, local: Settings, overlap: int, accepted: bool
) -> None:
    settings = local.replace(holdout_max_overlap_fraction=0.05)
    holdout_records = mini_records("test.csv")
    holdout_rows = read_archive(make_archive(tmp_path / "h.zip", test=holdout_records), settings)
    holdout = HoldoutTexts.of("ab" * 32, holdout_rows.test.rows)
    train = mini_records("train.csv") + holdout_records[:overlap]
    report = validate(dataset(tmp_path, settings, train=train), settings, holdout)
    assert report.holdout_overlap == overlap
    assert (report.holdout_sha256, report.holdout_rows) == ("ab" * 32, 80)
    assert report.accepted is accepted
    if not accepted:
        assert report.errors == [
            f"train.csv holds {overlap} of the 80 texts of the promotion holdout (sha256 "
            f"abababababab, {overlap / 80:.1%}); at most 4 (5%) may be there, since models are "
            "compared on the holdout: remove those rows from train.csv"
        ]
    # by default more than 1% of the holdout's 80 rows, that is any, is too many
    default = validate(dataset(tmp_path, local, train=train), local, holdout)
    assert default.accepted is (overlap == 0)
