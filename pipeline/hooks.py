"""Hooks of the training loop: progress and checkpoints, which adaptation and fine-tuning both
have, and fine-tuning's curve and validation."""

import time
from typing import Protocol

import torch

from pipeline.checkpoint_state import Checkpoint, save_checkpoint
from pipeline.checkpoints import CheckpointStore
from pipeline.loop import STAGE, Action, Clock, Hook, LossWindow, Stepped
from pipeline.report import Ticker
from pipeline.trainer import Course, Run, Trainer, validate
from shared.contracts.jobs import EventType
from shared.settings import Settings

# About this many points of training loss make a model's curve, however long it trained.
CURVE_POINTS = 200


class Place(Protocol):
    """Where a learner is: the steps done, and those planned."""

    step: int
    total: int


class Scheduled(Protocol):
    """A learner with a place and a learning-rate schedule."""

    @property
    def state(self) -> Place: ...

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler: ...


class Checkpointed(Protocol):
    """A learner that a checkpoint saves."""

    def resumable(self) -> bool:
        """Whether a checkpoint now would be one to resume from."""
        ...

    def checkpoint(self, loop_seconds: float) -> Checkpoint: ...


class Progress(Hook):
    """The train stage's progress, at most every interval and at the last step: the mean loss
    and samples/s since the last report, the learning rate, the epoch, and the phase where it is
    not fine-tuning."""

    def __init__(
        self,
        learner: Scheduled,
        run: Run,
        phase: str | None = None,
    ) -> None:
        self.learner = learner
        self.steps_per_epoch = run.steps_per_epoch
        self.phase = {} if phase is None else {"phase": phase}
        state = learner.state
        interval_s = run.settings.training.progress_interval_s
        self.ticker = Ticker(run.reporter, STAGE, state.total, interval_s, start=state.step)
        self.window = LossWindow(run.device)

    def after_step(self, stepped: Stepped) -> Action | None:
        self.window.add(stepped.loss, stepped.samples)
        self.ticker.total = self.learner.state.total  # as re-planned or cut
        if self.ticker.due(stepped.step):
            loss, samples_per_s = self.window.take()
            self.ticker.send(
                stepped.step,
                **self.phase,
                loss=loss,
                lr=self.learner.scheduler.get_last_lr()[0],
                samples_per_s=samples_per_s,
                epoch=round(stepped.step / self.steps_per_epoch, 3),
            )
        return None


class Checkpointing(Hook):
    """A checkpoint every checkpoint_every_steps steps, and at least every checkpoint_interval_s,
    where it would be one to resume from."""

    def __init__(
        self,
        learner: Checkpointed,
        settings: Settings,
        clock: Clock,
        checkpoints: CheckpointStore | None,
    ) -> None:
        self.learner = learner
        self.settings = settings
        self.clock = clock
        self.checkpoints = checkpoints
        self.last = time.monotonic()

    def after_step(self, stepped: Stepped) -> Action | None:
        settings, now = self.settings, time.monotonic()
        due = stepped.step % settings.training.checkpoint_every_steps == 0 or (
            now - self.last >= settings.training.checkpoint_interval_s
        )
        if due and self.learner.resumable():
            checkpoint = self.learner.checkpoint(self.clock.spent())
            self.last = time.monotonic()
            save_checkpoint(self.checkpoints, checkpoint)
        return None


class TrainCurve(Hook):
    """The training curve: about CURVE_POINTS points, each the mean loss since the last, with
    the learning rate."""

    def __init__(self, trainer: Trainer, run: Run) -> None:
        self.trainer = trainer
        self.steps_per_epoch = run.steps_per_epoch
        self.window = LossWindow(run.device)

    def after_step(self, stepped: Stepped) -> Action | None:
        self.window.add(stepped.loss, stepped.samples)
        state, step = self.trainer.state, stepped.step
        if step % max(1, state.total // CURVE_POINTS) == 0 or step == state.total:
            loss, _ = self.window.take()
            lr = float(self.trainer.scheduler.get_last_lr()[0])
            epoch = round(step / self.steps_per_epoch, 3)
            state.train_curve.append({"step": step, "epoch": epoch, "loss": loss, "lr": lr})
        return None


class Validation(Hook):
    """Validation every eval_every steps and at the last: the trainer keeps the best weights
    and may stop early; each pass is a point of the validation curve and a metric event."""

    def __init__(self, trainer: Trainer, course: Course, run: Run) -> None:
        self.trainer = trainer
        self.course = course
        self.run = run

    def after_step(self, stepped: Stepped) -> Action | None:
        run, state, step = self.run, self.trainer.state, stepped.step
        if step % run.planner.workload.eval_every != 0 and step != state.total:
            return None
        course = self.course
        scores = validate(
            self.trainer.evaluated, course.val, run.padding, course.config, run.device, run.bf16
        )
        self.trainer.record(scores)
        epoch = step / run.steps_per_epoch
        state.validation_curve.append({"step": step, "epoch": round(epoch, 3), **scores})
        run.reporter.event(
            EventType.metric, {"name": "validation", "step": step, "epoch": epoch, **scores}
        )
        return None
