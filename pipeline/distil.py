"""Train big, serve small: the `distil` profile.

A larger teacher is fine-tuned on the rows first, under its share of the run's one budget; it
labels every row with its probabilities; the student (the profile's TrainConfig) is then trained
on a mix of the labels and those probabilities at a temperature fitted on the validation split,
with what the budget has left. Each phase keeps what it finished (the teacher's model, each chunk
of labels, the spent seconds) where a run started again after a lost worker finds it, and the
teacher and student checkpoint as any fit does: a resumed run goes on in the phase it was in.
"""

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pydantic import BaseModel

from pipeline.checkpoints import CheckpointStore, LocalCheckpoints, S3Checkpoints
from pipeline.ingest import Row
from pipeline.loop import STAGE, finished
from pipeline.modeling import (
    class_probabilities,
    configure_torch,
    encode,
    load_classifier,
    load_tokenizer,
    padding_of,
    to_device,
)
from pipeline.registry import download_prefix, upload_dir
from pipeline.report import Reporter, Ticker, check_cancelled
from pipeline.train import FitResult, fit, split_rows
from pipeline.trainer import tempered
from shared.contracts.errors import TeacherNotInstalled
from shared.contracts.jobs import EventType
from shared.contracts.labels import LABELS
from shared.contracts.results import TrainingRecord
from shared.contracts.training import Distillation, Teacher, TrainConfig
from shared.registry import read_object
from shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BASE_MODELS_DIR = "base-models"
TEACHER_PHASE = "teacher"
LABEL_PHASE = "label"
TRAINING = "training.json"
TEMPERATURES = np.geomspace(0.5, 8.0, 33)


class DistilState(BaseModel):
    """What labelling measured, kept for a resumed run and the student's budget (the teacher's
    seconds are in its training record)."""

    label_s: float = 0.0
    labelled: bool = False


class Phases(Protocol):
    """Where a distil run keeps its phases' work: the teacher's checkpoints, its finished model
    folder, the labels a chunk at a time, and the run's state."""

    def teacher_checkpoints(self) -> CheckpointStore: ...

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, body: bytes) -> None: ...

    def save_teacher(self, directory: Path) -> None: ...

    def fetch_teacher(self, dest: Path) -> Path | None:
        """The teacher's finished model folder, or None before it finished."""
        ...


