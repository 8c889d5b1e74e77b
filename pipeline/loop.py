"""The training loop, the same for adaptation and fine-tuning: a learner steps through its batches,
and after each step its hooks do all else (budget, validation, curves, checkpoints, progress).

A hook that needs what the loop cannot do, such as starting fine-tuning over once adaptation is
chosen, returns an action: the loop stops there and returns it to its caller.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from pipeline.report import Reporter, check_cancelled

STAGE = "train"


class Action:
    """What a hook asks of the loop's caller: the loop stops and returns it."""


@dataclass(frozen=True)
class Stepped:
    """One optimizer step, as the hooks see it."""

    step: int  # the steps done, this one included
    samples: int
    tokens: int  # padded tokens in its batch
    loss: torch.Tensor  # still on the device
    began: float  # time.monotonic() before its batch was collated


class Learner(Protocol):
    """What the loop steps: a model's trainer over its examples."""

    @property
    def step(self) -> int:
        """The steps done."""
        ...

    def going(self) -> bool:
        """Whether it has steps left to take."""
        ...

    def learn(self, batch: np.ndarray) -> Stepped:
        """One optimizer step on the examples at these indices."""
        ...


class Hook:
    """One concern of a run, told when the run starts and after each step; either may return an
    action that stops the run. The base does nothing."""

    def start(self) -> Action | None:
        return None

    def after_step(self, stepped: Stepped) -> Action | None:
        return None


class Batches:
    """The batch of any step: its epoch's batches, made once an epoch or once renewed."""

    def __init__(
        self, epoch_batches: Callable[[int], list[np.ndarray]], steps_per_epoch: int
    ) -> None:
        self.epoch_batches = epoch_batches
        self.steps_per_epoch = steps_per_epoch
        self._epoch = -1
        self._batches: list[np.ndarray] = []

    def at(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._batches, self._epoch = self.epoch_batches(epoch), epoch
        return self._batches[index]

    def renew(self) -> None:
        """Make the batches again at the next step: the examples changed."""
        self._epoch = -1


def run(
    learner: Learner, batches: Batches, hooks: Sequence[Hook], reporter: Reporter
) -> Action | None:
    """Step the learner until it is done, or until a hook returns an action, which is returned;
    a cancelled job raises JobCancelled before the next step."""
    for hook in hooks:
        if (action := hook.start()) is not None:
            return action
    while learner.going():
        check_cancelled(reporter, STAGE)
        stepped = learner.learn(batches.at(learner.step))
        for hook in hooks:
            if (action := hook.after_step(stepped)) is not None:
                return action
    return None


class LossWindow:
    """Mean loss and throughput since the last take."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.steps = self.samples = 0
        self.start = time.monotonic()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.loss += loss
        self.steps += 1
        self.samples += samples

    def take(self) -> tuple[float, float]:
        """(mean loss, samples per second) since the last take; starts a new window."""
        now = time.monotonic()
        means = (
            round(float(self.loss) / self.steps, 4),
            round(self.samples / max(now - self.start, 1e-9), 1),
        )
        self.loss.zero_()
        self.steps = self.samples = 0
        self.start = now
        return means


@dataclass
class Clock:
    """The training loop's seconds: those spent before a resume, and those since `started`."""

    before: float
    started: float = field(default_factory=time.monotonic)

    def spent(self) -> float:
        return self.before + time.monotonic() - self.started


def finished(device: torch.device) -> float:
    """The time once the device has done what it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.monotonic()
