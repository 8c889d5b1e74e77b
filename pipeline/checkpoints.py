"""Checkpoints: what one holds, the same for adaptation and fine-tuning, and where they are kept
(a folder of files per step, and which step is the latest).

The latest pointer is written after the step's files, so a crash mid-save leaves the previous
checkpoint in force; older steps are deleted only after it.
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from botocore.exceptions import BotoCoreError, ClientError
from safetensors.torch import load_file, load_model, save_file, save_model

from pipeline.registry import delete_prefix, download_prefix, upload_dir
from shared.registry import read_object
from shared.storage import s3_retry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

LATEST = "latest.json"
STATE = "trainer.pt"  # the rest of a checkpoint is weights: {name}.safetensors
WEIGHTS = ".safetensors"
# What a checkpoint was taken during: adapting the encoder to the texts, or fine-tuning.
Phase = Literal["adapt", "train"]


def _step_name(step: int) -> str:
    return f"step-{step:09d}"


class CheckpointStore(Protocol):
    def latest(self) -> int | None: ...

    def fetch(self, step: int, dest: Path) -> Path:
        """A local folder with the files saved at `step` (dest, or where they already are)."""
        ...

    def save(self, step: int, directory: Path) -> None: ...

    def clear(self) -> None: ...


class LocalCheckpoints:
    def __init__(self, root: Path) -> None:
        self.root = root

    def latest(self) -> int | None:
        try:
            step: int = json.loads((self.root / LATEST).read_text())["step"]
        except FileNotFoundError:
            return None
        return step

    def fetch(self, step: int, dest: Path) -> Path:
        return self.root / _step_name(step)

    def save(self, step: int, directory: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / _step_name(step)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(directory, target)
        pointer = self.root / f".{LATEST}.part"
        pointer.write_text(json.dumps({"step": step}))
        os.replace(pointer, self.root / LATEST)
        for old in self.root.glob("step-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class S3Checkpoints:
    """Checkpoints under an S3 prefix such as checkpoints/{job_id}/ (its final/ is not theirs)."""

    def __init__(self, s3: "S3Client", bucket: str, prefix: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix

    def latest(self) -> int | None:
        body = read_object(self.s3, self.bucket, self.prefix + LATEST)
        if body is None:
            return None
        step: int = json.loads(body)["step"]
        return step

    def fetch(self, step: int, dest: Path) -> Path:
        return download_prefix(self.s3, self.bucket, f"{self.prefix}{_step_name(step)}/", dest)

    @s3_retry
    def save(self, step: int, directory: Path) -> None:
        names = sorted(path.name for path in directory.iterdir() if path.is_file())
        upload_dir(self.s3, self.bucket, f"{self.prefix}{_step_name(step)}/", directory, names)
        self.s3.put_object(
            Bucket=self.bucket,
            Key=self.prefix + LATEST,
            Body=json.dumps({"step": step}).encode(),
            ContentType="application/json",
        )
        for old in self._steps():
            if old != step:
                delete_prefix(self.s3, self.bucket, f"{self.prefix}{_step_name(old)}/")

    def clear(self) -> None:
        for old in self._steps():
            delete_prefix(self.s3, self.bucket, f"{self.prefix}{_step_name(old)}/")
        self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + LATEST)

    def _steps(self) -> list[int]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + "step-", Delimiter="/"
        )
        return [
            int(common.get("Prefix", "").rstrip("/").rsplit("-", 1)[1])
            for page in pages
            for common in page.get("CommonPrefixes", [])
        ]


@dataclass(frozen=True)
class Checkpoint:
    """Training at one step, with all it takes to go on from there: its phase, its models'
    weights and tensors kept beside them (both by file name), the optimizer's and schedule's
    states, the random generators' states, and the fields of its state."""

    phase: Phase
    step: int
    state: dict[str, Any]
    models: Mapping[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    tensors: Mapping[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def save(self, checkpoints: CheckpointStore) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            for name, model in self.models.items():
                save_model(model, str(folder / f"{name}{WEIGHTS}"))
            for name, tensors in self.tensors.items():
                save_file(tensors, str(folder / f"{name}{WEIGHTS}"))
            cuda = self.device.type == "cuda"
            torch.save(
                {
                    "phase": self.phase,
                    "state": self.state,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if cuda else [],
                },
                folder / STATE,
            )
            checkpoints.save(self.step, folder)


def save_checkpoint(checkpoints: CheckpointStore | None, checkpoint: Checkpoint) -> None:
    """Save the checkpoint where there is a store. One lost checkpoint costs at most one interval
    if the worker dies, where failing would cost the whole training: a failed save is logged,
    and the next one is tried as usual."""
    if checkpoints is None:
        return
    try:
        checkpoint.save(checkpoints)
    except (BotoCoreError, ClientError, OSError) as exc:
        log.warning("checkpoint at step %d not saved (%s); training goes on", checkpoint.step, exc)


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint fetched into a folder (read while the folder is there): its state file."""

    folder: Path
    saved: dict[str, Any]

    @classmethod
    def fetch(cls, checkpoints: CheckpointStore, step: int, dest: Path) -> "SavedCheckpoint | None":
        """The checkpoint at `step`; None where it has no state file (another layout's)."""
        folder = checkpoints.fetch(step, dest)
        if not (folder / STATE).exists():
            return None
        return cls(folder, torch.load(folder / STATE, map_location="cpu", weights_only=True))

    @property
    def phase(self) -> Phase:
        phase: Phase = self.saved.get("phase", "train")
        return phase

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.saved["state"]
        return state

    def restore(
        self,
        models: Mapping[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: torch.device,
    ) -> None:
        """Put the saved weights, optimizer, schedule and random generators' states back."""
        for name, model in models.items():
            load_model(model, self.folder / f"{name}{WEIGHTS}", device=str(device))
        optimizer.load_state_dict(self.saved["optimizer"])
        scheduler.load_state_dict(self.saved["scheduler"])
        torch.set_rng_state(self.saved["rng"])
        if self.saved.get("cuda_rng"):
            torch.cuda.set_rng_state_all(self.saved["cuda_rng"])

    def tensors(self, name: str) -> dict[str, torch.Tensor] | None:
        path = self.folder / f"{name}{WEIGHTS}"
        return load_file(path) if path.exists() else None
