"""The distil profile on tiny models: a random MPNet teaches the packaged MiniLM, through the
train and evaluate stages (S3) and the local command, resumed in each of its phases."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import stages
from pipeline.cli import main
from pipeline.distil import fit_temperature, teacher_base
from shared.contracts.errors import TeacherNotInstalled
from shared.contracts.models import CARD
from shared.contracts.training import DISTILLATIONS, PROFILES
from shared.registry import ModelRegistry, read_object
from shared.settings import Settings
from shared.storage import s3_client
from testkit.archives import MINI_ARCHIVE
from testkit.families import tiny_family_model
from testkit.models import Recorder, fast_settings

STEPS = 3


@pytest.fixture
def fast_distil(monkeypatch: pytest.MonkeyPatch) -> None:
    """distil as it is, less the student's masked-LM epoch (the end-to-end test keeps it), and
    its labels in chunks of 128 rows so that a run can be lost between two."""
    student = PROFILES["distil"].model_copy(update={"adapt_epochs": 0.0})
    monkeypatch.setitem(PROFILES, "distil", student)
    chunked = DISTILLATIONS["distil"].model_copy(update={"label_chunk_rows": 128})
    monkeypatch.setitem(DISTILLATIONS, "distil", chunked)


@pytest.fixture
def teacher_settings(settings: Settings, tmp_path: Path) -> Settings:
    teacher = tiny_family_model("mpnet", tmp_path / "mpnet")
    return fast_settings(settings, teacher_model=str(teacher), checkpoint_every_steps=1)


@pytest.fixture
def dataset_sha(teacher_settings: Settings) -> str:
    return stages.ingest(str(MINI_ARCHIVE), teacher_settings, Recorder()).dataset_sha256


def job_keys(settings: Settings, job_id: str) -> list[str]:
    prefix = f"{settings.storage.checkpoints_prefix}{job_id}/"
    s3 = s3_client(settings.storage)
    listed = s3.list_objects_v2(Bucket=settings.storage.bucket, Prefix=prefix)
    return sorted(item["Key"][len(prefix) :] for item in listed.get("Contents", []))


def phases_seen(recorder: Recorder) -> set[str | None]:
    return {data.get("phase") for data in recorder.progresses if data["stage"] == "train"}


def test_a_distil_job_trains_a_teacher_labels_and_registers_both(
    teacher_settings: Settings, dataset_sha: str
) -> None:
    recorder = Recorder()
    record = stages.train(
        "job-d", dataset_sha, teacher_settings, recorder, profile="distil", max_steps=STEPS
    )

    assert phases_seen(recorder) >= {"teacher", "label", "adapt", None}
    logs = "\n".join(recorder.logs())
    assert "distil plan: 90 minutes in all" in logs
    assert "the teacher labelled 400 texts" in logs
    assert "50% of its loss from a teacher's probabilities" in logs
    teacher = record.params.teacher
    assert teacher is not None
    assert teacher.base_model == teacher_settings.training.teacher_model
    assert teacher.label_seconds > 0
    assert record.params.distil_weight == 0.5
    assert record.params.distil_temperature == teacher.temperature
    assert "teacher/final/training.json" in job_keys(teacher_settings, "job-d")

    registered = stages.evaluate_and_register("job-d", dataset_sha, teacher_settings, Recorder())
    registry = ModelRegistry.from_settings(teacher_settings.storage)
    versions = {info.params.role: info for info in registry.versions()}
    assert set(versions) == {"model", "teacher"}
    assert versions["model"].version == registered.version
    taught = registered.params.teacher
    assert taught is not None
    assert taught.version == versions["teacher"].version
    assert taught.test_accuracy == versions["teacher"].metrics.accuracy
    assert versions["teacher"].params.base_model == teacher.base_model
    assert versions["teacher"].metrics.serving is not None  # its forms timed like any version

    def card(version: str) -> str:
        body = read_object(registry.s3, registry.bucket, registry.key(version, CARD))
        assert body is not None
        return body.decode()

    assert f"Distilled from a teacher (version {taught.version})" in card(registered.version)
    assert "distil run's teacher" in card(taught.version)
    assert job_keys(teacher_settings, "job-d") == []

    again = stages.evaluate_and_register("job-d", dataset_sha, teacher_settings, Recorder())
    assert again.version == registered.version
    assert len(registry.versions()) == 2


class LostInLabelling(Recorder):
    """A worker lost once the teacher has labelled `chunks` chunks."""

    def __init__(self, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks

    def progress(self, data: Mapping[str, Any]) -> None:
        super().progress(data)
        if data.get("phase") == "label" and data["step"] >= 128 * self.chunks:
            raise RuntimeError("worker lost while labelling")


@pytest.mark.usefixtures("fast_distil")
def test_a_lost_teacher_resumes_from_its_checkpoint(
    teacher_settings: Settings, dataset_sha: str
) -> None:
    lost = Recorder(fail_at=2, fail_phase="teacher")
    with pytest.raises(RuntimeError, match="worker lost at step 2"):
        stages.train(
            "job-t", dataset_sha, teacher_settings, lost, profile="distil", max_steps=STEPS
        )
    assert "teacher/latest.json" in job_keys(teacher_settings, "job-t")

    recorder = Recorder()
    stages.train(
        "job-t", dataset_sha, teacher_settings, recorder, profile="distil", max_steps=STEPS
    )
    assert "resumed from the checkpoint at step 1 of 3" in recorder.logs()
    teacher_steps = [d["step"] for d in recorder.progresses if d.get("phase") == "teacher"]
    assert teacher_steps == [2, 3]
    assert not [key for key in job_keys(teacher_settings, "job-t") if "step-" in key]


@pytest.mark.usefixtures("fast_distil")
def test_lost_labelling_keeps_the_chunks_it_labelled(
    teacher_settings: Settings, dataset_sha: str
) -> None:
    with pytest.raises(RuntimeError, match="worker lost while labelling"):
        stages.train(
            "job-l",
            dataset_sha,
            teacher_settings,
            LostInLabelling(2),
            profile="distil",
            max_steps=STEPS,
        )
    kept = [key for key in job_keys(teacher_settings, "job-l") if key.startswith("teacher/labels")]
    assert kept == ["teacher/labels/00000.npy", "teacher/labels/00001.npy"]

    recorder = Recorder()
    record = stages.train(
        "job-l", dataset_sha, teacher_settings, recorder, profile="distil", max_steps=STEPS
    )
    assert "the teacher was fine-tuned by an earlier run" in recorder.logs()
    assert "teacher" not in phases_seen(recorder)
    labelled = [d["step"] for d in recorder.progresses if d.get("phase") == "label"]
    assert labelled[0] == 256  # from the third chunk on
    assert labelled[-1] == 400
    assert record.params.teacher is not None


@pytest.mark.usefixtures("fast_distil")
def test_a_lost_student_resumes_with_the_teacher_and_labels_kept(
    teacher_settings: Settings, dataset_sha: str
) -> None:
    with pytest.raises(RuntimeError, match="worker lost at step 2"):
        stages.train(
            "job-s",
            dataset_sha,
            teacher_settings,
            Recorder(fail_at=2),
            profile="distil",
            max_steps=STEPS,
        )
    recorder = Recorder()
    record = stages.train(
        "job-s", dataset_sha, teacher_settings, recorder, profile="distil", max_steps=STEPS
    )
    assert phases_seen(recorder) == {None}  # no teacher steps and no labelling again
    assert "resumed from the checkpoint at step 1 of 3" in recorder.logs()
    assert recorder.steps() == [2, 3]
    assert record.params.steps == STEPS
    assert record.params.teacher is not None


@pytest.mark.usefixtures("fast_distil")
def test_the_local_command_writes_the_student_and_its_teacher(
    teacher_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AGNEWS_TEACHER_MODEL", teacher_settings.training.teacher_model)
    monkeypatch.setenv("AGNEWS_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "student"
    argv = ["train", "--data", str(MINI_ARCHIVE), "--profile", "distil", "--out", str(out)]
    assert main([*argv, "--max-steps", str(STEPS), "--json"]) == 0

    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    teacher_dir = tmp_path / "student-teacher"
    assert summary["teacher"]["model_dir"] == str(teacher_dir)
    student = json.loads((out / "manifest.json").read_text())
    teacher = json.loads((teacher_dir / "manifest.json").read_text())
    assert (
        student["params"]["teacher"]["version"]
        == teacher["version"]
        == summary["teacher"]["version"]
    )
    assert teacher["params"]["role"] == "teacher"
    assert not (tmp_path / "student.distil").exists()
    assert not (tmp_path / "student.checkpoints").exists()


def test_a_missing_teacher_is_a_clear_error(settings: Settings) -> None:
    missing = settings.replace(teacher_model="all-mpnet-base-v2")
    with pytest.raises(TeacherNotInstalled, match="agnews models fetch-base mpnet"):
        teacher_base(missing)


def test_the_teacher_is_found_by_name_under_the_data_directory(
    settings: Settings, tmp_path: Path
) -> None:
    folder = settings.run.data_dir / "base-models" / "tiny-mpnet"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tiny_family_model("mpnet", tmp_path / "mpnet").rename(folder)
    assert teacher_base(settings.replace(teacher_model="tiny-mpnet")) == str(folder)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_the_temperature_softens_an_overconfident_teacher_and_sharpens_a_timid_one(
    rng: np.random.Generator,
) -> None:
    labels = rng.integers(0, 4, size=2000)
    right = rng.random(2000) < 0.8  # 80 % right
    answers = np.where(right, labels, (labels + 1) % 4)
    logits = np.full((2000, 4), 0.0)
    logits[np.arange(2000), answers] = 1.0

    def log_probs(scale: float) -> np.ndarray:
        scaled = logits * scale
        return scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))

    # calibrated: the top class's probability near 0.8, at a scale near log(0.8 / (0.2 / 3)) = 2.5
    assert fit_temperature(log_probs(10.0), labels) > 2.5  # 99.9 % sure, right 80 % of the time
    assert fit_temperature(log_probs(1.0), labels) < 0.7  # 47 % sure, right 80 % of the time
    assert 0.7 < fit_temperature(log_probs(2.5), labels) < 1.4
