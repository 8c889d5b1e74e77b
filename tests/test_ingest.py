import gzip
import io
import json
import os
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from pipeline import ingest
from pipeline.ingest import (
    MIN_ROW_BYTES,
    SCAN_BYTES_PER_ROW,
    Dialect,
    Rule,
    fetch_archive,
    max_csv_bytes,
    read_archive,
)
from pipeline.text import clean_text
from pipeline.validate import validate
from shared.contracts.errors import DatasetInvalid, DatasetNotFound, PayloadTooLarge
from shared.contracts.labels import ID2LABEL, LABEL2ID, LABELS
from shared.settings import Settings
from shared.storage import s3_client
from testkit.archives import (
    MINI_ARCHIVE,
    REAL_ARCHIVE,
    csv_bytes,
    make_archive,
    make_zip,
    mini_records,
    patch_entry,
)


@pytest.fixture
def local() -> Settings:
    return Settings(s3_endpoint_url=None)


def test_labels_follow_the_csv_class_order() -> None:
    assert LABELS == ("World", "Sports", "Business", "Sci/Tech")
    assert ID2LABEL[2] == "Business"
    assert LABEL2ID["Sci/Tech"] == 3


# clean_text


@pytest.mark.parametrize(
    ("title", "description", "expected"),
    [
        ("Wisconsin #39;s rout", "", "Wisconsin's rout"),
        ("Oil", "prices surged past  #36;46\\a barrel", "Oil. prices surged past $46 a barrel"),
        (
            "Korea, improve image in Asia &lt;b&gt;...&lt;/b&gt;",
            "",
            "Korea, improve image in Asia ...",
        ),
        (
            "Apple",
            'Apple Computer Inc. &lt;A HREF="http://www.investor.reuters.com/q?t=AAPL.O"&gt;'
            "AAPL.O&lt;/A&gt; on Wednesday",
            "Apple. Apple Computer Inc. AAPL.O on Wednesday",
        ),
        # In AG News a backslash stands for a line break; `\n` is one before a word such as "new".
        (
            "Iran",
            "scrap its\\nuclear programme\\\\the rest",
            "Iran. scrap its nuclear programme the rest",
        ),
        ("Up", "bid \\$5.9 billion", "Up. bid $5.9 billion"),
        (
            "Row",
            "his  quot;inexperience quot; at Charles Schwab  amp; Co.",
            'Row. his "inexperience" at Charles Schwab & Co.',
        ),
        ("A &amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; claim", "", "A bold claim"),
        ("TORONTO  #x2014; Suspended", "", "TORONTO — Suspended"),
        ("Ranked #50; again", "", "Ranked #50; again"),
        ("Is it over?", "Yes.", "Is it over? Yes."),
        ('He said "no."', "Then left", 'He said "no." Then left'),
        ("  ", "\tonly\n a description ", "only a description"),
        ("", "", ""),
    ],
)
def test_clean_text_repairs_ag_news_quirks(title: str, description: str, expected: str) -> None:
    cleaned = clean_text(title, description)
    assert cleaned == expected
    assert clean_text(cleaned) == cleaned


def test_clean_text_is_idempotent_on_real_rows() -> None:
    for _, title, description in mini_records("train.csv"):
        cleaned = clean_text(title, description)
        assert clean_text(cleaned) == cleaned
        assert "#39;" not in cleaned
        assert "&lt;" not in cleaned


# Layouts and dialects


@pytest.mark.parametrize("dialect", list(Dialect))
def test_reads_each_csv_dialect(tmp_path: Path, local: Settings, dialect: Dialect) -> None:
    path = make_archive(tmp_path / "archive.zip", dialect=dialect)
    dataset = read_archive(path, local)
    first = 1 if dialect is Dialect.ORIGINAL else 2
    train = mini_records("train.csv")
    assert dataset.train.dialect == dialect
    assert dataset.test.dialect == dialect
    assert (len(dataset.train.rows), len(dataset.test.rows)) == (400, 80)
    assert dataset.train.problems == dataset.test.problems == []
    assert Counter(row.label for row in dataset.train.rows) == dict.fromkeys(range(4), 100)
    row = dataset.train.rows[7]
    assert row.line == first + 7
    assert row.label == int(train[7][0]) - 1
    assert row.text == clean_text(train[7][1], train[7][2])


