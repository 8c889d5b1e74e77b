"""Fine-tuning's trainer, what it trains on, and what a fit works with.

The Trainer carries the model, its optimizer and schedule, where training is and the best weights
so far, all of which a checkpoint saves; FineTuning steps it through the Course, the examples as
the plan has them.
"""

import copy
import dataclasses
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.checkpoint_state import Checkpoint, SavedCheckpoint
from pipeline.checkpoints import CheckpointStore
from pipeline.ingest import Row
from pipeline.linear import log_loss
from pipeline.loop import Batches, Stepped
from pipeline.modeling import (
    Padding,
    autocast,
    bucketed_batches,
    class_probabilities,
    collate,
    encode,
    load_classifier,
    to_device,
)
from pipeline.plan import Planner
from pipeline.report import Reporter
from shared.contracts.jobs import EventType
from shared.contracts.training import TrainConfig, TrainingPlan
from shared.settings import Settings


@dataclass
class TrainState:
    """What a checkpoint records besides weights and optimizer: where training is."""

    step: int = 0
    total: int = 0
    seconds: float = 0.0
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    best_step: int = 0
    evals_without_gain: int = 0
    stopped_early: bool = False
    # The curves so far, as TrainPoint and ValidationPoint fields: a resumed run keeps them.
    train_curve: list[dict[str, float]] = field(default_factory=list)
    validation_curve: list[dict[str, float]] = field(default_factory=list)
    adapt_curve: list[dict[str, float]] = field(default_factory=list)  # AdaptPoint fields
    # The TrainingPlan once chosen, and the TrainConfig it was chosen for: a run resumes only
    # from a checkpoint of the same config, and keeps its plan.
    plan: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)


_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block)\.(\d+)\.")


def _depth(name: str, layers: int) -> int:
    """0 for embeddings, i + 1 for the i-th transformer layer, layers + 1 for what sits on top."""
    found = _LAYER_INDEX.search(name)
    if found is not None:
        return int(found.group(1)) + 1
    return 0 if "embed" in name or ".wte." in name or ".wpe." in name else layers + 1


def param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Weight decay except on biases and norms; with `layer_decay` < 1, each layer's rate is
    that times the rate of the layer above (the head learns at `lr`)."""
    layers = int(
        getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0)
    )
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = param.ndim >= 2 and "LayerNorm" not in name
            groups.setdefault((_depth(name, layers), decays), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decays else 0.0,
            "lr": config.lr * config.layer_decay ** (layers + 1 - min(depth, layers + 1)),
        }
        for (depth, decays), params in sorted(groups.items())
    ]


class Ema:
    """An exponential moving average of a model's weights, in a model of its own."""

    def __init__(self, model: PreTrainedModel, decay: float) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self._live: list[torch.Tensor] = list(model.parameters())
        self._average: list[torch.Tensor] = list(self.model.parameters())

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._average, self._live, 1.0 - decay)


def set_dropout(model: torch.nn.Module, rate: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = rate


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()
    }


@dataclass
class Examples:
    """One split, tokenized: token ids and label ids, row for row, and where a teacher taught,
    its probabilities at the distillation temperature."""

    ids: list[list[int]]
    labels: np.ndarray
    soft: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.ids])


