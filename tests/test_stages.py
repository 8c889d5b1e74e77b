import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline import stages
from pipeline.holdout import current_holdout, holdout_dir, holdout_rows
from pipeline.linear import LINEAR_CONFIG, LINEAR_WEIGHTS
from shared.contracts.errors import DatasetIntegrityError, DatasetInvalid, NoProductionModel
from shared.contracts.results import StageSeconds
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from testkit.archives import Record, csv_bytes, make_archive, make_zip, mini_records
from testkit.models import Recorder, fast_settings, tiny_model, upload_candidate

# archive_mini's test.csv as make_archive writes it: the holdout of the first dataset
MINI_TEST_SHA256 = hashlib.sha256(csv_bytes(mini_records("test.csv"))).hexdigest()


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
    for member in (LINEAR_CONFIG, LINEAR_WEIGHTS):  # a constant transformer, served alone
        (dest / member).unlink()
    return dest


def keys_under(settings: Settings, prefix: str) -> list[str]:
    listed = s3_client(settings.storage).list_objects_v2(
        Bucket=settings.storage.bucket, Prefix=prefix
    )
    return sorted(item["Key"] for item in listed.get("Contents", []))


def model_keys(settings: Settings) -> list[str]:
    return keys_under(settings, settings.storage.models_prefix)


def ingest(settings: Settings, archive: Path) -> str:
    return stages.ingest(str(archive), settings, Recorder()).dataset_sha256


def register(settings: Settings, model: Path, job_id: str, sha: str) -> str:
    prefix = f"{settings.storage.checkpoints_prefix}{job_id}/final/"
    upload_candidate(settings, model, prefix)
    return stages.evaluate_and_register(job_id, sha, settings, Recorder()).version


def test_ingest_stores_an_accepted_dataset(settings: Settings) -> None:
    recorder = Recorder()
    output = stages.ingest(
        str(make_archive(settings.run.data_dir.parent / "a.zip")), settings, recorder
    )
    assert (
        output.dataset_key
        == f"{settings.storage.datasets_prefix}{output.dataset_sha256}/archive.zip"
    )
    assert output.report.accepted is True
    (report,) = recorder.metrics("validation_report")
    assert report["report"] == output.report.model_dump(mode="json")
    assert recorder.steps("ingest") == [0, 1, 2, 3]
    s3_client(settings.storage).head_object(Bucket=settings.storage.bucket, Key=output.dataset_key)


def test_a_bad_archive_stops_at_ingest(settings: Settings, tmp_path: Path) -> None:
    records = mini_records("train.csv")
    broken = [["7", "A title", "A description"]] * 50 + records
    recorder = Recorder()
    with pytest.raises(DatasetInvalid, match=r"train\.csv"):
        stages.ingest(str(make_archive(tmp_path / "bad.zip", train=broken)), settings, recorder)
    assert recorder.metrics("validation_report")[0]["report"]["accepted"] is False
    with pytest.raises(DatasetInvalid):
        stages.ingest(str(make_zip(tmp_path / "odd.zip", {"x.txt": b"x"})), settings, recorder)
    listed = s3_client(settings.storage).list_objects_v2(Bucket=settings.storage.bucket)
    assert listed.get("KeyCount") == 0


def test_the_first_model_is_promoted_and_a_worse_one_or_a_tie_is_not(
    settings: Settings, model_dir: Path, constant_dir: Path
) -> None:
    sha = ingest(settings, make_archive(settings.run.data_dir.parent / "a.zip"))
    registry = ModelRegistry.from_settings(settings.storage)
    first = register(settings, model_dir, "job-1", sha)
    first_info = registry.get(first)
    assert first_info.metrics.dataset_sha256 == sha
    assert first_info.metrics.accuracy > 0.25
    record = registry.record(first)
    assert record.card is not None
    assert {"README.md", "history.json"} <= set(first_info.files)
    for fact in (first, sha, "## Intended use and limits", "Confusion matrix", "int8"):
        assert fact in record.card
    assert record.history is not None
    assert record.history.validation[-1].step == first_info.params.steps
    curves = f"{len(record.history.train)} training-loss and {len(record.history.validation)} "
    assert curves + "validation points are in history.json" in record.card

    recorder = Recorder()
    decision = stages.promote_if_better(first, settings, recorder)
    # its dataset's test.csv is the holdout: its metrics.json is its holdout score
    assert not [log for log in recorder.logs() if log.startswith("scoring")]
    assert decision.candidate_metrics.split == "holdout"
    assert decision.candidate_metrics.accuracy == first_info.metrics.accuracy
    assert decision.promoted
    assert decision.reason.startswith(
        f"{first} is the first model, with {first_info.metrics.accuracy:.2%} accuracy on the "
        f"holdout {MINI_TEST_SHA256[:12]} (80 rows)"
    )
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


