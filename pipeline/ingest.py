"""Fetch a user's archive.zip and read its train.csv and test.csv into labelled, cleaned rows.

The archive is never unpacked to disk: each CSV streams from the zip through a byte counter into
the csv module, and each row goes to a sink as it is read (a Split keeps them; validation only
counts and hashes them). Whatever is wrong with the archive itself raises DatasetInvalid; a row
that cannot be read becomes a RowProblem with its physical line number, for validation to judge.

Memory: before any row is parsed, the CSVs' sizes in the zip directory must fit the ingest
memory budget (`max_csv_bytes`); the byte counter holds the members to the same bound, whatever
the directory declares.
"""

import csv
import io
import lzma
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

from pipeline.text import clean_text
from shared.contracts.errors import DatasetInvalid, DatasetNotFound, PayloadTooLarge
from shared.contracts.labels import LABELS
from shared.digests import file_sha256
from shared.settings import Settings
from shared.storage import is_missing, parse_s3_url, s3_client, s3_url

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

SPLITS = ("train.csv", "test.csv")
FIELDS = ("class index", "title", "description")
_CLASS_IDS = {str(index + 1): index for index in range(len(LABELS))}
_NESTED_SUFFIXES = (".zip", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".7z", ".rar", ".zst")
_MAGIC = {
    b"PK\x03\x04": "zip",
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"7z\xbc\xaf": "7-Zip",
    b"Rar!": "RAR",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UNDECODABLE = re.compile(r"[\udc80-\udcff]")
_HEADER_SPACES = re.compile(r"[\s_]+")
_CHUNK_BYTES = 1 << 20
# The shortest CSV line that yields a row (`1,a,` and its newline), and the most bytes validation
# keeps per row at its peak (an 8-byte text hash, sorted copies and masks): together they bound
# the memory of ingesting an archive by the CSVs' uncompressed sizes, whatever rows they hold.
MIN_ROW_BYTES = 5
SCAN_BYTES_PER_ROW = 32


class Dialect(StrEnum):
    """The CSV layouts read; each row has exactly three fields (a two-field class,text row is
    refused rather than guessed at: it may be a row that lost its title or description)."""

    ORIGINAL = "original"  # no header, every field quoted: the 2015 release
    KAGGLE = "kaggle"  # header `Class Index,Title,Description`
    SNAKE_CASE = "snake_case"  # header `class_index,title,description`


class Rule(StrEnum):
    CSV_SYNTAX = "csv_syntax"
    FIELD_COUNT = "field_count"
    CLASS_NOT_INTEGER = "class_not_integer"
    CLASS_OUT_OF_RANGE = "class_out_of_range"
    NOT_UTF8 = "not_utf8"
    EMPTY_TEXT = "empty_text"


# A row with one of these problems is unusable; an empty text is only dropped.
BAD_ROW_RULES = frozenset(rule for rule in Rule if rule is not Rule.EMPTY_TEXT)


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    label: int
    text: str


@dataclass(frozen=True, slots=True)
class RowProblem:
    file: str
    line: int
    rule: str
    message: str


class RowSink(Protocol):
    """Where a CSV's rows and problems go, in file order, as they are read; `name` is the
    file's, `dialect` is set once it is read."""

    name: str
    dialect: str

    def row(self, row: Row) -> None: ...

    def problem(self, problem: RowProblem) -> None: ...


@dataclass
class Split:
    """Every row of one CSV, held: what training and evaluation read."""

    name: str
    rows: list[Row] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    dialect: str = Dialect.ORIGINAL

    def row(self, row: Row) -> None:
        self.rows.append(row)

    def problem(self, problem: RowProblem) -> None:
        self.problems.append(problem)


@dataclass
class RawDataset:
    train: Split
    test: Split
    sha256: str
    archive_bytes: int

    def splits(self) -> tuple[Split, Split]:
        return self.train, self.test


def fetch_archive(
    source: str | Path, settings: Settings, dest_dir: Path, *, version_id: str | None = None
) -> Path:
    """A local path to the archive: a local file as is, or an S3 object streamed into dest_dir.

    `source` is a Path, an absolute path, a `file://` URL, an `s3://bucket/key` URL, or else a
    relative path when that file exists, or a key in the configured bucket when it does not.
    """
    local = _local_path(source)
    if local is not None:
        if not local.is_file():
            raise DatasetNotFound(f"{local} does not exist", details={"path": str(local)})
        _check_size(local.stat().st_size, str(local), settings)
        return local
    bucket, key = parse_s3_url(str(source), settings.storage)
    url = s3_url(bucket, key)
    client = s3_client(settings.storage)
    try:
        response = (
            client.get_object(Bucket=bucket, Key=key, VersionId=version_id)
            if version_id
            else client.get_object(Bucket=bucket, Key=key)
        )
    except ClientError as exc:
        if is_missing(exc):
            raise DatasetNotFound(f"{url} does not exist", details={"url": url}) from exc
        raise
    _check_size(response["ContentLength"], url, settings)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / (PurePosixPath(key).name or "archive.zip")
    received = 0
    with tempfile.NamedTemporaryFile(dir=dest_dir, suffix=".part", delete=False) as part:
        try:
            for chunk in response["Body"].iter_chunks(_CHUNK_BYTES):
                received += len(chunk)
                _check_size(received, url, settings)
                part.write(chunk)
        except BaseException:
            Path(part.name).unlink(missing_ok=True)
            raise
    os.replace(part.name, target)
    return target


def max_csv_bytes(settings: Settings) -> int:
    """The most uncompressed CSV bytes an archive may hold: its unpacking limit, and what fits
    the ingest memory budget with the shortest rows."""
    fits = settings.archive.ingest_memory_budget_bytes * MIN_ROW_BYTES // SCAN_BYTES_PER_ROW
    return min(settings.archive.max_uncompressed_bytes, fits)


def read_archive(path: Path, settings: Settings) -> RawDataset:
    """Read train.csv and test.csv out of the archive; DatasetInvalid says what is wrong with it."""
    splits = {name: Split(name) for name in SPLITS}
    sha256, size = stream_archive(path, settings, splits)
    return RawDataset(splits[SPLITS[0]], splits[SPLITS[1]], sha256, size)


def stream_archive(path: Path, settings: Settings, sinks: Mapping[str, RowSink]) -> tuple[str, int]:
    """Stream the rows of train.csv and test.csv into their sinks; the archive's sha256 and size.

    DatasetInvalid says what is wrong with the archive, PayloadTooLarge that its CSVs do not fit
    the memory budget (checked from the zip directory before any row is parsed)."""
    try:
        sha256 = file_sha256(path)
        archive = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise DatasetNotFound(f"{path} does not exist", details={"path": str(path)}) from exc
    except zipfile.BadZipFile as exc:
        raise DatasetInvalid(
            f"{path.name} is not a zip archive ({exc}): upload a .zip holding train.csv and "
            "test.csv",
            details={"rule": "not_a_zip"},
        ) from exc
    with archive:
        members = _find_members(archive, path.name, settings)
        _check_memory(sum(info.file_size for info in members.values()), path.name, settings)
        budget = max_csv_bytes(settings)
        for name in SPLITS:
            used = _read_member(archive, members[name], path.name, budget, settings, sinks[name])
            budget -= used
    return sha256, path.stat().st_size


def extract_member(path: Path, name: str, settings: Settings, dest: Path) -> Path:
    """Copy one of the archive's CSVs (found and bounded as when reading it) to dest."""
    with zipfile.ZipFile(path) as archive:
        info = _find_members(archive, path.name, settings)[name]
        _check_memory(info.file_size, f"{info.filename} in {path.name}", settings)
        dest.parent.mkdir(parents=True, exist_ok=True)
        message = f"{info.filename} in {path.name} unpacks to more than it declares"
        with archive.open(info) as member, dest.open("wb") as out:
            counter = _CountingReader(member, info.file_size, message)
            while chunk := counter.read(_CHUNK_BYTES):
                out.write(chunk)
    return dest


def read_csv(path: Path, settings: Settings) -> Split:
    """One CSV file on its own (a test.csv to evaluate on), read like a member of an archive."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise DatasetNotFound(f"{path} does not exist", details={"path": str(path)}) from exc
    _check_size(size, str(path), settings)
    _check_memory(size, path.name, settings)
    split = Split(path.name)
    with path.open("rb") as file:
        _check_magic(file.peek(512)[:512], path.name)
        stream = io.TextIOWrapper(file, encoding="utf-8-sig", errors="surrogateescape", newline="")
        _parse(stream, split)
    return split


def _local_path(source: str | Path) -> Path | None:
    if isinstance(source, Path):
        return source
    if source.startswith("file://"):
        return Path(source.removeprefix("file://"))
    if source.startswith("s3://"):
        return None
    path = Path(source)
    return path if path.is_absolute() or path.exists() else None


def _check_size(size: int, where: str, settings: Settings) -> None:
    if size > settings.limits.upload_max_bytes:
        raise PayloadTooLarge(
            f"{where} is {size:,} bytes or more; archives may be at most "
            f"{settings.limits.upload_max_bytes:,} bytes",
            details={"limit_bytes": settings.limits.upload_max_bytes},
        )


def _check_memory(csv_bytes: int, where: str, settings: Settings) -> None:
    limit = max_csv_bytes(settings)
    if csv_bytes <= limit:
        return
    budget = settings.archive.ingest_memory_budget_bytes
    raise PayloadTooLarge(
        f"{where} holds {csv_bytes:,} bytes of CSV; at most {limit:,} may be ingested (rows of "
        f"{MIN_ROW_BYTES} bytes or more, up to {SCAN_BYTES_PER_ROW} bytes of memory each, "
        f"within the ingest memory budget of {budget:,} bytes, AGNEWS_INGEST_MEMORY_BUDGET_BYTES"
        "): split the data into smaller archives",
        details={
            "rule": "memory_budget",
            "csv_bytes": csv_bytes,
            "max_csv_bytes": limit,
            "budget_bytes": budget,
        },
    )


def _invalid(message: str, rule: str) -> DatasetInvalid:
    return DatasetInvalid(message, details={"rule": rule})


def _is_ignored(parts: tuple[str, ...]) -> bool:
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _is_unsafe(name: str) -> bool:
    posix = name.replace("\\", "/")
    return (
        posix.startswith("/")
        or re.match(r"[A-Za-z]:", posix) is not None
        or (".." in PurePosixPath(posix).parts)
    )


def _find_members(
    archive: zipfile.ZipFile, archive_name: str, settings: Settings
) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > settings.archive.max_members:
        raise _invalid(
            f"{archive_name} has {len(infos)} entries; at most {settings.archive.max_members} "
            "are allowed",
            "too_many_members",
        )
    declared = 0
    for info in infos:
        if _is_unsafe(info.filename):
            raise _invalid(
                f"{archive_name} holds an unsafe path {info.filename!r}: member names must be "
                "relative and must not contain '..'",
                "unsafe_path",
            )
        declared += info.file_size
        if info.file_size > settings.archive.max_ratio * max(info.compress_size, 1):
            raise _invalid(
                f"{info.filename} in {archive_name} unpacks {info.file_size:,} bytes from "
                f"{info.compress_size:,}, a ratio above {settings.archive.max_ratio:g}:1 "
                "(a zip bomb?)",
                "zip_bomb",
            )
    if declared > settings.archive.max_uncompressed_bytes:
        raise _invalid(
            f"{archive_name} unpacks to {declared:,} bytes, more than the "
            f"{settings.archive.max_uncompressed_bytes:,} allowed",
            "zip_bomb",
        )
    files = [
        (info, PurePosixPath(info.filename).parts)
        for info in infos
        if not info.is_dir() and not _is_ignored(PurePosixPath(info.filename).parts)
    ]
    found: dict[str, zipfile.ZipInfo] = {}
    for name in SPLITS:
        matches = [info for info, parts in files if parts[-1].lower() == name and len(parts) <= 2]
        if len(matches) > 1:
            listed = ", ".join(info.filename for info in matches)
            raise _invalid(
                f"{archive_name} has {len(matches)} files named {name} ({listed}); keep one",
                "ambiguous_member",
            )
        if not matches:
            raise _invalid(_missing_message(archive_name, name, files), "missing_member")
        if matches[0].flag_bits & 0x1:
            raise _invalid(
                f"{matches[0].filename} in {archive_name} is encrypted; upload an archive "
                "without a password",
                "encrypted",
            )
        found[name] = matches[0]
    return found


def _missing_message(
    archive_name: str, name: str, files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]]
) -> str:
    nested = [
        info.filename for info, _ in files if info.filename.lower().endswith(_NESTED_SUFFIXES)
    ]
    if nested:
        return (
            f"{archive_name} has no {name} but holds another archive ({', '.join(nested[:5])}): "
            "put train.csv and test.csv in the zip itself, not in an archive inside it"
        )
    names = [info.filename for info, _ in files]
    listed = ", ".join(names[:10]) + (", …" if len(names) > 10 else "") if names else "nothing"
    hint = ""
    if any(parts[-1].lower() == name for _, parts in files):
        hint = f"; {name} must be at the top of the archive or inside one folder"
    return f"{archive_name} has no {name} (found: {listed}){hint}"


class _CountingReader(io.RawIOBase):
    """Bytes from a zip member, stopped as soon as they pass what the archive may unpack to."""

    def __init__(self, inner: IO[bytes], limit: int, message: str) -> None:
        self._inner, self._limit, self._message = inner, limit, message
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "WriteableBuffer") -> int:
        view = memoryview(buffer).cast("B")
        data = self._inner.read(len(view))
        self.count += len(data)
        if self.count > self._limit:
            raise _invalid(self._message, "zip_bomb")
        view[: len(data)] = data
        return len(data)


def _read_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    archive_name: str,
    budget: int,
    settings: Settings,
    sink: RowSink,
) -> int:
    where = f"{info.filename} in {archive_name}"
    ratio_limit = int(settings.archive.max_ratio * max(info.compress_size, 1))
    limit = min(budget, ratio_limit)
    message = (
        f"{where} unpacks to more than {ratio_limit:,} bytes, a ratio above "
        f"{settings.archive.max_ratio:g}:1 (a zip bomb?)"
        if limit == ratio_limit
        else f"{archive_name} unpacks to more than the {max_csv_bytes(settings):,} bytes of "
        "CSV allowed"
    )
    try:
        with archive.open(info) as probe:
            _check_magic(probe.read(512), where)
        with archive.open(info) as member:
            counter = _CountingReader(member, limit, message)
            stream = io.TextIOWrapper(
                io.BufferedReader(counter, _CHUNK_BYTES),
                encoding="utf-8-sig",
                errors="surrogateescape",
                newline="",
            )
            _parse(stream, sink)
    except NotImplementedError as exc:
        raise _invalid(
            f"{where} uses a compression method this server cannot read: {exc}; "
            "use the standard deflate",
            "unsupported_compression",
        ) from exc
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError) as exc:
        raise _invalid(f"{where} is damaged ({exc})", "damaged") from exc
    return counter.count


def _check_magic(head: bytes, where: str) -> None:
    if head.startswith(_UTF16_BOMS):
        raise _invalid(f"{where} is UTF-16 text; save it as UTF-8", "not_utf8")
    kind = next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None and head[257:262] == b"ustar":
        kind = "tar"
    if kind is not None:
        raise _invalid(
            f"{where} is a {kind} archive, not CSV text: put the CSV file in the zip directly",
            "nested_archive",
        )


def _parse(stream: IO[str], sink: RowSink) -> None:
    """Rows of one CSV file, in any of the three dialects, with every problem's physical line."""
    reader = csv.reader(stream)
    parser = _SplitParser(sink)
    while True:
        try:
            for record in reader:
                parser.feed(record, reader.line_num)
            break
        except csv.Error as exc:
            parser.problem(parser.next_line, Rule.CSV_SYNTAX, f"unreadable CSV ({exc})")
            parser.next_line = reader.line_num + 1
    sink.dialect = parser.dialect or Dialect.ORIGINAL


class _SplitParser:
    def __init__(self, sink: RowSink) -> None:
        self.sink = sink
        self.name = sink.name
        self.dialect: Dialect | None = None
        self.columns = (0, 1, 2)
        self.next_line = 1

    def problem(self, line: int, rule: Rule, text: str) -> None:
        self.sink.problem(
            RowProblem(self.name, line, rule.value, f"{self.name} line {line}: {text}")
        )

    def feed(self, record: list[str], last_line: int) -> None:
        line, self.next_line = self.next_line, last_line + 1
        if len(record) != len(FIELDS):
            if any(field.strip() for field in record):
                span = f" (a record running to line {last_line}: a quote left open?)"
                self.problem(
                    line,
                    Rule.FIELD_COUNT,
                    f"expected 3 fields (class index, title, description), found {len(record)}"
                    + (span if last_line > line else ""),
                )
            return
        if self.dialect is None and self._header(record):
            return
        klass, title, description = (record[index] for index in self.columns)
        if not (klass.isascii() and title.isascii() and description.isascii()) and any(
            _UNDECODABLE.search(field) for field in (klass, title, description)
        ):
            self.problem(line, Rule.NOT_UTF8, "bytes that are not UTF-8; save the file as UTF-8")
            return
        label = _CLASS_IDS.get(klass)
        if label is None:
            label = self._class_problem(line, klass)
            if label is None:
                return
        text = clean_text(title, description)
        if not text:
            self.problem(line, Rule.EMPTY_TEXT, "title and description are both empty")
            return
        self.sink.row(Row(line, label, text))

    def _header(self, record: list[str]) -> bool:
        names = [_HEADER_SPACES.sub(" ", field.strip().lower()) for field in record]
        if sorted(names) != sorted(FIELDS):
            self.dialect = Dialect.ORIGINAL
            return False
        self.columns = (names.index(FIELDS[0]), names.index(FIELDS[1]), names.index(FIELDS[2]))
        self.dialect = (
            Dialect.SNAKE_CASE if any("_" in field for field in record) else (Dialect.KAGGLE)
        )
        return True

    def _class_problem(self, line: int, klass: str) -> int | None:
        stripped = klass.strip()
        if stripped in _CLASS_IDS:
            return _CLASS_IDS[stripped]
        shown = klass if len(klass) <= 40 else klass[:40] + "…"
        try:
            int(stripped)
        except ValueError:
            self.problem(line, Rule.CLASS_NOT_INTEGER, f'class index "{shown}" is not an integer')
        else:
            self.problem(
                line,
                Rule.CLASS_OUT_OF_RANGE,
                f'class index "{shown}" is not one of 1..{len(LABELS)}',
            )
        return None
