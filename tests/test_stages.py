import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline import stages
from shared.errors import DatasetInvalid, NoProductionModel
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from tests.archives import make_archive, make_zip, mini_records
from tests.pipeline_support import Recorder, fast_settings, tiny_model, upload_candidate


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def constant_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its classifier set to answer World to everything: 25% accurate."""
    dest = tmp_path_factory.mktemp("constant") / "model"
    shutil.copytree(model_dir, dest)
    shutil.copy(model_dir.parent / stages.TRAINING, dest.parent / stages.TRAINING)
    weights = load_file(dest / "model.safetensors")
    weights["classifier.weight"].zero_()
    weights["classifier.bias"] = torch.tensor([10.0, 0.0, 0.0, 0.0])
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def model_keys(settings: Settings) -> list[str]:
    listed = s3_client(settings).list_objects_v2(
        Bucket=settings.bucket, Prefix=settings.models_prefix
    )
    return sorted(item["Key"] for item in listed.get("Contents", []))


def ingest(settings: Settings, archive: Path) -> str:
    return stages.ingest(str(archive), settings, Recorder()).dataset_sha256


def register(settings: Settings, model: Path, job_id: str, sha: str) -> str:
    prefix = f"{settings.checkpoints_prefix}{job_id}/final/"
    upload_candidate(settings, model, prefix)
    return stages.evaluate_and_register(job_id, sha, settings, Recorder()).version


def test_ingest_stores_an_accepted_dataset(settings: Settings) -> None:
    recorder = Recorder()
    output = stages.ingest(
        str(make_archive(settings.data_dir.parent / "a.zip")), settings, recorder
    )
    assert output.dataset_key == f"{settings.datasets_prefix}{output.dataset_sha256}/archive.zip"
    assert output.report.accepted is True
    (report,) = recorder.metrics("validation_report")
    assert report["report"] == output.report.model_dump(mode="json")
    assert recorder.steps("ingest") == [0, 1, 2, 3]
    s3_client(settings).head_object(Bucket=settings.bucket, Key=output.dataset_key)


def test_a_bad_archive_stops_at_ingest(settings: Settings, tmp_path: Path) -> None:
    records = mini_records("train.csv")
    broken = [["7", "A title", "A description"]] * 50 + records
    recorder = Recorder()
    with pytest.raises(DatasetInvalid, match=r"train\.csv"):
        stages.ingest(str(make_archive(tmp_path / "bad.zip", train=broken)), settings, recorder)
    assert recorder.metrics("validation_report")[0]["report"]["accepted"] is False
    with pytest.raises(DatasetInvalid):
        stages.ingest(str(make_zip(tmp_path / "odd.zip", {"x.txt": b"x"})), settings, recorder)
    listed = s3_client(settings).list_objects_v2(Bucket=settings.bucket)
    assert listed.get("KeyCount") == 0


def test_the_first_model_is_promoted_and_a_worse_one_or_a_tie_is_not(
    settings: Settings, model_dir: Path, constant_dir: Path
) -> None:
    sha = ingest(settings, make_archive(settings.data_dir.parent / "a.zip"))
    registry = ModelRegistry.from_settings(settings)
    first = register(settings, model_dir, "job-1", sha)
    first_info = registry.get(first)
    assert first_info.metrics.dataset_sha256 == sha
    assert first_info.metrics.accuracy > 0.25

    decision = stages.promote_if_better(first, settings, Recorder())
    assert decision.promoted
    assert "first model" in decision.reason
    production = registry.production()
    assert production is not None
    assert production.version == first

    worse = register(settings, constant_dir, "job-2", sha)
    assert registry.get(worse).metrics.accuracy == 0.25
    decision = stages.promote_if_better(worse, settings, Recorder())
    assert not decision.promoted
    assert decision.previous == first
    assert f"Production {first} stays" in decision.reason
    assert "25.00%" in decision.reason
    assert registry.production() == production

    tie = register(settings, model_dir, "job-3", sha)
    decision = stages.promote_if_better(tie, settings, Recorder())
    assert not decision.promoted
    assert registry.production() == production
    assert [info.version for info in registry.versions()] == [tie, worse, first]


def test_production_is_scored_again_on_the_candidates_test_set(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    sha = ingest(settings, make_archive(tmp_path / "a.zip"))
    first = register(settings, model_dir, "job-1", sha)
    stages.promote_if_better(first, settings, Recorder())

    fewer = make_archive(tmp_path / "b.zip", test=mini_records("test.csv")[8:])
    other_sha = ingest(settings, fewer)
    candidate = register(settings, model_dir, "job-2", other_sha)
    recorder = Recorder()
    decision = stages.promote_if_better(candidate, fast_settings(settings), recorder)
    assert decision.production_metrics is not None
    assert decision.production_metrics.dataset_sha256 == other_sha
    assert decision.production_metrics.n == 72
    assert decision.production_metrics.model_version == first
    assert decision.production_metrics.accuracy == decision.candidate_metrics.accuracy
    assert not decision.promoted
    assert recorder.steps("evaluate")[-1] == 72


def test_a_failed_registration_leaves_models_untouched(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    sha = ingest(settings, make_archive(tmp_path / "a.zip"))
    first = register(settings, model_dir, "job-1", sha)
    stages.promote_if_better(first, settings, Recorder())
    before = model_keys(settings)
    production = ModelRegistry.from_settings(settings).production()

    broken = tmp_path / "broken" / "model"
    shutil.copytree(model_dir, broken)
    shutil.copy(model_dir.parent / stages.TRAINING, broken.parent / stages.TRAINING)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(Exception, match=r"safetensors|header"):
        register(settings, broken, "job-2", sha)
    assert model_keys(settings) == before
    assert ModelRegistry.from_settings(settings).production() == production


def test_registering_again_returns_the_same_version(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    sha = ingest(settings, make_archive(tmp_path / "a.zip"))
    version = register(settings, model_dir, "job-1", sha)
    again = stages.evaluate_and_register("job-1", sha, settings, Recorder())
    assert again.version == version
    assert len(ModelRegistry.from_settings(settings).versions()) == 1


def test_evaluate_a_version_or_production(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    archive = make_archive(tmp_path / "a.zip")
    with pytest.raises(NoProductionModel):
        stages.evaluate_version(None, str(archive), settings, Recorder())
    sha = ingest(settings, archive)
    version = register(settings, model_dir, "job-1", sha)
    stages.promote_if_better(version, settings, Recorder())
    metrics = stages.evaluate_version(None, str(archive), settings, Recorder())
    assert metrics.model_version == version
    assert metrics.n == 80
    assert metrics.accuracy == ModelRegistry.from_settings(settings).get(version).metrics.accuracy
    bad = make_zip(tmp_path / "bad.zip", {"train.csv": b"1,a,b\n"})
    with pytest.raises(DatasetInvalid):
        stages.evaluate_version(version, str(bad), settings, Recorder())


def test_ingest_fetches_the_exact_object_version_its_event_named(settings: Settings) -> None:
    s3 = s3_client(settings)
    s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})
    key = "incoming/v/archive.zip"
    first = make_archive(settings.data_dir.parent / "first.zip")
    second = make_archive(settings.data_dir.parent / "second.zip", folder="inner/")
    v1 = s3.put_object(Bucket=settings.bucket, Key=key, Body=first.read_bytes())["VersionId"]
    s3.put_object(Bucket=settings.bucket, Key=key, Body=second.read_bytes())
    url = f"s3://{settings.bucket}/{key}"

    named = stages.ingest(url, settings, Recorder(), version_id=v1)
    latest = stages.ingest(url, settings, Recorder())

    assert named.dataset_sha256 == ingest(settings, first)
    assert latest.dataset_sha256 != named.dataset_sha256