class LocalPhases:
    def __init__(self, root: Path) -> None:
        self.root = root

    def teacher_checkpoints(self) -> CheckpointStore:
        return LocalCheckpoints(self.root / "checkpoints")

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def write(self, name: str, body: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        part.write_bytes(body)
        part.replace(path)

    def save_teacher(self, directory: Path) -> None:
        target = self.root / "final"
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(directory.iterdir()):  # training.json last: it says the folder is whole
            if path.name != TRAINING:
                (target / path.name).write_bytes(path.read_bytes())
        (target / TRAINING).write_bytes((directory / TRAINING).read_bytes())

    def fetch_teacher(self, dest: Path) -> Path | None:
        final = self.root / "final"
        return final if (final / TRAINING).is_file() else None


class S3Phases:
    """Under a job's checkpoints/{job_id}/teacher/: its final/ is the teacher to register."""

    def __init__(self, s3: "S3Client", bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix

    def teacher_checkpoints(self) -> CheckpointStore:
        return S3Checkpoints(self.s3, self.bucket, self.prefix)

    def read(self, name: str) -> bytes | None:
        return read_object(self.s3, self.bucket, self.prefix + name)

    def write(self, name: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=body)

    def save_teacher(self, directory: Path) -> None:
        names = sorted(path.name for path in directory.iterdir() if path.name != TRAINING)
        upload_dir(self.s3, self.bucket, self.prefix + "final/", directory, [*names, TRAINING])

    def fetch_teacher(self, dest: Path) -> Path | None:
        if read_object(self.s3, self.bucket, f"{self.prefix}final/{TRAINING}") is None:
            return None
        return download_prefix(self.s3, self.bucket, self.prefix + "final/", dest)


class PhaseReporter:
    """A reporter whose progress and metrics say which phase they are of (the teacher's are not
    the student's curves)."""

    def __init__(self, reporter: Reporter, phase: str) -> None:
        self.reporter, self.phase = reporter, phase

    def progress(self, data: Mapping[str, Any]) -> None:
        inner = data.get("phase")
        self.reporter.progress({**data, "phase": f"{self.phase} {inner}" if inner else self.phase})

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        if type_ is EventType.metric:
            data = {**data, "phase": self.phase}
        self.reporter.event(type_, data)

    def cancelled(self) -> bool:
        return self.reporter.cancelled()


@dataclass(frozen=True)
class Distilling:
    """A fit that distils: the profile's Distillation, where its phases keep their work, and a
    scratch folder for the teacher's model."""

    distillation: Distillation
    phases: Phases
    scratch: Path


@dataclass
class Distilled:
    student: FitResult
    teacher_dir: Path  # its model folder, with its training.json
    teacher: Teacher


def teacher_base(settings: Settings) -> str:
    """The teacher's base model folder: the setting's folder, or its name under the data
    directory's base-models/."""
    name = settings.training.teacher_model
    for candidate in (Path(name), settings.run.data_dir / BASE_MODELS_DIR / name):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise TeacherNotInstalled(
        f"the distil profile's teacher {name!r} is not installed: run `agnews models fetch-base "
        "mpnet` (or `make fetch-mpnet`), or set AGNEWS_TEACHER_MODEL to a model folder"
    )


def fit_temperature(log_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature at which the teacher's probabilities have the least log-loss on these
    rows (temperature scaling, fitted on the validation split)."""

    def loss(temperature: float) -> float:
        probabilities = tempered(log_probabilities, temperature)
        picked = probabilities[np.arange(len(labels)), labels]
        return float(-np.log(np.clip(picked, 1e-12, None)).mean())

    return float(min(TEMPERATURES, key=loss))


def _load_state(phases: Phases) -> DistilState:
    body = phases.read("state.json")
    return DistilState() if body is None else DistilState.model_validate_json(body)


def _save_state(phases: Phases, state: DistilState) -> None:
    phases.write("state.json", state.model_dump_json().encode())


def _plan(distillation: Distillation, teacher: TrainConfig, student: TrainConfig) -> str:
    return (
        f"distil plan: {distillation.budget_s / 60:.0f} minutes in all; the teacher "
        f"{teacher.base_model} fine-tuned in {distillation.teacher_share:.0%} of them, then it "
        f"labels every training text, then the student {student.base_model} trains in what is "
        f"left (at least {distillation.min_student_s / 60:.0f} minutes), "
        f"{student.distil_weight:.0%} of its loss from the teacher"
    )


def train_teacher(
    distillation: Distillation,
    config: TrainConfig,
    rows: Sequence[Row],
    settings: Settings,
    reporter: Reporter,
    phases: Phases,
    feedback: Sequence[int],
    teacher_dir: Path,
) -> Path:
    """The teacher's model folder with its training.json: fitted now (from its checkpoints where
    a run was lost in it) or as an earlier run left it."""
    found = phases.fetch_teacher(teacher_dir)
    if found is not None:
        reporter.event(EventType.log, {"message": "the teacher was fine-tuned by an earlier run"})
        return found
    teacher_config = distillation.teacher_config(teacher_base(settings), config)
    reporter.event(EventType.log, {"message": _plan(distillation, teacher_config, config)})
    checkpoints = phases.teacher_checkpoints()
    result = fit(
        teacher_config,
        rows,
        settings,
        PhaseReporter(reporter, TEACHER_PHASE),
        checkpoints,
        feedback,
    )
    record = result.record()
    record.params.role = "teacher"
    teacher_dir.mkdir(parents=True, exist_ok=True)
    result.save(teacher_dir)
    (teacher_dir / TRAINING).write_text(record.model_dump_json(indent=2))
    phases.save_teacher(teacher_dir)
    checkpoints.clear()
    reporter.event(
        EventType.log,
        {
            "message": f"the teacher reads {record.validation.accuracy:.4f} on the validation "
            f"split after {record.train_seconds / 60:.1f} minutes"
        },
    )
    return teacher_dir


def label(
    distillation: Distillation,
    teacher_dir: Path,
    rows: Sequence[Row],
    settings: Settings,
    reporter: Reporter,
    phases: Phases,
    state: DistilState,
) -> np.ndarray:
    """The teacher's log-probabilities for every row, a chunk at a time: chunks an earlier run
    kept are read, not labelled again."""
    record = TrainingRecord.model_validate_json((teacher_dir / TRAINING).read_bytes())
    chunk = distillation.label_chunk_rows
    chunks = math.ceil(len(rows) / chunk)
    kept: dict[int, np.ndarray] = {}
    for k in range(chunks):
        body = phases.read(f"labels/{k:05d}.npy")
        if body is not None:
            kept[k] = np.frombuffer(body, dtype=np.float32).reshape(-1, len(LABELS))
    if len(kept) < chunks:
        device = configure_torch(settings)
        tokenizer = load_tokenizer(str(teacher_dir))
        padding = padding_of(tokenizer)
        model = to_device(load_classifier(str(teacher_dir), padding.pad_id), device)
        interval = settings.training.progress_interval_s
        ticker = Ticker(reporter, STAGE, len(rows), interval, start=len(kept) * chunk)
        ticker.send(len(kept) * chunk, phase=LABEL_PHASE)
        for k in range(chunks):
            if k in kept:
                continue
            check_cancelled(reporter, STAGE)
            began = time.monotonic()
            texts = [row.text for row in rows[k * chunk : (k + 1) * chunk]]
            ids = encode(tokenizer, texts, record.params.max_length)
            probabilities = class_probabilities(
                model,
                ids,
                padding=padding,
                batch_size=distillation.label_batch_size,
                device=device,
            )
            kept[k] = np.log(np.clip(probabilities, 1e-12, None)).astype(np.float32)
            phases.write(f"labels/{k:05d}.npy", kept[k].tobytes())
            state.label_s += finished(device) - began
            _save_state(phases, state)
            ticker(min((k + 1) * chunk, len(rows)), phase=LABEL_PHASE)
    if not state.labelled:
        state.labelled = True
        _save_state(phases, state)
        reporter.event(
            EventType.log,
            {"message": f"the teacher labelled {len(rows)} texts in {state.label_s:.0f} s"},
        )
    return np.concatenate([kept[k] for k in range(chunks)])


def distil(
    config: TrainConfig,
    distilling: Distilling,
    rows: Sequence[Row],
    settings: Settings,
    reporter: Reporter,
    checkpoints: CheckpointStore | None,
    feedback: Sequence[int] = (),
) -> Distilled:
    """The teacher fine-tuned, its labels, and the student trained on them under what is left
    of the budget; `checkpoints` are the student's, the phases keep the rest."""
    distillation, phases = distilling.distillation, distilling.phases
    state = _load_state(phases)
    teacher_dir = train_teacher(
        distillation,
        config,
        rows,
        settings,
        reporter,
        phases,
        feedback,
        distilling.scratch / TEACHER_PHASE,
    )
    record = TrainingRecord.model_validate_json((teacher_dir / TRAINING).read_bytes())
    log_probabilities = label(distillation, teacher_dir, rows, settings, reporter, phases, state)
    labels = np.array([row.label for row in rows], dtype=np.int64)
    _, val_index = split_rows(labels, config, feedback)
    temperature = fit_temperature(log_probabilities[val_index], labels[val_index])
    budget = distillation.student_budget(record.train_seconds + state.label_s)
    student_config = config.model_copy(
        update={"budget_s": budget, "distil_temperature": temperature}
    )
    reporter.event(
        EventType.log,
        {
            "message": f"the student trains in {budget / 60:.1f} minutes on the labels and the "
            f"teacher's probabilities at temperature {temperature:.3g} (fitted on the "
            f"{len(val_index)} validation rows)"
        },
    )
    student = fit(
        student_config, rows, settings, reporter, checkpoints, feedback, log_probabilities
    )
    teacher = Teacher(
        base_model=record.params.base_model,
        validation_accuracy=record.validation.accuracy,
        train_seconds=record.train_seconds,
        label_seconds=round(state.label_s, 1),
        temperature=temperature,
    )
    return Distilled(student, teacher_dir, teacher)
