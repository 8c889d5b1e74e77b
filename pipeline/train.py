"""Fine-tuning: one training loop over length-bucketed batches, with checkpoints to resume from.

A stratified validation split carved from train.csv chooses the model (the best evaluation wins)
and stops training early; test.csv is never looked at here.
"""

import copy
import dataclasses
import math
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.adapt import ADAPT_PHASE, Adapter, unadaptable
from pipeline.checkpoints import Checkpoint, CheckpointStore, SavedCheckpoint, save_checkpoint
from pipeline.ingest import Row
from pipeline.labels import LABELS
from pipeline.linear import LinearConfig, LinearMember, fit_linear, fit_weight, log_loss
from pipeline.modeling import (
    Batch,
    Padding,
    autocast,
    bf16_supported,
    bucketed_batches,
    class_probabilities,
    collate,
    configure_torch,
    encode,
    load_classifier,
    load_tokenizer,
    padding_of,
    readable_length,
    resolve_base_model,
    to_device,
)
from pipeline.plan import UNTIMED_STEPS, Planner, Probe, Rate, Workload, announce
from pipeline.registry import UNSAFE_SUFFIXES
from pipeline.report import Reporter, Ticker, check_cancelled
from shared.jobs import EventType
from shared.results import (
    AdaptPoint,
    MemberScores,
    TrainingHistory,
    TrainingRecord,
    TrainPoint,
    ValidationPoint,
    ValidationScores,
)
from shared.settings import Settings
from shared.training import (
    AdaptationPlan,
    BlendMixing,
    TrainConfig,
    TrainingParams,
    TrainingPlan,
)

# About this many points of training loss make a model's curve, however long it trained.
CURVE_POINTS = 200
ADAPT_CURVE_POINTS = 100


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


@dataclass
class FitResult:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: TrainConfig
    state: TrainState
    validation: ValidationScores
    rows_trained: int
    resumed_from: int | None
    linear: LinearMember | None = None
    blend: MemberScores | None = None

    def record(self) -> TrainingRecord:
        """What a registered model keeps of its training."""
        plan = self.state.plan
        params = TrainingParams(
            **self.config.model_dump(),
            rows_trained=self.rows_trained,
            rows_validated=self.validation.n,
            steps=self.state.step,
            plan=None if plan is None else TrainingPlan.model_validate(plan),
        )
        history = TrainingHistory(
            train=[TrainPoint.model_validate(point) for point in self.state.train_curve],
            validation=[
                ValidationPoint.model_validate(point) for point in self.state.validation_curve
            ],
            adapt=[AdaptPoint.model_validate(point) for point in self.state.adapt_curve],
        )
        return TrainingRecord(
            params=params,
            validation=self.validation,
            train_seconds=round(self.state.seconds, 1),
            history=history,
            blend=self.blend,
        )

    def save(self, directory: Path) -> None:
        """A loadable model folder: safetensors weights, config with label names, tokenizer."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if self.linear is not None:
            self.linear.save(directory)
        for path in directory.iterdir():
            if path.suffix in UNSAFE_SUFFIXES:
                path.unlink()


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of row indices in which every prefix keeps the classes' proportions."""
    order = np.random.default_rng(seed).permutation(len(labels))
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        members = order[labels[order] == label]
        keys[members] = (np.arange(len(members)) + 0.5) / len(members)
    return order[np.argsort(keys[order], kind="stable")]


