"""A model's files on disk, their manifest of sha256 sums, and their way in and out of S3.

A model directory holds model.safetensors, config.json (with the label names), the tokenizer's
files, metrics.json and manifest.json, which names every other file with its sha256. Loading
verifies every sum. Publishing uploads every file, metrics.json last, then the manifest: a
version in the registry is complete or invisible.
"""

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

from botocore.exceptions import ClientError
from pydantic import ValidationError

from shared.contracts.errors import Conflict, ModelIntegrityError
from shared.contracts.models import (
    MANIFEST,
    METRICS,
    VERSION_PATTERN,
    ModelInfo,
    checked_version,
)
from shared.contracts.results import Metrics
from shared.contracts.training import TrainingParams
from shared.digests import file_sha256
from shared.registry import ModelRegistry, read_object
from shared.storage import s3_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

WEIGHTS = "model.safetensors"
# A copy being downloaded this long ago belongs to a process that died.
PARTIAL_COPY_S = 3600.0
# Formats that unpickle (run code) when loaded: never stored, never loaded.
UNSAFE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack"})


def _relative_files(directory: Path) -> list[str]:
    return sorted(
        path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file()
    )


def _refuse_name(name: object, where: str, why: str) -> NoReturn:
    raise ModelIntegrityError(f"{where} names {name!r}, {why}: refused", details={"file": name})


def member_path(root: Path, name: object, where: str) -> Path:
    """`root / name` for a file name read from a manifest or an S3 listing (`where` says which),
    once the name is known to stay inside root: checked as a string before any path is built
    (relative, "/"-separated, no empty, "." or ".." part, no backslash or NUL), then the joined
    path, symlinks resolved, must lie below root. Anything else is a ModelIntegrityError naming
    the name: `Path(root) / "/etc/x"` is /etc/x, and a manifest is only as trustworthy as whoever
    could write the bucket."""
    if not isinstance(name, str) or not name:
        _refuse_name(name, where, "an empty or non-text name")
    if "\\" in name or "\x00" in name:
        _refuse_name(name, where, "a name with a backslash or NUL")
    if name.startswith("/"):
        _refuse_name(name, where, "an absolute path")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        _refuse_name(name, where, 'a name with an empty, "." or ".." part')
    base = root.resolve()
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(base) or path.resolve() == base:
        _refuse_name(name, where, f"a path that resolves outside {root}")
    return path


def member_paths(root: Path, names: Iterable[object], where: str) -> dict[str, Path]:
    """member_path of every name, all checked before the caller writes or reads any; also
    refused: a name that is another one's folder (the two cannot both be files)."""
    paths = {str(name): member_path(root, name, where) for name in names}
    folders = {parent for name in paths for parent in PurePosixPath(name).parents}
    for name in sorted(paths):
        if PurePosixPath(name) in folders:
            _refuse_name(name, where, "a name that is also another file's folder")
    return paths


def _refuse_unsafe(names: Any, where: str) -> None:
    unsafe = sorted(name for name in names if PurePosixPath(name).suffix.lower() in UNSAFE_SUFFIXES)
    if unsafe:
        raise ModelIntegrityError(
            f"{where} holds {', '.join(unsafe)}: only safetensors weights are allowed",
            details={"files": unsafe},
        )


def write_manifest(
    model_dir: Path,
    *,
    version: str,
    base_model: str,
    dataset_sha256: str,
    metrics: Metrics,
    params: TrainingParams,
) -> ModelInfo:
    """Write metrics.json, then manifest.json with the sha256 of every other file."""
    (model_dir / METRICS).write_text(metrics.model_dump_json(indent=2))
    names = [name for name in _relative_files(model_dir) if name != MANIFEST]
    _refuse_unsafe(names, str(model_dir))
    if WEIGHTS not in names:
        raise ModelIntegrityError(f"{model_dir} has no {WEIGHTS}")
    info = ModelInfo(
        version=version,
        created_at=datetime.now(UTC),
        base_model=base_model,
        dataset_sha256=dataset_sha256,
        metrics=metrics,
        params=params,
        files={name: file_sha256(model_dir / name) for name in names},
    )
    (model_dir / MANIFEST).write_text(info.model_dump_json(indent=2))
    return info


