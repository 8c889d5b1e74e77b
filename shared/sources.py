"""What a job created through the API may read: archives in the configured bucket under
incoming/ or datasets/, and allowlisted base models. The CLI and the S3-event listener create
jobs without the gateway and keep their own sources (local paths, the event's object)."""

import re
from pathlib import Path

from shared.contracts.errors import InvalidRequest
from shared.contracts.models import VERSION_PATTERN
from shared.contracts.training import PACKAGED_BASE_MODEL
from shared.hub import PINNED_RULE, is_pinned
from shared.settings import Settings

ARCHIVE = (".zip",)


def dataset_rule(settings: Settings, suffixes: tuple[str, ...] = ARCHIVE) -> str:
    bucket, prefixes = (
        settings.storage.bucket,
        (settings.storage.incoming_prefix, settings.storage.datasets_prefix),
    )
    name = f"NAME{suffixes[0]}"
    return (
        f"an API job's dataset must be a key of bucket {bucket!r} under "
        f"{' or '.join(prefixes)}: s3://{bucket}/{prefixes[0]}{name} or {prefixes[0]}{name}"
        + ("" if suffixes == ARCHIVE else f" (a file ending {' or '.join(suffixes)})")
    )


def _refuse(
    dataset: str, why: str, settings: Settings, suffixes: tuple[str, ...]
) -> InvalidRequest:
    rule = dataset_rule(settings, suffixes)
    return InvalidRequest(
        f"dataset: {dataset!r} {why}; {rule}",
        details={"fields": ["dataset"], "rule": rule},
    )


_META = set(".^$*+?()[]{}|\\")
# A key's folder: no "/", "\\" or ":", and neither "." nor "..".
_FOLDER = r"(?:[^/\\:.][^/\\:]*|\.[^/\\:.][^/\\:]*|\.\.[^/\\:]+)"


def _literal(text: str) -> str:
    """`text` in a regular expression that Python and JSON Schema (ECMA 262) read alike."""
    return "".join(f"\\{char}" if char in _META else char for char in text)


def dataset_pattern(settings: Settings, suffixes: tuple[str, ...] = ARCHIVE) -> str:
    """What api_dataset takes, as one regular expression (the API document's): an s3:// URL of
    the bucket, or a bare key, under incoming/ or datasets/, of a .zip archive (or a file with
    one of the `suffixes`)."""
    bucket = _literal(settings.storage.bucket)
    prefixes = "|".join(
        _literal(prefix)
        for prefix in (settings.storage.incoming_prefix, settings.storage.datasets_prefix)
    )
    endings = "|".join(_literal(suffix) for suffix in suffixes)
    return f"^(?:s3://{bucket}/)?(?:{prefixes})(?:{_FOLDER}/)*[^/\\\\:]*(?:{endings})$"


def api_dataset(dataset: str, settings: Settings, suffixes: tuple[str, ...] = ARCHIVE) -> str:
    """The s3:// URL of the archive an API job names; InvalidRequest naming the rule otherwise.

    A bare key becomes an s3:// URL, so that no worker reads it as a local path."""
    if dataset.startswith("s3://"):
        bucket, _, key = dataset.removeprefix("s3://").partition("/")
        if bucket != settings.storage.bucket:
            raise _refuse(dataset, f"is in bucket {bucket!r}", settings, suffixes)
    elif "://" in dataset or ":" in dataset.split("/", 1)[0]:
        raise _refuse(dataset, "is not an s3:// URL or a key", settings, suffixes)
    else:
        key = dataset
    if key.startswith("/") or "\\" in key or any(part in ("..", ".") for part in key.split("/")):
        raise _refuse(dataset, "is not a plain key", settings, suffixes)
    if "//" in key or not key.startswith(
        (settings.storage.incoming_prefix, settings.storage.datasets_prefix)
    ):
        raise _refuse(dataset, "is outside the allowed prefixes", settings, suffixes)
    if re.fullmatch(dataset_pattern(settings, suffixes)[1:-1], dataset) is None:
        kind = "a .zip archive" if suffixes == ARCHIVE else f"a {' or '.join(suffixes)} file"
        raise _refuse(dataset, f"is not a plain key of {kind}", settings, suffixes)
    return f"s3://{settings.storage.bucket}/{key}"


def api_base_model(name: str, settings: Settings) -> str:
    """The base model an API job may fine-tune: the packaged one, a name or path on the
    base-model allowlist (hub models on it are pinned to a commit), or a folder under the data
    directory (returned resolved). A hub model named without its commit is refused."""
    if name == PACKAGED_BASE_MODEL or name in settings.training.base_model_allowlist:
        return name
    root = settings.run.data_dir.resolve()
    path = Path(name)
    folder = (path if path.is_absolute() else root / path).resolve()
    if folder.is_relative_to(root) and folder != root and folder.is_dir():
        return str(folder)
    allowed = [PACKAGED_BASE_MODEL, *settings.training.base_model_allowlist]
    rule = (
        f"base_model must be one of {allowed} (AGNEWS_BASE_MODEL_ALLOWLIST) or a model folder "
        f"under the data directory {str(root)!r}; {PINNED_RULE}"
    )
    unpinned = "" if is_pinned(name) or _is_path(name) else " and names no pinned commit"
    raise InvalidRequest(
        f"base_model: {name!r} is not allowed{unpinned}; {rule}",
        details={"fields": ["base_model"], "rule": rule},
    )


def _is_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name


def api_model_version(version: str) -> str:
    """A registered version's name, as the registry writes them; never a path (workers keep
    model copies in a folder per version)."""
    if VERSION_PATTERN.fullmatch(version) is None:
        raise InvalidRequest(
            f"model_version: {version!r} is not a version name like 2026-11-26T10-31-07-3f9c",
            details={"fields": ["model_version"], "rule": VERSION_PATTERN.pattern},
        )
    return version