def split_rows(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: a stratified validation split, then the training subset."""
    order = stratified_order(labels, config.seed)
    n_val = min(config.val_max_rows, max(len(LABELS), round(config.val_fraction * len(labels))))
    return order[n_val:][: config.train_rows], order[:n_val]


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
    """One split, tokenized: token ids and label ids, row for row."""

    ids: list[list[int]]
    labels: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.ids])


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    labels: np.ndarray,
    index: np.ndarray,
    max_length: int,
) -> Examples:
    return Examples(encode(tokenizer, [rows[i].text for i in index], max_length), labels[index])


@dataclass(frozen=True)
class Splits:
    """The rows a run trains and validates on, tokenized at any max_length."""

    tokenizer: PreTrainedTokenizerBase
    rows: Sequence[Row]
    labels: np.ndarray
    train_index: np.ndarray
    val_index: np.ndarray

    def tokenized(self, max_length: int) -> tuple[Examples, Examples]:
        return (
            tokenize(self.tokenizer, self.rows, self.labels, self.train_index, max_length),
            tokenize(self.tokenizer, self.rows, self.labels, self.val_index, max_length),
        )


def epoch_batches(train: Examples, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """One epoch's batches, the same for the same epoch: a resumed run skips those it did."""
    lengths = [len(ids) for ids in train.ids]
    return bucketed_batches(lengths, config.batch_size, config.bucket_pool, config.seed + epoch)


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

    def step(self, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step on one batch; the batch's loss, still on the device."""
        config, labels = self.config, labels.to(self.device)
        twice = config.rdrop > 0
        if twice:
            inputs = {name: torch.cat([tensor, tensor]) for name, tensor in inputs.items()}
            labels = torch.cat([labels, labels])
        with autocast(self.device, self.bf16):
            logits = self.model(**inputs).logits.float()
        loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        objective = loss
        if twice:
            first, second = F.log_softmax(logits, dim=-1).chunk(2)
            kl = F.kl_div(first, second, log_target=True, reduction="batchmean") + F.kl_div(
                second, first, log_target=True, reduction="batchmean"
            )
            objective = loss + config.rdrop * kl / 2
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


class LossWindow:
    """Mean loss and throughput since the last progress report."""

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


@dataclass(frozen=True)
class Run:
    """What a fit works with once its base model is loaded: `config` is the one asked for (at a
    max_length the model reads), which a checkpoint must match to be resumed."""

    config: TrainConfig
    settings: Settings
    reporter: Reporter
    checkpoints: CheckpointStore | None
    base: str
    splits: Splits
    padding: Padding
    device: torch.device
    bf16: bool
    planner: Planner

    def classifier(self) -> PreTrainedModel:
        """The base model with a new head, seeded: the same head however often it is built."""
        torch.manual_seed(self.config.seed)
        model = to_device(load_classifier(self.base, self.padding.pad_id), self.device)
        if self.config.dropout is not None:
            set_dropout(model, self.config.dropout)
        return model

    def trainer(self, model: PreTrainedModel) -> Trainer:
        return Trainer(model, self.config, self.planner, self.device, self.bf16)

    def adapter(self) -> Adapter:
        steps = self.planner.adaptation().steps
        return Adapter(
            self.base,
            self.splits.tokenizer,
            self.config,
            self.padding,
            self.device,
            self.bf16,
            steps,
        )


def resume(run: Run, trainer: Trainer) -> tuple[int | None, Adapter | None]:
    """Continue from the latest checkpoint if it trained the same config: fine-tuning at the step
    it was at, keeping its plan (the step is returned), or adaptation (its Adapter is)."""
    checkpoints = run.checkpoints
    latest = None if checkpoints is None else checkpoints.latest()
    if checkpoints is None or latest is None:
        return None, None
    resumed_from: int | None = None
    adapter: Adapter | None = None
    with tempfile.TemporaryDirectory() as scratch:
        saved = SavedCheckpoint.fetch(checkpoints, latest, Path(scratch))
        if saved is not None and saved.state.get("config") == trainer.state.config:
            if saved.phase == ADAPT_PHASE:
                adapter = run.adapter()
                adapter.restore(saved)
            else:
                trainer.restore(saved)
                resumed_from = trainer.state.step
    if adapter is not None:
        step, total = adapter.state.step, adapter.state.total
        message = f"resumed adapting to the texts from the checkpoint at step {step} of {total}"
    elif resumed_from is not None:
        message = f"resumed from the checkpoint at step {resumed_from} of {trainer.state.total}"
    else:
        message = f"ignored the checkpoint at step {latest}: it trained another config"
    run.reporter.event(EventType.log, {"message": message})
    return resumed_from, adapter


def adapt(
    run: Run,
    adapter: Adapter,
    train: Examples,
    clock: Clock,
    *,
    until: int,
    probe: Probe | None = None,
) -> None:
    """Masked-LM steps up to `until`: progress as the train stage's "adapt" phase, a loss curve,
    and once adaptation is chosen, checkpoints and, with a budget, a pace that may cut it."""
    state, settings, device = adapter.state, run.settings, run.device
    fine_tuning_s = (
        None
        if state.probe is None or state.plan is None or run.config.budget_s is None
        else run.planner.fine_tuning_s(Probe(**state.probe))
    )
    pace = None if fine_tuning_s is None else Rate()
    steps_per_epoch = run.planner.workload.steps_per_epoch
    lengths = train.lengths.tolist()
    ticker = Ticker(
        run.reporter, "train", state.total, settings.progress_interval_s, start=state.step
    )
    window, curve_window = LossWindow(device), LossWindow(device)
    curve_every = max(1, state.total // ADAPT_CURVE_POINTS)
    started, own_before = time.monotonic(), state.seconds
    last_checkpoint = started
    batches: list[np.ndarray] = []
    batches_epoch = -1
    while state.step < min(until, state.total):
        check_cancelled(run.reporter, "train")
        epoch, index = divmod(state.step, steps_per_epoch)
        if epoch != batches_epoch:
            batches, batches_epoch = adapter.batches(lengths, epoch), epoch
        batch = batches[index]
        began = time.monotonic()
        loss, tokens = adapter.step([train.ids[i] for i in batch])
        seconds = (time.monotonic() if probe is None else _finished(device)) - began
        if probe is not None:
            probe.add(len(batch), tokens, seconds)
        if pace is not None and fine_tuning_s is not None:
            pace.add(tokens, seconds)
            if pace.steps % max(1, run.config.probe_steps) == 0:
                keep_adaptation_to_budget(run, adapter, fine_tuning_s, pace, clock, ticker)
        window.add(loss, len(batch))
        curve_window.add(loss, len(batch))
        if state.step % curve_every == 0 or state.step == state.total:
            state.loss_curve.append({"step": state.step, "loss": curve_window.take()[0]})
        if ticker.due(state.step):
            mean_loss, samples_per_s = window.take()
            ticker.send(
                state.step,
                phase="adapt",
                loss=mean_loss,
                lr=adapter.scheduler.get_last_lr()[0],
                samples_per_s=samples_per_s,
                epoch=round(state.step / steps_per_epoch, 3),
            )
        now = time.monotonic()
        state.seconds = own_before + now - started
        due = state.step % settings.checkpoint_every_steps == 0 or (
            now - last_checkpoint >= settings.checkpoint_interval_s
        )
        if due and adapter.resumable():
            checkpoint, last_checkpoint = adapter.checkpoint(clock.spent()), now
            save_checkpoint(run.checkpoints, checkpoint)


def keep_adaptation_to_budget(
    run: Run, adapter: Adapter, fine_tuning_s: float, pace: Rate, clock: Clock, ticker: Ticker
) -> None:
    """Cut adaptation short where its pace would leave the whole fine-tuning past the budget;
    its learning rate then decays to zero at the new last step."""
    state = adapter.state
    plan = AdaptationPlan.model_validate(state.plan)
    cut = run.planner.adaptation_kept_to_budget(
        plan, fine_tuning_s, pace, done=state.step, spent_s=clock.spent()
    )
    if cut is None:
        return
    state.plan, state.total, ticker.total = cut.model_dump(mode="json"), cut.steps, cut.steps
    adapter.schedule.plan(cut.steps, run.config.warmup, state.step)
    message = (
        f"adaptation cut to {cut.steps} of {cut.first_steps} steps at step {state.step}: at "
        f"its pace, {pace.tokens_per_s(1) or 0:.0f} tokens/s, the whole fine-tuning after it "
        "would end past the budget"
    )
    run.reporter.event(EventType.log, {"message": message, "adaptation": state.plan})


def fine_tuning_after(run: Run, adapter: Adapter, train: Examples, clock: Clock) -> Trainer:
    """Adaptation to its end, then a trainer of a new classifier over the adapted encoder, its
    plan set (from the fine-tuning probe that chose adaptation, where there was one) and
    checkpointed at step 0, so that a lost worker does not adapt again."""
    adapt(run, adapter, train, clock, until=adapter.state.total)
    state = adapter.state
    losses = [point["loss"] for point in state.loss_curve]
    adaptation = AdaptationPlan.model_validate(state.plan).model_copy(
        update={
            "seconds": round(state.seconds, 1),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
        }
    )
    model = run.classifier()
    adapter.into(model)
    trainer = run.trainer(model)
    trainer.state.seconds = clock.spent()
    trainer.state.adapt_curve = state.loss_curve
    probe = None if state.probe is None else Probe(**state.probe)
    plan = (
        run.planner.fixed()
        if probe is None
        else run.planner.plan(probe, spent_s=trainer.state.seconds, done=0)
    )
    trainer.adopt(plan.model_copy(update={"adaptation": adaptation}))
    run.reporter.event(EventType.log, {"message": adaptation.describe()})
    save_checkpoint(run.checkpoints, trainer.checkpoint(trainer.state.seconds))
    model.train()
    return trainer


def adapter_if_it_fits(
    run: Run, model_type: str, plan: TrainingPlan, probe: Probe, train: Examples, clock: Clock
) -> Adapter | AdaptationPlan:
    """With a budget, after fine-tuning's probe: time adaptation's first steps, and where it and
    the whole fine-tuning fit the budget, the adapter to go on with (`fine_tuning_after`); else
    why not."""
    planner, config = run.planner, run.config
    reason = unadaptable(model_type, run.splits.tokenizer)
    if reason is None and not planner.adapts(plan):
        reason = f"the budget does not hold {config.max_epochs:g} epochs of fine-tuning alone"
    if reason is not None:
        return planner.adaptation(chosen=False, reason=reason)
    adapter = run.adapter()
    timing = Probe(config.probe_steps)
    until = min(adapter.state.total, UNTIMED_STEPS + timing.steps)
    adapt(run, adapter, train, clock, until=until, probe=timing)
    if timing.done:
        decision = planner.adapt_or_not(
            probe, timing, done=adapter.state.step, spent_s=clock.spent()
        )
    else:
        decision = planner.adaptation()
    if not decision.chosen:
        return decision
    if decision.predicted_s is not None and decision.fine_tuning_s is not None:
        run.reporter.event(
            EventType.log,
            {
                "message": f"adapting to the texts first: {decision.steps} steps of masked-LM "
                f"({decision.predicted_s / 60:.1f} minutes predicted), then fine-tuning afresh "
                f"({decision.fine_tuning_s / 60:.1f} minutes) within the budget",
                "adaptation": decision.model_dump(mode="json"),
            },
        )
    adapter.state.plan = decision.model_dump(mode="json")
    adapter.state.probe = dataclasses.asdict(probe)
    return adapter


def fit(
    config: TrainConfig,
    rows: Sequence[Row],
    settings: Settings,
    reporter: Reporter,
    checkpoints: CheckpointStore | None = None,
) -> FitResult:
    device = configure_torch(settings)
    bf16 = config.bf16 and bf16_supported(device)
    torch.manual_seed(config.seed)
    labels = np.array([row.label for row in rows], dtype=np.int64)
    train_index, val_index = split_rows(labels, config)
    base = resolve_base_model(config.base_model)
    tokenizer = load_tokenizer(base)
    padding = padding_of(tokenizer)
    model = to_device(load_classifier(base, padding.pad_id), device)
    if config.dropout is not None:
        set_dropout(model, config.dropout)
    config = config.model_copy(
        update={"max_length": readable_length(config.max_length, tokenizer, model)}
    )
    splits = Splits(tokenizer, rows, labels, train_index, val_index)
    train, val = splits.tokenized(config.max_length)

    workload = Workload.of(config, train.lengths, val.lengths)
    steps_per_epoch, eval_every = workload.steps_per_epoch, workload.eval_every
    planner = Planner(workload, device.type, bf16)
    run = Run(config, settings, reporter, checkpoints, base, splits, padding, device, bf16, planner)
    model_type = str(model.config.model_type)
    trainer = run.trainer(model)
    del model  # the trainer's: an adapted run lets go of both before adapting
    resumed_from, adapter = resume(run, trainer)

    reporter.event(
        EventType.log,
        {
            "message": f"training {config.base_model} on {len(train_index)} rows "
            f"({len(val_index)} held out for validation) in batches of {config.batch_size}",
        },
    )
    clock = Clock(trainer.state.seconds if adapter is None else adapter.state.loop_seconds)
    unbudgeted = not planner.measures()
    if adapter is None and resumed_from is None and config.adapt_epochs > 0 and unbudgeted:
        # Without a budget to weigh it against, adaptation runs as the config asks.
        reason = unadaptable(model_type, tokenizer)
        if reason is None:
            adapter = run.adapter()
            adapter.state.plan = planner.adaptation().model_dump(mode="json")
        else:
            not_adapted = planner.adaptation(chosen=False, reason=reason)
            trainer.adopt(planner.fixed().model_copy(update={"adaptation": not_adapted}))
    if adapter is not None:
        del trainer
        trainer = fine_tuning_after(run, adapter, train, clock)
        clock, adapter = Clock(trainer.state.seconds), None
    state = trainer.state
    plan = trainer.plan
    probe = Probe(config.probe_steps) if plan is None and planner.measures() else None
    pace = None
    if probe is None:
        if plan is None:
            trainer.adopt(plan := planner.fixed())
        announce(reporter, plan, kept=resumed_from is not None)
        config, train, val = _follow(plan, config, splits, train, val)
        if plan.budget_s is not None and plan.predicted_s is not None:
            pace = planner.pace(plan)
    ticker = Ticker(reporter, "train", state.total, settings.progress_interval_s, start=state.step)
    last_checkpoint = time.monotonic()
    window, curve_window = LossWindow(device), LossWindow(device)
    batches, batches_epoch = [], -1
    trainer.model.train()
    while state.step < state.total and not state.stopped_early:
        check_cancelled(reporter, "train")
        epoch, index = divmod(state.step, steps_per_epoch)
        if epoch != batches_epoch:
            batches, batches_epoch = epoch_batches(train, config, epoch), epoch
        batch = batches[index]
        began = time.monotonic()
        inputs = collate([train.ids[i] for i in batch], padding, device)
        batch_loss = trainer.step(inputs, torch.from_numpy(train.labels[batch]))
        if probe is not None:
            probe.add(len(batch), _tokens(inputs), _finished(device) - began)
            if probe.done:
                plan = planner.plan(probe, spent_s=clock.spent(), done=state.step)
                adapted = (
                    adapter_if_it_fits(run, model_type, plan, probe, train, clock)
                    if config.adapt_epochs > 0
                    else None
                )
                if isinstance(adapted, Adapter):
                    # The probe's steps trained the unadapted classifier: it goes, with its
                    # optimizer and weight average, and fine-tuning starts over once adapted.
                    del trainer, inputs
                    trainer = fine_tuning_after(run, adapted, train, clock)
                    state, plan = trainer.state, trainer.plan or plan
                    clock = Clock(state.seconds)
                    window, curve_window = LossWindow(device), LossWindow(device)
                    ticker = Ticker(reporter, "train", plan.steps, settings.progress_interval_s)
                else:
                    if adapted is not None:
                        # Timing adaptation took time of the budget too.
                        plan = planner.plan(probe, spent_s=clock.spent(), done=state.step)
                        plan = plan.model_copy(update={"adaptation": adapted})
                    trainer.adopt(plan)
                announce(reporter, plan)
                config, train, val = _follow(plan, config, splits, train, val)
                pace = planner.pace(plan, probe)
                ticker.total, probe, batches_epoch = plan.steps, None, -1
                if isinstance(adapted, Adapter):
                    continue
        elif pace is not None and plan is not None:
            pace.add(_tokens(inputs), time.monotonic() - began)
            if new := planner.kept_to_budget(plan, pace, spent_s=clock.spent(), done=state.step):
                trainer.adopt(plan := new)
                pace.replanned()
                announce(reporter, plan)
                config, train, val = _follow(plan, config, splits, train, val)
                ticker.total = plan.steps
        window.add(batch_loss, len(batch))
        curve_window.add(batch_loss, len(batch))
        epoch_now = round(state.step / steps_per_epoch, 3)
        curve_every = max(1, state.total // CURVE_POINTS)
        if state.step % curve_every == 0 or state.step == state.total:
            mean_loss, _ = curve_window.take()
            lr = float(trainer.scheduler.get_last_lr()[0])
            state.train_curve.append(
                {"step": state.step, "epoch": epoch_now, "loss": mean_loss, "lr": lr}
            )

        if state.step % eval_every == 0 or state.step == state.total:
            scores = validate(trainer.evaluated, val, padding, config, device, bf16)
            trainer.record(scores)
            state.validation_curve.append({"step": state.step, "epoch": epoch_now, **scores})
            reporter.event(
                EventType.metric,
                {
                    "name": "validation",
                    "step": state.step,
                    "epoch": state.step / steps_per_epoch,
                    **scores,
                },
            )

        if ticker.due(state.step):
            loss, samples_per_s = window.take()
            ticker.send(
                state.step,
                loss=loss,
                lr=trainer.scheduler.get_last_lr()[0],
                samples_per_s=samples_per_s,
                epoch=round(state.step / steps_per_epoch, 3),
            )

        now = time.monotonic()
        due = state.step % settings.checkpoint_every_steps == 0 or (
            now - last_checkpoint >= settings.checkpoint_interval_s
        )
        if due and trainer.resumable():
            checkpoint = trainer.checkpoint(clock.spent())
            last_checkpoint = time.monotonic()
            save_checkpoint(run.checkpoints, checkpoint)

    state.seconds = clock.spent()
    trainer.keep_best(reporter)
    model = trainer.evaluated
    validation = ValidationScores(
        n=len(val_index),
        accuracy=state.best_accuracy,
        loss=state.best_loss,
        step=state.best_step,
        steps=state.step,
        stopped_early=state.stopped_early,
    )
    linear, blend = None, None
    if config.linear_member:
        transformer = class_probabilities(
            model, val.ids, padding=padding, batch_size=config.eval_batch_size, device=device
        )
        linear, blend = blend_linear(
            [rows[i].text for i in train_index],
            train.labels,
            [rows[i].text for i in val_index],
            val.labels,
            transformer,
            config.blend_mixing,
            reporter,
        )
    rows_trained = len(train_index)
    return FitResult(
        model.cpu(), tokenizer, config, state, validation, rows_trained, resumed_from, linear, blend
    )


def _tokens(inputs: Batch) -> int:
    return int(inputs["input_ids"].numel())


def _finished(device: torch.device) -> float:
    """The time once the device has done what it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.monotonic()


def _follow(
    plan: TrainingPlan, config: TrainConfig, splits: Splits, train: Examples, val: Examples
) -> tuple[TrainConfig, Examples, Examples]:
    """The config as planned, and the splits tokenized to the plan's max_length."""
    if plan.max_length != config.max_length:
        train, val = splits.tokenized(plan.max_length)
    return (
        config.model_copy(update={"max_length": plan.max_length, "epochs": plan.epochs}),
        train,
        val,
    )


def blend_linear(
    train_texts: Sequence[str],
    train_labels: np.ndarray,
    val_texts: Sequence[str],
    val_labels: np.ndarray,
    transformer: np.ndarray,
    mixing: BlendMixing,
    reporter: Reporter,
) -> tuple[LinearMember, MemberScores]:
    """The linear member, trained on the transformer's rows, and its blend weight, fitted on the
    validation split (test.csv is never seen here)."""
    member = fit_linear(train_texts, train_labels, LinearConfig(mixing=mixing))
    linear = member.probabilities(val_texts)
    weight = fit_weight(transformer, linear, val_labels, mixing)
    member.config.weight = weight
    blended = member.blend(transformer, val_texts)

    def accuracy(probabilities: np.ndarray) -> float:
        return float((probabilities.argmax(axis=1) == val_labels).mean())

    scores = MemberScores(
        n=len(val_labels),
        weight=weight,
        mixing=mixing,
        transformer_accuracy=accuracy(transformer),
        linear_accuracy=accuracy(linear),
        blend_accuracy=accuracy(blended),
    )
    reporter.event(EventType.metric, {"name": "blend", **scores.model_dump()})
    return member, scores