def read_manifest(model_dir: Path) -> ModelInfo:
    """The manifest of a model directory, its files not checked (see verify)."""
    try:
        return ModelInfo.model_validate_json((model_dir / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise ModelIntegrityError(
            f"{model_dir} has no {MANIFEST}", details={"path": str(model_dir)}
        ) from None
    except ValidationError as exc:
        raise ModelIntegrityError(f"{model_dir / MANIFEST} is not a valid manifest: {exc}") from exc


def verify(model_dir: Path) -> ModelInfo:
    """The manifest of a model directory whose every listed file matches its sha256."""
    info = read_manifest(model_dir)
    paths = member_paths(model_dir, info.files, f"the manifest of {info.version}")
    _refuse_unsafe(info.files, str(model_dir))
    if WEIGHTS not in info.files:
        raise ModelIntegrityError(f"the manifest of {info.version} lists no {WEIGHTS}")
    for name, digest in info.files.items():
        path = paths[name]
        if not path.is_file():
            raise ModelIntegrityError(
                f"{name} of model {info.version} is missing", details={"file": name}
            )
        if file_sha256(path) != digest:
            raise ModelIntegrityError(
                f"{name} of model {info.version} does not match the sha256 in its manifest",
                details={"file": name, "expected": digest},
            )
    return info


def upload_dir(s3: "S3Client", bucket: str, prefix: str, directory: Path, names: list[str]) -> None:
    for name in names:
        s3.upload_file(str(directory / name), bucket, prefix + name)


def download_prefix(s3: "S3Client", bucket: str, prefix: str, dest: Path) -> Path:
    """Every object under `prefix` into dest, keeping the names below the prefix.

    The whole listing is checked (member_paths) before anything is written, and one name that
    could land outside dest refuses the whole prefix (ModelIntegrityError): only a trainer's
    upload_dir writes these prefixes, with names from its own folder, so such a name means
    someone else wrote there, and skipping it would hand on a folder whose other files are just
    as suspect. The prefix's own key (a folder marker) names no file and is passed over."""
    keys: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"] != prefix:
                keys[item["Key"][len(prefix) :]] = item["Key"]
    paths = member_paths(dest, keys, f"s3://{bucket}/{prefix}")
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, keys[name], str(path))
    return dest


def delete_prefix(s3: "S3Client", bucket: str, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys: list[ObjectIdentifierTypeDef] = [
            {"Key": item["Key"]} for item in page.get("Contents", [])
        ]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


@s3_retry
def publish(registry: ModelRegistry, model_dir: Path) -> ModelInfo:
    """Upload a verified model directory as its version: files, metrics.json, manifest.json.

    On any failure the files uploaded so far are deleted again."""
    info = verify(model_dir)
    if read_object(registry.s3, registry.bucket, registry.key(info.version, MANIFEST)):
        raise Conflict(f"model version {info.version} already exists")
    names = sorted(info.files, key=lambda name: (name == METRICS, name))
    prefix = registry.key(info.version, "")
    try:
        upload_dir(registry.s3, registry.bucket, prefix, model_dir, [*names, MANIFEST])
    except BaseException:
        with contextlib.suppress(ClientError):
            delete_prefix(registry.s3, registry.bucket, prefix)
        raise
    return info


def download(
    registry: ModelRegistry, version: str, cache_dir: Path, keep: int | None = None
) -> Path:
    """A verified local copy of a registered version, under cache_dir/version; with `keep`,
    the cache then holds at most that many versions (this one among them)."""
    target = cache_dir / checked_version(version)
    if target.is_dir():
        try:
            verify(target)
            os.utime(target)  # used now: the cache keeps the versions used last
            return target
        except ModelIntegrityError:
            shutil.rmtree(target)
    info = registry.get(version)
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{version}."))
    try:
        # Every name is checked before anything is written (member_path).
        paths = member_paths(part, [*info.files, MANIFEST], f"the manifest of {version}")
        for name, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                registry.s3.download_file(registry.bucket, registry.key(version, name), str(path))
            except ClientError as exc:
                raise ModelIntegrityError(
                    f"{name} of model {version} cannot be read from the registry ({exc})",
                    details={"file": name},
                ) from exc
        verify(part)
        try:
            os.replace(part, target)
        except OSError:
            # Another process put the same version there first.
            verify(target)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    if keep is not None:
        prune_cache(cache_dir, keep, protect=version)
    return target


def prune_cache(cache_dir: Path, keep: int, protect: str) -> list[str]:
    """Delete all but the `keep` versions used last (`protect` always stays), and copies left
    half written by a process that died; returns the versions deleted."""
    versions = sorted(
        (path for path in cache_dir.iterdir() if VERSION_PATTERN.fullmatch(path.name)),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    kept = {protect, *(path.name for path in versions[: max(keep - 1, 0)] if path.name != protect)}
    gone = [path for path in versions if path.name not in kept]
    stale = time.time() - PARTIAL_COPY_S
    gone += [path for path in cache_dir.glob(".*.*") if path.stat().st_mtime < stale]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return [path.name for path in gone]