def test_header_columns_may_come_in_any_order_and_case(tmp_path: Path, local: Settings) -> None:
    records = mini_records("test.csv")
    body = csv_bytes(
        [[description, klass, title] for klass, title, description in records], "original"
    )
    path = make_zip(
        tmp_path / "archive.zip",
        {
            "train.csv": csv_bytes(mini_records("train.csv")),
            "test.csv": b"\xef\xbb\xbfDESCRIPTION, Class_Index ,title\r\n" + body,
        },
    )
    split = read_archive(path, local).test
    assert split.dialect == Dialect.SNAKE_CASE
    assert split.problems == []
    assert split.rows[0].line == 2
    assert split.rows[0].label == int(records[0][0]) - 1
    assert split.rows[0].text == clean_text(records[0][1], records[0][2])


def test_reads_the_real_archive(local: Settings) -> None:
    dataset = read_archive(REAL_ARCHIVE, local)
    assert dataset.train.dialect == dataset.test.dialect == Dialect.ORIGINAL
    assert (len(dataset.train.rows), len(dataset.test.rows)) == (33_120, 4_000)
    assert Counter(row.label for row in dataset.train.rows) == dict.fromkeys(range(4), 8_280)
    assert Counter(row.label for row in dataset.test.rows) == dict.fromkeys(range(4), 1_000)
    assert dataset.train.problems == dataset.test.problems == []
    assert dataset.archive_bytes == REAL_ARCHIVE.stat().st_size
    assert len(dataset.sha256) == 64
    assert not any("#39;" in row.text or "&lt;" in row.text for row in dataset.train.rows)


@pytest.mark.parametrize("folder", ["", "ag_news/"])
def test_finds_the_csvs_at_the_root_or_in_one_folder(
    tmp_path: Path, local: Settings, folder: str
) -> None:
    path = make_archive(tmp_path / "archive.zip", folder=folder)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"__MACOSX/{folder}._train.csv", b"\x00\x05\x16\x07 resource fork")
        archive.writestr(f"{folder}.DS_Store", b"\x00\x00\x00\x01Bud1")
        archive.writestr(f"{folder}classes.txt", "World\nSports\nBusiness\nSci/Tech\n")
    dataset = read_archive(path, local)
    assert (len(dataset.train.rows), len(dataset.test.rows)) == (400, 80)


def test_names_what_it_found_when_a_csv_is_missing(tmp_path: Path, local: Settings) -> None:
    path = make_zip(
        tmp_path / "archive.zip",
        {"train.csv": csv_bytes(mini_records("train.csv")), "readme.txt": b"hi"},
    )
    with pytest.raises(
        DatasetInvalid, match=r"^archive.zip has no test.csv \(found: train.csv, readme.txt\)$"
    ):
        read_archive(path, local)


def test_csvs_two_folders_deep_are_not_looked_for(tmp_path: Path, local: Settings) -> None:
    path = make_archive(tmp_path / "archive.zip", folder="data/ag_news/")
    with pytest.raises(DatasetInvalid, match="at the top of the archive or inside one folder"):
        read_archive(path, local)