def test_production_is_scored_on_the_holdout_once(
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
    holdout = current_holdout(settings)
    assert holdout is not None
    assert decision.holdout_sha256 == holdout.sha256 == MINI_TEST_SHA256
    assert decision.production_metrics is not None
    assert decision.production_metrics.dataset_sha256 == holdout.sha256
    assert decision.production_metrics.split == "holdout"
    assert decision.production_metrics.n == decision.candidate_metrics.n == 80
    assert decision.production_metrics.model_version == first
    assert decision.production_metrics.accuracy == decision.candidate_metrics.accuracy
    assert decision.candidate_test_metrics is not None
    assert decision.candidate_test_metrics.n == 72
    assert decision.candidate_test_metrics.dataset_sha256 == other_sha
    assert not decision.promoted
    # production's score on this holdout was kept when it was promoted: only the candidate ran
    assert [log for log in recorder.logs() if log.startswith("scoring")] == [
        f"scoring {candidate} on the holdout {holdout.sha256[:12]} (80 rows)"
    ]
    assert recorder.steps("evaluate")[-1] == 80
    again = Recorder()
    assert stages.promote_if_better(candidate, settings, again).reason == decision.reason
    assert again.steps("evaluate") == []


def world_heavy(records: list[Record]) -> list[Record]:
    """The rows relabelled World, but for one row of each other class."""
    seen: set[str] = set()
    out = []
    for klass, title, description in records:
        keep = klass != "1" and klass not in seen
        seen.add(klass)
        out.append([klass if keep else "1", title, description])
    return out


def test_a_candidate_better_on_its_own_test_set_but_worse_on_the_holdout_stays_out(
    settings: Settings, model_dir: Path, constant_dir: Path, tmp_path: Path
) -> None:
    sha = ingest(settings, make_archive(tmp_path / "a.zip"))
    first = register(settings, model_dir, "job-1", sha)
    assert stages.promote_if_better(first, settings, Recorder()).promoted
    production = ModelRegistry.from_settings(settings.storage).get(first).metrics.accuracy

    # an uploader's test.csv on which the always-World model shines: 77 of 80 rows say World
    lenient = settings.replace(min_class_rows=1)
    favouring = make_archive(tmp_path / "b.zip", test=world_heavy(mini_records("test.csv")))
    their_sha = ingest(lenient, favouring)
    candidate = register(lenient, constant_dir, "job-2", their_sha)
    own = ModelRegistry.from_settings(settings.storage).get(candidate).metrics.accuracy
    assert own == 77 / 80
    # compared on that test.csv, as before, the candidate would have won
    assert stages.evaluate_version(first, str(favouring), lenient, Recorder()).accuracy < own

    decision = stages.promote_if_better(candidate, lenient, Recorder())
    assert not decision.promoted
    assert decision.candidate_holdout_accuracy == 0.25
    assert decision.production_holdout_accuracy == production > 0.25
    assert decision.holdout_rows == 80
    assert decision.reason == (
        f"Production {first} stays: {candidate} scored 25.00% accuracy on the holdout "
        f"{MINI_TEST_SHA256[:12]} (80 rows), not above its {production:.2%} on the same rows "
        "(on its own test.csv, which does not decide: 96.25%)."
    )
    pointer = ModelRegistry.from_settings(settings.storage).production()
    assert pointer is not None
    assert pointer.version == first


def test_the_holdout_is_pinned_by_hash_and_no_upload_changes_it(
    settings: Settings, tmp_path: Path
) -> None:
    assert current_holdout(settings) is None
    recorder = Recorder()
    stages.ingest(str(make_archive(tmp_path / "a.zip")), settings, recorder)
    holdout = current_holdout(settings)
    assert holdout is not None
    assert (holdout.sha256, holdout.rows) == (MINI_TEST_SHA256, 80)
    assert holdout.key == f"{settings.storage.holdout_prefix}{MINI_TEST_SHA256}/test.csv"
    assert f"promotion compares models on {holdout.describe()}" in recorder.logs()

    other = mini_records("test.csv")[8:]
    output = stages.ingest(str(make_archive(tmp_path / "b.zip", test=other)), settings, Recorder())
    assert output.report.holdout_sha256 == MINI_TEST_SHA256
    assert output.report.holdout_overlap == 0
    assert current_holdout(settings) == holdout
    assert len(holdout_rows(holdout, settings)) == 80

    # the pinned copy is read only if it still has the pinned sha256
    s3 = s3_client(settings.storage)
    s3.put_object(Bucket=settings.storage.bucket, Key=holdout.key, Body=csv_bytes(other))
    shutil.rmtree(holdout_dir(settings))
    with pytest.raises(DatasetIntegrityError, match="does not have the sha256 it is pinned by"):
        holdout_rows(holdout, settings)


def test_a_configured_holdout_is_pinned_by_its_hash(settings: Settings, tmp_path: Path) -> None:
    s3 = s3_client(settings.storage)
    key = "reference/holdout.csv"
    reference = csv_bytes(mini_records("test.csv")[:40])
    s3.put_object(Bucket=settings.storage.bucket, Key=key, Body=reference)
    configured = settings.replace(holdout_key=key)
    holdout = current_holdout(configured)
    assert holdout is not None
    assert (holdout.sha256, holdout.rows) == (hashlib.sha256(reference).hexdigest(), 40)
    assert holdout.source == f"s3://{settings.storage.bucket}/{key}"

    stages.ingest(str(make_archive(tmp_path / "a.zip")), configured, Recorder())
    assert current_holdout(configured) == holdout
    # the object at the key changes: the holdout does not
    s3.put_object(Bucket=settings.storage.bucket, Key=key, Body=csv_bytes(mini_records("test.csv")))
    assert current_holdout(configured) == holdout
    assert len(holdout_rows(holdout, configured)) == 40


def test_an_upload_whose_train_set_holds_the_holdout_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    ingest(settings, make_archive(tmp_path / "a.zip"))
    train = mini_records("train.csv") + mini_records("test.csv")[:2]
    with pytest.raises(DatasetInvalid) as caught:
        stages.ingest(str(make_archive(tmp_path / "b.zip", train=train)), settings, Recorder())
    assert caught.value.message.startswith(
        f"train.csv holds 2 of the 80 texts of the promotion holdout (sha256 "
        f"{MINI_TEST_SHA256[:12]}, 2.5%); at most 0 (1%) may be there"
    )
    listed = s3_client(settings.storage).list_objects_v2(
        Bucket=settings.storage.bucket, Prefix=settings.storage.datasets_prefix
    )
    assert len(listed.get("Contents", [])) == 2  # archive a's archive.zip and report.json


def test_a_failed_registration_leaves_models_untouched(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    sha = ingest(settings, make_archive(tmp_path / "a.zip"))
    first = register(settings, model_dir, "job-1", sha)
    stages.promote_if_better(first, settings, Recorder())
    before = model_keys(settings)
    production = ModelRegistry.from_settings(settings.storage).production()

    broken = tmp_path / "broken" / "model"
    shutil.copytree(model_dir, broken)
    shutil.copy(model_dir.parent / stages.TRAINING, broken.parent / stages.TRAINING)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(Exception, match=r"safetensors|header"):
        register(settings, broken, "job-2", sha)
    assert model_keys(settings) == before
    assert ModelRegistry.from_settings(settings.storage).production() == production


def test_registering_again_returns_the_same_version(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    sha = ingest(settings, make_archive(tmp_path / "a.zip"))
    version = register(settings, model_dir, "job-1", sha)
    # Registered, the job's trained model and checkpoints are let go.
    assert keys_under(settings, f"{settings.storage.checkpoints_prefix}job-1/") == []
    again = stages.evaluate_and_register("job-1", sha, settings, Recorder())
    assert again.version == version
    assert len(ModelRegistry.from_settings(settings.storage).versions()) == 1


def test_a_registered_version_keeps_the_wall_time_of_each_stage(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    sha = ingest(settings, make_archive(tmp_path / "a.zip"))
    upload_candidate(settings, model_dir, f"{settings.storage.checkpoints_prefix}job-1/final/")
    timed = StageSeconds(ingest=2.0, train=30.0)
    info = stages.evaluate_and_register("job-1", sha, settings, Recorder(), timed)

    stored = ModelRegistry.from_settings(settings.storage).get(info.version).metrics.stage_seconds
    assert stored is not None
    assert (stored.ingest, stored.train) == (2.0, 30.0)
    assert stored.evaluate is not None
    assert stored.registration is None, "registration follows the metrics it writes"


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
    assert (
        metrics.accuracy
        == ModelRegistry.from_settings(settings.storage).get(version).metrics.accuracy
    )
    bad = make_zip(tmp_path / "bad.zip", {"train.csv": b"1,a,b\n"})
    with pytest.raises(DatasetInvalid):
        stages.evaluate_version(version, str(bad), settings, Recorder())


def test_the_first_upload_is_held_to_the_holdout_its_test_set_becomes(
    settings: Settings, tmp_path: Path
) -> None:
    train = mini_records("train.csv") + mini_records("test.csv")[:2]
    with pytest.raises(DatasetInvalid, match=r"train\.csv holds 2 of the 80 texts"):
        stages.ingest(str(make_archive(tmp_path / "a.zip", train=train)), settings, Recorder())
    assert current_holdout(settings) is None
    output = stages.ingest(str(make_archive(tmp_path / "b.zip")), settings, Recorder())
    assert output.report.holdout_sha256 == MINI_TEST_SHA256
    assert output.report.holdout_overlap == 0


def test_ingest_fetches_the_exact_object_version_its_event_named(settings: Settings) -> None:
    s3 = s3_client(settings.storage)
    s3.put_bucket_versioning(
        Bucket=settings.storage.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    key = "incoming/v/archive.zip"
    first = make_archive(settings.run.data_dir.parent / "first.zip")
    second = make_archive(settings.run.data_dir.parent / "second.zip", folder="inner/")
    v1 = s3.put_object(Bucket=settings.storage.bucket, Key=key, Body=first.read_bytes())[
        "VersionId"
    ]
    s3.put_object(Bucket=settings.storage.bucket, Key=key, Body=second.read_bytes())
    url = f"s3://{settings.storage.bucket}/{key}"

    named = stages.ingest(url, settings, Recorder(), version_id=v1)
    latest = stages.ingest(url, settings, Recorder())

    assert named.dataset_sha256 == ingest(settings, first)
    assert latest.dataset_sha256 != named.dataset_sha256
