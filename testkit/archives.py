"""The repository's sample archives, and archive.zip files built from archive_mini's real rows
in any dialect or layout."""

import csv
import io
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINI_ARCHIVE = ROOT / "data" / "archive_mini.zip"
REAL_ARCHIVE = MINI_ARCHIVE.parent / "archive.zip"
Record = list[str]
HEADERS = {
    "original": None,
    "kaggle": ["Class Index", "Title", "Description"],
    "snake_case": ["class_index", "title", "description"],
}


def mini_records(name: str) -> list[Record]:
    """archive_mini's rows of train.csv or test.csv, without the header, as the CSV has them."""
    with zipfile.ZipFile(MINI_ARCHIVE) as archive:
        text = archive.read(name).decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))[1:]


def csv_bytes(records: list[Record], dialect: str = "kaggle") -> bytes:
    out = io.StringIO(newline="")
    header = HEADERS[dialect]
    writer = csv.writer(out, quoting=csv.QUOTE_ALL if dialect == "original" else csv.QUOTE_MINIMAL)
    if header:
        writer.writerow(header)
    writer.writerows(records)
    return out.getvalue().encode("utf-8")


def make_zip(
    path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def make_archive(
    path: Path,
    train: list[Record] | None = None,
    test: list[Record] | None = None,
    dialect: str = "kaggle",
    folder: str = "",
) -> Path:
    """An archive.zip of the given rows (archive_mini's by default) in one dialect and layout."""
    train = mini_records("train.csv") if train is None else train
    test = mini_records("test.csv") if test is None else test
    return make_zip(
        path,
        {
            f"{folder}train.csv": csv_bytes(train, dialect),
            f"{folder}test.csv": csv_bytes(test, dialect),
        },
    )


def patch_entry(
    path: Path, member: str, *, flag_bits: int = 0, file_size: int | None = None
) -> None:
    """Rewrite a member's local and central headers: set flag bits, or lie about its size."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    # (signature, offset of the flag bits, offset of the uncompressed size, offset of the name)
    for signature, flags_at, size_at, name_at in (
        (b"PK\x03\x04", 6, 22, 30),
        (b"PK\x01\x02", 8, 24, 46),
    ):
        start = data.find(signature)
        while start != -1:
            if data[start + name_at : start + name_at + len(name)] == name:
                flags = int.from_bytes(data[start + flags_at : start + flags_at + 2], "little")
                data[start + flags_at : start + flags_at + 2] = (flags | flag_bits).to_bytes(
                    2, "little"
                )
                if file_size is not None:
                    data[start + size_at : start + size_at + 4] = file_size.to_bytes(4, "little")
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))
