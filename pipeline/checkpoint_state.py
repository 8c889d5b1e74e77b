"""What a checkpoint holds, the same for adaptation and fine-tuning: weights, optimizer and
schedule, random generators and state, written to and read from a CheckpointStore (torch is
needed here, and kept out of pipeline.checkpoints, which the CLI imports before the ML stack)."""

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from botocore.exceptions import BotoCoreError, ClientError
from safetensors.torch import load_file, load_model, save_file, save_model

from pipeline.checkpoints import CheckpointStore

log = logging.getLogger(__name__)

STATE = "trainer.pt"  # the rest of a checkpoint is weights: {name}.safetensors
WEIGHTS = ".safetensors"
# What a checkpoint was taken during: adapting the encoder to the texts, or fine-tuning.
Phase = Literal["adapt", "train"]


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