def tempered(log_probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at a temperature from log-probabilities (the same as from logits)."""
    scaled = log_probabilities / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    result: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return result


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    labels: np.ndarray,
    index: np.ndarray,
    max_length: int,
    soft: np.ndarray | None = None,
) -> Examples:
    ids = encode(tokenizer, [rows[i].text for i in index], max_length)
    return Examples(ids, labels[index], None if soft is None else soft[index])


@dataclass(frozen=True)
class Splits:
    """The rows a run trains and validates on, tokenized at any max_length."""

    tokenizer: PreTrainedTokenizerBase
    rows: Sequence[Row]
    labels: np.ndarray
    train_index: np.ndarray
    val_index: np.ndarray
    feedback_rows: int = 0  # people's corrections among the rows, in train_index repeatedly
    soft: np.ndarray | None = None  # a teacher's probabilities for every row, tempered

    def tokenized(self, max_length: int) -> tuple[Examples, Examples]:
        return (
            tokenize(
                self.tokenizer, self.rows, self.labels, self.train_index, max_length, self.soft
            ),
            tokenize(self.tokenizer, self.rows, self.labels, self.val_index, max_length),
        )


def epoch_batches(train: Examples, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """One epoch's batches, the same for the same epoch: a resumed run skips those it did."""
    lengths = [len(ids) for ids in train.ids]
    return bucketed_batches(lengths, config.batch_size, config.bucket_pool, config.seed + epoch)


class Course:
    """What fine-tuning trains and validates on: the config as planned (its max_length and
    epochs), the splits tokenized to its max_length, and each epoch's batches of them."""

    def __init__(
        self,
        config: TrainConfig,
        splits: Splits,
        train: Examples,
        val: Examples,
        steps_per_epoch: int,
    ) -> None:
        self.config = config
        self.splits = splits
        self.train, self.val = train, val
        self.batches = Batches(self._epoch_batches, steps_per_epoch)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return epoch_batches(self.train, self.config, epoch)

    def follow(self, plan: TrainingPlan) -> None:
        """Train as planned: at its max_length (the splits tokenized again where it differs)."""
        if plan.max_length != self.config.max_length:
            self.train, self.val = self.splits.tokenized(plan.max_length)
            self.batches.renew()
        self.config = self.config.model_copy(
            update={"max_length": plan.max_length, "epochs": plan.epochs}
        )


def validate(
    model: PreTrainedModel,
    val: Examples,
    padding: Padding,
    config: TrainConfig,
    device: torch.device,
    bf16: bool,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy on the validation split."""
    probabilities = class_probabilities(
        model, val.ids, padding=padding, batch_size=config.eval_batch_size, device=device, bf16=bf16
    )
    return {
        "accuracy": float((probabilities.argmax(axis=1) == val.labels).mean()),
        "loss": log_loss(probabilities, val.labels),
    }


class Trainer:
    """What training carries from step to step, all of which a checkpoint saves: the model, its
    optimizer and schedule, where training is, and the best weights so far."""

    def __init__(
        self,
        model: PreTrainedModel,
        config: TrainConfig,
        planner: Planner,
        device: torch.device,
        bf16: bool,
    ) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.bf16 = bf16
        self.optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr, fused=True)
        self.schedule = planner.schedule()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.state = TrainState(
            total=self.schedule.total or planner.upper_bound(),
            config=config.model_dump(mode="json"),
        )
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.ema = Ema(model, config.ema_decay) if config.ema_decay > 0 else None

    @property
    def evaluated(self) -> PreTrainedModel:
        """The weights that validation scores and training keeps: the average where there is one."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def plan(self) -> TrainingPlan | None:
        plan = self.state.plan
        return None if plan is None else TrainingPlan.model_validate(plan)

    def adopt(self, plan: TrainingPlan) -> None:
        """Train to the plan: its steps end the run and its schedule."""
        self.state.plan, self.state.total = plan.model_dump(mode="json"), plan.steps
        if self.schedule.total != plan.steps:
            self.schedule.plan(plan.steps, self.config.warmup, self.state.step)

    def step(
        self,
        inputs: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        soft: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One optimizer step on one batch; the batch's cross-entropy, still on the device. With
        a teacher's tempered probabilities (`soft`), distil_weight of the objective is the KL
        divergence from them (times the temperature squared, as Hinton et al. scale it)."""
        config, labels = self.config, labels.to(self.device)
        twice = config.rdrop > 0
        if twice:
            inputs = {name: torch.cat([tensor, tensor]) for name, tensor in inputs.items()}
            labels = torch.cat([labels, labels])
            soft = None if soft is None else torch.cat([soft, soft])
        with autocast(self.device, self.bf16):
            logits = self.model(**inputs).logits.float()
        loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        objective = loss
        if soft is not None and config.distil_weight > 0:
            temperature = config.distil_temperature
            student = F.log_softmax(logits / temperature, dim=-1)
            kd = F.kl_div(student, soft.to(self.device), reduction="batchmean") * temperature**2
            objective = (1 - config.distil_weight) * loss + config.distil_weight * kd
        if twice:
            first, second = F.log_softmax(logits, dim=-1).chunk(2)
            kl = F.kl_div(first, second, log_target=True, reduction="batchmean") + F.kl_div(
                second, first, log_target=True, reduction="batchmean"
            )
            objective = objective + config.rdrop * kl / 2
        torch.autograd.backward(objective)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.state.step)
        self.state.step += 1
        return loss.detach()

    def record(self, scores: Mapping[str, float]) -> None:
        """Keep the weights that score best; stop after `patience` evaluations without gain."""
        state = self.state
        gained = scores["accuracy"] > state.best_accuracy or (
            scores["accuracy"] == state.best_accuracy and scores["loss"] < state.best_loss
        )
        if gained:
            state.best_accuracy, state.best_loss = scores["accuracy"], scores["loss"]
            state.best_step, state.evals_without_gain = state.step, 0
            self.best_weights = _cpu_copy(self.evaluated)
        else:
            state.evals_without_gain += 1
            state.stopped_early = 0 < self.config.patience <= state.evals_without_gain

    def keep_best(self, reporter: Reporter) -> None:
        """Put the best weights back where the last step's are not them."""
        best = self.state.best_step
        if self.best_weights is not None and best != self.state.step:
            self.evaluated.load_state_dict(self.best_weights)
            message = f"kept the best validation checkpoint, from step {best}"
            reporter.event(EventType.log, {"message": message})

    def resumable(self) -> bool:
        """Whether a checkpoint now would have training left to resume."""
        return self.state.step < self.state.total and not self.state.stopped_early

    def checkpoint(self, loop_seconds: float) -> Checkpoint:
        """What a checkpoint saves now, the training loop having run loop_seconds."""
        self.state.seconds = loop_seconds
        models: dict[str, torch.nn.Module] = {"model": self.model}
        if self.ema is not None:
            models["ema"] = self.ema.model
        best = self.best_weights is not None and self.state.best_step != self.state.step
        return Checkpoint(
            "train",
            self.state.step,
            dataclasses.asdict(self.state),
            models,
            self.optimizer,
            self.scheduler,
            self.device,
            {"best": self.best_weights} if best and self.best_weights is not None else {},
        )

    def restore(self, saved: SavedCheckpoint) -> None:
        """Go on from a checkpoint of fine-tuning."""
        models: dict[str, torch.nn.Module] = {"model": self.model}
        if self.ema is not None:
            models["ema"] = self.ema.model
        saved.restore(models, self.optimizer, self.scheduler, self.device)
        self.state = TrainState(**saved.state)
        best = saved.tensors("best")
        if best is not None:
            self.best_weights = best
        elif self.state.best_step == self.state.step > 0:
            self.best_weights = _cpu_copy(self.evaluated)


def classifier(
    base: str, padding: Padding, config: TrainConfig, device: torch.device
) -> PreTrainedModel:
    """The base model with a new head, seeded: the same head however often it is built."""
    torch.manual_seed(config.seed)
    model = to_device(load_classifier(base, padding.pad_id), device)
    if config.dropout is not None:
        set_dropout(model, config.dropout)
    return model


@dataclass(frozen=True)
class Run:
    """What a fit works with once its base model is loaded: `config` is the one asked for (at a
    max_length the model reads), which a checkpoint must match to be resumed."""

    config: TrainConfig
    settings: Settings
    reporter: Reporter
    checkpoints: CheckpointStore | None
    base: str
    model_type: str
    splits: Splits
    padding: Padding
    device: torch.device
    bf16: bool
    planner: Planner

    @property
    def steps_per_epoch(self) -> int:
        return self.planner.workload.steps_per_epoch

    def describe(self) -> str:
        splits, config = self.splits, self.config
        corrections = (
            f", {splits.feedback_rows} of them people's corrections trained on "
            f"{config.feedback_repeat} times each"
            if splits.feedback_rows
            else ""
        )
        taught = (
            f", {config.distil_weight:.0%} of its loss from a teacher's probabilities at "
            f"temperature {config.distil_temperature:g}"
            if splits.soft is not None
            else ""
        )
        return (
            f"training {config.base_model} on {len(splits.train_index)} rows{corrections} "
            f"({len(splits.val_index)} held out for validation) in batches of "
            f"{config.batch_size}{taught}"
        )

    def classifier(self) -> PreTrainedModel:
        return classifier(self.base, self.padding, self.config, self.device)

    def trainer(self, model: PreTrainedModel) -> Trainer:
        return Trainer(model, self.config, self.planner, self.device, self.bf16)


class FineTuning:
    """The trainer as the loop steps it: through the course's batches to the plan's last step,
    or until validation stops it early."""

    def __init__(self, trainer: Trainer, course: Course, run: Run) -> None:
        self.trainer = trainer
        self.course = course
        self.padding = run.padding
        self.device = run.device

    @property
    def step(self) -> int:
        return self.trainer.state.step

    def going(self) -> bool:
        state = self.trainer.state
        return state.step < state.total and not state.stopped_early

    def learn(self, batch: np.ndarray) -> Stepped:
        began = time.monotonic()
        train = self.course.train
        inputs = collate([train.ids[i] for i in batch], self.padding, self.device)
        soft = None if train.soft is None else torch.from_numpy(train.soft[batch])
        loss = self.trainer.step(inputs, torch.from_numpy(train.labels[batch]), soft)
        tokens = int(inputs["input_ids"].numel())
        return Stepped(self.trainer.state.step, len(batch), tokens, loss, began)