def test_rejects_two_csvs_of_one_name(tmp_path: Path, local: Settings) -> None:
    path = make_archive(tmp_path / "archive.zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("old/test.csv", csv_bytes(mini_records("test.csv")))
    with pytest.raises(DatasetInvalid, match=r"2 files named test.csv \(test.csv, old/test.csv\)"):
        read_archive(path, local)


# Archives that must not be read


def test_rejects_a_file_that_is_not_a_zip(tmp_path: Path, local: Settings) -> None:
    path = tmp_path / "archive.zip"
    path.write_bytes(csv_bytes(mini_records("train.csv")))
    with pytest.raises(DatasetInvalid, match=r"^archive.zip is not a zip archive") as caught:
        read_archive(path, local)
    assert caught.value.status_code == 422
    assert caught.value.details["rule"] == "not_a_zip"


def test_rejects_a_zip_bomb_by_its_ratio(tmp_path: Path, local: Settings) -> None:
    bomb = b"1,a,b\n" * 2_000_000
    path = make_zip(tmp_path / "archive.zip", {"train.csv": bomb, "test.csv": bomb})
    with pytest.raises(DatasetInvalid, match=r"ratio above 200:1 \(a zip bomb\?\)"):
        read_archive(path, local)


def test_rejects_an_archive_that_unpacks_too_large(tmp_path: Path, local: Settings) -> None:
    path = make_archive(tmp_path / "archive.zip")
    small = local.replace(archive_max_uncompressed_bytes=50_000)
    with pytest.raises(DatasetInvalid, match="more than the 50,000 allowed"):
        read_archive(path, small)


def test_rejects_a_member_that_lies_about_its_size(tmp_path: Path, local: Settings) -> None:
    path = make_archive(tmp_path / "archive.zip")
    patch_entry(path, "train.csv", file_size=1_000)
    with pytest.raises(DatasetInvalid, match=r"train.csv in archive.zip is damaged \(Bad CRC-32"):
        read_archive(path, local)


@pytest.mark.parametrize(
    "name", ["../train.csv", "/etc/train.csv", "ag/../../test.csv", "C:/x.csv"]
)
def test_rejects_path_traversal(tmp_path: Path, local: Settings, name: str) -> None:
    path = make_archive(tmp_path / "archive.zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(DatasetInvalid, match="holds an unsafe path") as caught:
        read_archive(path, local)
    assert caught.value.details["rule"] == "unsafe_path"


def test_rejects_an_archive_inside_the_archive(tmp_path: Path, local: Settings) -> None:
    inner = make_archive(tmp_path / "inner.zip")
    path = make_zip(
        tmp_path / "archive.zip", {"ag_news.zip": inner.read_bytes()}, zipfile.ZIP_STORED
    )
    with pytest.raises(DatasetInvalid, match=r"holds another archive \(ag_news.zip\)"):
        read_archive(path, local)


def test_rejects_a_compressed_file_named_like_a_csv(tmp_path: Path, local: Settings) -> None:
    compressed = gzip.compress(csv_bytes(mini_records("train.csv")))
    path = make_zip(
        tmp_path / "archive.zip",
        {"train.csv": compressed, "test.csv": csv_bytes(mini_records("test.csv"))},
    )
    with pytest.raises(
        DatasetInvalid, match=r"train.csv in archive\.zip is a gzip archive, not CSV text"
    ):
        read_archive(path, local)


def test_rejects_encrypted_members(tmp_path: Path, local: Settings) -> None:
    path = make_archive(tmp_path / "archive.zip")
    patch_entry(path, "test.csv", flag_bits=0x1)
    with pytest.raises(DatasetInvalid, match=r"test.csv in archive\.zip is encrypted"):
        read_archive(path, local)


def test_rejects_too_many_members(tmp_path: Path, local: Settings) -> None:
    path = make_archive(tmp_path / "archive.zip")
    with zipfile.ZipFile(path, "a") as archive:
        for index in range(3):
            archive.writestr(f"notes/{index}.txt", b"x")
    with pytest.raises(DatasetInvalid, match="has 5 entries; at most 4 are allowed"):
        read_archive(path, local.replace(archive_max_members=4))


def test_rejects_utf16(tmp_path: Path, local: Settings) -> None:
    text = csv_bytes(mini_records("test.csv")).decode()
    path = make_zip(
        tmp_path / "archive.zip",
        {"train.csv": csv_bytes(mini_records("train.csv")), "test.csv": text.encode("utf-16")},
    )
    with pytest.raises(
        DatasetInvalid, match=r"test.csv in archive\.zip is UTF-16 text; save it as UTF-8"
    ):
        read_archive(path, local)


# Rows that cannot be read


def test_reports_problems_on_their_physical_lines(tmp_path: Path, local: Settings) -> None:
    test_csv = (
        b'"Class Index","Title","Description"\n'  # 1
        b'"1","A title","A description"\n'  # 2
        b'"2","Multi","first line\n'  # 3
        b"second line\n"  # 4
        b'third line"\n'  # 5
        b'"7","Bad class","x"\n'  # 6
        b"\n"  # 7
        b'"3","Too few"\n'  # 8
        b'"three","Not a number","x"\n'  # 9
        b'"4","Bytes","caf\xe9 au lait"\n'  # 10
        b'"1","",""\n'  # 11
        b'"4","Last","row"\n'  # 12
    )
    path = make_zip(
        tmp_path / "archive.zip",
        {"train.csv": csv_bytes(mini_records("train.csv")), "test.csv": test_csv},
    )
    split = read_archive(path, local).test
    assert [(row.line, row.label) for row in split.rows] == [(2, 0), (3, 1), (12, 3)]
    assert split.rows[1].text == "Multi. first line second line third line"
    assert [(p.line, p.rule, p.message) for p in split.problems] == [
        (6, Rule.CLASS_OUT_OF_RANGE, 'test.csv line 6: class index "7" is not one of 1..4'),
        (
            8,
            Rule.FIELD_COUNT,
            "test.csv line 8: expected 3 fields (class index, title, description), found 2",
        ),
        (9, Rule.CLASS_NOT_INTEGER, 'test.csv line 9: class index "three" is not an integer'),
        (10, Rule.NOT_UTF8, "test.csv line 10: bytes that are not UTF-8; save the file as UTF-8"),
        (11, Rule.EMPTY_TEXT, "test.csv line 11: title and description are both empty"),
    ]


def test_points_at_a_quote_left_open(tmp_path: Path, local: Settings) -> None:
    test_csv = b'"1","Fine","row"\n"2","Open quote,never closed\n3,x,y\n4,x,y\n'
    path = make_zip(
        tmp_path / "archive.zip",
        {"train.csv": csv_bytes(mini_records("train.csv")), "test.csv": test_csv},
    )
    split = read_archive(path, local).test
    assert [row.line for row in split.rows] == [1]
    assert [p.message for p in split.problems] == [
        "test.csv line 2: expected 3 fields (class index, title, description), found 2"
        " (a record running to line 4: a quote left open?)"
    ]


def test_survives_a_field_too_large_for_csv(tmp_path: Path, local: Settings) -> None:
    test_csv = (
        b'"1","Fine","row"\n"2","huge","'
        + os.urandom(100_000).hex().encode()
        + b'"\n"3","after","it"\n'
    )
    path = make_zip(
        tmp_path / "archive.zip",
        {"train.csv": csv_bytes(mini_records("train.csv")), "test.csv": test_csv},
    )
    split = read_archive(path, local).test
    assert [row.line for row in split.rows] == [1, 3]
    assert [(p.line, p.rule) for p in split.problems] == [(2, Rule.CSV_SYNTAX)]
    assert split.problems[0].message.startswith(
        "test.csv line 2: unreadable CSV (field larger than field limit"
    )


# Fetching


def test_fetches_from_s3_by_url_and_by_key(settings: Settings, tmp_path: Path) -> None:
    s3_client(settings.storage).upload_file(
        str(MINI_ARCHIVE), settings.storage.bucket, "incoming/u1/archive.zip"
    )
    by_url = fetch_archive(
        f"s3://{settings.storage.bucket}/incoming/u1/archive.zip", settings, tmp_path / "a"
    )
    by_key = fetch_archive("incoming/u1/archive.zip", settings, tmp_path / "b")
    assert by_url == tmp_path / "a" / "archive.zip"
    assert by_url.read_bytes() == by_key.read_bytes() == MINI_ARCHIVE.read_bytes()
    assert list((tmp_path / "a").iterdir()) == [by_url]


def test_fetching_a_missing_object_names_it(settings: Settings, tmp_path: Path) -> None:
    url = f"s3://{settings.storage.bucket}/incoming/nothing.zip"
    with pytest.raises(DatasetNotFound, match=f"^{url} does not exist$") as caught:
        fetch_archive(url, settings, tmp_path)
    assert caught.value.status_code == 404
    with pytest.raises(DatasetNotFound, match="does not exist"):
        fetch_archive("s3://no-such-bucket-here/archive.zip", settings, tmp_path)


def test_refuses_an_object_over_the_upload_limit(settings: Settings, tmp_path: Path) -> None:
    s3_client(settings.storage).upload_file(
        str(MINI_ARCHIVE), settings.storage.bucket, "incoming/archive.zip"
    )
    small = settings.replace(upload_max_bytes=10_000)
    with pytest.raises(PayloadTooLarge, match="at most 10,000 bytes"):
        fetch_archive("incoming/archive.zip", small, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fetches_local_files_in_place(local: Settings, tmp_path: Path) -> None:
    assert fetch_archive(MINI_ARCHIVE, local, tmp_path) == MINI_ARCHIVE
    assert fetch_archive(str(MINI_ARCHIVE), local, tmp_path) == MINI_ARCHIVE
    with pytest.raises(DatasetNotFound, match="does not exist"):
        fetch_archive(tmp_path / "missing.zip", local, tmp_path)


def test_undecodable_bytes_do_not_stop_the_stream(tmp_path: Path, local: Settings) -> None:
    raw = io.BytesIO()
    raw.write(b"\xef\xbb\xbfClass Index,Title,Description\r\n")
    raw.write(b"1,ok,fine\r\n2,bad \xff\xfe,bytes\r\n3,still,fine\r\n\xe92,class,bytes\r\n")
    path = make_zip(
        tmp_path / "archive.zip", {"train.csv": raw.getvalue(), "test.csv": raw.getvalue()}
    )
    split = read_archive(path, local).train
    assert split.dialect == Dialect.KAGGLE
    assert [row.line for row in split.rows] == [2, 4]
    assert [(p.line, p.rule) for p in split.problems] == [(3, Rule.NOT_UTF8), (5, Rule.NOT_UTF8)]
    report = validate(read_archive(path, local), local)
    assert json.loads(report.model_dump_json())["problems_total"] == 4


def test_the_memory_budget_bounds_the_csv_bytes(local: Settings) -> None:
    budget = local.replace(ingest_memory_budget_bytes=64_000)
    assert max_csv_bytes(budget) == 64_000 * MIN_ROW_BYTES // SCAN_BYTES_PER_ROW == 10_000
    assert max_csv_bytes(local) == min(
        local.archive.max_uncompressed_bytes,
        local.archive.ingest_memory_budget_bytes * MIN_ROW_BYTES // SCAN_BYTES_PER_ROW,
    )


def test_an_archive_over_the_memory_budget_is_refused_before_parsing(
    tmp_path: Path, local: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_archive(tmp_path / "archive.zip")
    with zipfile.ZipFile(path) as archive:
        csv_size = sum(info.file_size for info in archive.infolist())
    # just too small: the CSVs need one byte more than the budget allows
    budget = (csv_size - 1) * SCAN_BYTES_PER_ROW // MIN_ROW_BYTES
    tight = local.replace(ingest_memory_budget_bytes=budget)
    assert max_csv_bytes(tight) < csv_size

    def no_parsing(*args: object) -> None:
        raise AssertionError("parsed rows before checking the memory budget")

    monkeypatch.setattr(ingest, "_parse", no_parsing)
    with pytest.raises(PayloadTooLarge, match=r"AGNEWS_INGEST_MEMORY_BUDGET_BYTES") as caught:
        read_archive(path, tight)
    assert f"{csv_size:,} bytes of CSV" in caught.value.message
    assert caught.value.details == {
        "rule": "memory_budget",
        "csv_bytes": csv_size,
        "max_csv_bytes": max_csv_bytes(tight),
        "budget_bytes": budget,
    }
    monkeypatch.undo()
    roomy = local.replace(ingest_memory_budget_bytes=budget + 1000)
    assert len(read_archive(path, roomy).train.rows) == 400
