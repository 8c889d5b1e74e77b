"""Models for tests and benchmarks: a tiny model trained once a session, recording reporters.

The tiny model is the real base model fine-tuned for a few steps on archive_mini: it loads and
answers like any other, fast.
"""

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.ingest import RawDataset, read_archive
from pipeline.registry import write_manifest
from pipeline.runners import ONNX_DIR
from pipeline.serving import SAMPLE
from pipeline.stages import TRAINING, finish_model
from pipeline.train import fit
from shared.contracts.jobs import EventType
from shared.contracts.models import MANIFEST, ModelInfo, new_version
from shared.settings import Settings, config_for
from shared.storage import s3_client
from testkit.archives import MINI_ARCHIVE

TINY_STEPS = 4
_CACHE: dict[str, Path] = {}


class Recorder:
    """Remembers every progress and event; can fail at a given training step (of fine-tuning, or
    of `fail_phase`), or say the job is cancelled from the start or once asked `cancel_after`
    times (a loop asks once per step)."""

    def __init__(
        self,
        *,
        fail_at: int | None = None,
        fail_phase: str | None = None,
        cancel: bool = False,
        cancel_after: int | None = None,
    ) -> None:
        self.progresses: list[dict[str, Any]] = []
        self.events: list[tuple[EventType, dict[str, Any]]] = []
        self.fail_at = fail_at
        self.fail_phase = fail_phase
        self.cancel = cancel
        self.cancel_after = cancel_after
        self.asked = 0

    def progress(self, data: Mapping[str, Any]) -> None:
        self.progresses.append(dict(data))
        failing = data["stage"] == "train" and data.get("phase") == self.fail_phase
        if self.fail_at is not None and failing and data["step"] >= self.fail_at:
            raise RuntimeError(f"worker lost at step {data['step']}")

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        self.events.append((type_, dict(data)))

    def cancelled(self) -> bool:
        self.asked += 1
        return self.cancel or (self.cancel_after is not None and self.asked > self.cancel_after)

    def steps(self, stage: str = "train") -> list[int]:
        return [data["step"] for data in self.progresses if data["stage"] == stage]

    def logs(self) -> list[str]:
        return [data["message"] for type_, data in self.events if type_ is EventType.log]

    def metrics(self, name: str) -> list[dict[str, Any]]:
        return [
            data
            for type_, data in self.events
            if type_ is EventType.metric and (data.get("name") == name)
        ]


def fast_settings(settings: Settings, **changes: Any) -> Settings:
    return settings.replace(**{"progress_interval_s": 0.0, **changes})


def mini_dataset(settings: Settings | None = None) -> RawDataset:
    return read_archive(MINI_ARCHIVE, settings or Settings())


def tiny_model(root: Path) -> Path:
    """A registered-format model folder (manifest and metrics included), trained once a session."""
    if "model" not in _CACHE:
        _CACHE["model"] = trained_model(root, TINY_STEPS)
    return _CACHE["model"]


def trained_model(root: Path, steps: int) -> Path:
    """The base model fine-tuned for `steps` steps on archive_mini, as root/tiny."""
    settings = Settings(progress_interval_s=60.0, data_dir=root / "data")
    dataset = mini_dataset(settings)
    result = fit(
        config_for(settings.training, "quick", max_steps=steps),
        dataset.train.rows,
        settings,
        Recorder(),
    )
    model_dir = root / "tiny"
    result.save(model_dir)
    training = result.record()
    (root / TRAINING).write_text(training.model_dump_json())
    finish_model(model_dir, dataset, training, settings, Recorder())
    return model_dir


def copy_as_new_version(model_dir: Path, dest: Path, **metrics: Any) -> ModelInfo:
    """The same weights under a new version, with some metrics changed."""
    shutil.copytree(model_dir, dest)
    old = ModelInfo.model_validate_json((dest / MANIFEST).read_bytes())
    (dest / MANIFEST).unlink()
    return write_manifest(
        dest,
        version=new_version(),
        base_model=old.base_model,
        dataset_sha256=old.dataset_sha256,
        metrics=old.metrics.model_copy(update=metrics),
        params=old.params,
    )


def upload_candidate(settings: Settings, model_dir: Path, prefix: str) -> None:
    """Put a trained model where the train stage leaves it: checkpoints/{job}/final/."""
    s3 = s3_client(settings.storage)
    training = model_dir.parent / TRAINING
    for path in sorted(model_dir.iterdir()):
        if path.name not in (MANIFEST, "metrics.json", SAMPLE, ONNX_DIR):
            s3.upload_file(str(path), settings.storage.bucket, prefix + path.name)
    s3.upload_file(str(training), settings.storage.bucket, prefix + TRAINING)
