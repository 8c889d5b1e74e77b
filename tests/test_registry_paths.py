"""File names read from S3, a version's manifest or a listing under checkpoints/{job}/final/, are
checked before any path is built from them: a hostile one is refused, and nothing is written
anywhere, inside the target or out of it."""

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.checkpoints import S3Checkpoints
from pipeline.registry import download, download_prefix, member_path, member_paths, verify
from pipeline.stages import checkpoint_prefix, trained_model_prefix
from shared.contracts.errors import ModelIntegrityError
from shared.contracts.models import MANIFEST, ModelInfo, new_version
from shared.contracts.training import TrainingParams
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from testkit.job_results import metrics

PAYLOAD = b"print('pwned')\n"
WEIGHTS = b"not really weights"


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A folder outside every target, where an absolute name points."""
    folder = tmp_path / "sentinel"
    folder.mkdir()
    return folder


def hostile_names(sentinel: Path) -> list[str]:
    return [
        str(sentinel / "workers" / "__main__.py"),  # absolute: Path(part) / "/x" is /x
        "../x",
        "a/../../x",
        "a/../../../x",
        "..\\..\\x",
        "a//b",
        "./x",
        "x\x00y",
    ]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its content (symlinks not followed)."""
    found: dict[str, bytes] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def plant_version(settings: Settings, registry: ModelRegistry, name: str) -> str:
    """A registered version whose manifest lists `name` (with the right sum) besides its
    weights, every object in place: only the name is wrong."""
    version = new_version()
    info = ModelInfo(
        version=version,
        created_at=datetime.now(UTC),
        base_model="x",
        dataset_sha256="0" * 64,
        metrics=metrics(),
        params=TrainingParams(rows_trained=400, rows_validated=20, steps=5),
        files={"model.safetensors": sha(WEIGHTS), name: sha(PAYLOAD)},
    )
    s3 = s3_client(settings.storage)
    bucket = settings.storage.bucket
    s3.put_object(Bucket=bucket, Key=registry.key(version, "model.safetensors"), Body=WEIGHTS)
    s3.put_object(Bucket=bucket, Key=registry.key(version, name), Body=PAYLOAD)
    s3.put_object(
        Bucket=bucket, Key=registry.key(version, MANIFEST), Body=info.model_dump_json().encode()
    )
    return version


@pytest.mark.parametrize("index", range(8))
def test_a_manifest_naming_a_path_outside_the_copy_is_refused_and_nothing_is_written(
    settings: Settings, tmp_path: Path, sentinel: Path, index: int
) -> None:
    name = hostile_names(sentinel)[index]
    registry = ModelRegistry.from_settings(settings.storage)
    version = plant_version(settings, registry, name)
    before = tree(tmp_path)

    with pytest.raises(ModelIntegrityError) as refused:
        download(registry, version, tmp_path / "cache")

    assert repr(name) in refused.value.message
    assert refused.value.details["file"] == name
    assert tree(tmp_path) == before  # the half-written copy is gone, nothing landed anywhere
    assert not (sentinel / "workers").exists()
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "cache" / "x").exists()


@pytest.mark.parametrize("index", range(8))
@pytest.mark.parametrize("where", ["final", "checkpoint"])
def test_a_prefix_listing_a_hostile_name_is_refused_whole(
    settings: Settings, tmp_path: Path, sentinel: Path, index: int, where: str
) -> None:
    name = hostile_names(sentinel)[index]
    job_id = "job-1"
    s3 = s3_client(settings.storage)
    bucket = settings.storage.bucket
    if where == "final":
        prefix = trained_model_prefix(job_id, settings)
    else:
        prefix = checkpoint_prefix(job_id, settings) + "step-000000007/"
    s3.put_object(Bucket=bucket, Key=prefix + "model.safetensors", Body=WEIGHTS)
    s3.put_object(Bucket=bucket, Key=prefix + name, Body=PAYLOAD)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    assert prefix + name in {item["Key"] for item in listed}  # the store kept the name as is
    dest = tmp_path / "scratch" / "model"
    before = tree(tmp_path)

    def fetch() -> Path:
        if where == "final":
            return download_prefix(s3, bucket, prefix, dest)
        return S3Checkpoints(s3, bucket, checkpoint_prefix(job_id, settings)).fetch(7, dest)

    with pytest.raises(ModelIntegrityError) as refused:
        fetch()

    assert repr(name) in refused.value.message
    assert tree(tmp_path) == before  # not even the good file: the prefix is refused whole
    assert not (sentinel / "workers").exists()


def test_a_prefix_of_good_names_downloads_and_its_folder_marker_is_passed_over(
    settings: Settings, tmp_path: Path
) -> None:
    s3 = s3_client(settings.storage)
    bucket = settings.storage.bucket
    prefix = trained_model_prefix("job-2", settings)
    s3.put_object(Bucket=bucket, Key=prefix, Body=b"")
    s3.put_object(Bucket=bucket, Key=prefix + "model.safetensors", Body=WEIGHTS)
    s3.put_object(Bucket=bucket, Key=prefix + "onnx/model.onnx", Body=PAYLOAD)
    dest = download_prefix(s3, bucket, prefix, tmp_path / "model")
    assert tree(dest) == {"model.safetensors": WEIGHTS, "onnx/model.onnx": PAYLOAD}


def test_verify_refuses_a_listed_file_that_is_a_link_out_of_the_folder(
    tmp_path: Path, sentinel: Path
) -> None:
    secret = sentinel / "secret"
    secret.write_bytes(PAYLOAD)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(WEIGHTS)
    (model / "config.json").symlink_to(secret)
    info = ModelInfo(
        version=new_version(),
        created_at=datetime.now(UTC),
        base_model="x",
        dataset_sha256="0" * 64,
        metrics=metrics(),
        params=TrainingParams(rows_trained=400, rows_validated=20, steps=5),
        files={"model.safetensors": sha(WEIGHTS), "config.json": sha(PAYLOAD)},
    )
    (model / MANIFEST).write_text(info.model_dump_json())
    with pytest.raises(ModelIntegrityError, match="resolves outside"):
        verify(model)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("..", '".."'),
        ("a/..", '".."'),
        ("a/", "empty"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
    ],
)
def test_member_path_names_what_is_wrong(tmp_path: Path, name: str, why: str) -> None:
    with pytest.raises(ModelIntegrityError, match=why):
        member_path(tmp_path, name, "the test")


def test_member_path_keeps_good_names_below_the_root(tmp_path: Path) -> None:
    assert member_path(tmp_path, "a/b.json", "the test") == tmp_path / "a" / "b.json"
    assert member_path(tmp_path, "..a/b..", "the test") == tmp_path / "..a" / "b.."


def test_a_name_that_is_another_ones_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="folder"):
        member_paths(tmp_path, ["a/b", "a", "c"], "the test")
