"""Fine-tuning: the training loop over length-bucketed batches, with hooks for the budget,
validation, curves, checkpoints (to resume from) and progress, and where the config asks and the
budget holds it, adaptation of the encoder to the texts first.

A stratified validation split carved from train.csv chooses the model (the best evaluation wins)
and stops training early; test.csv is never looked at here.
"""

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline import loop
from pipeline.adapt import StartOver, fine_tuning_after, new_adapter
from pipeline.budget import Budget
from pipeline.checkpoint_state import SavedCheckpoint
from pipeline.checkpoints import CheckpointStore
from pipeline.hooks import Checkpointing, Progress, TrainCurve, Validation
from pipeline.ingest import Row
from pipeline.linear import LinearConfig, LinearMember, fit_linear, fit_weight
from pipeline.loop import Clock
from pipeline.modeling import (
    bf16_supported,
    class_probabilities,
    configure_torch,
    load_tokenizer,
    padding_of,
    readable_length,
    resolve_base_model,
)
from pipeline.plan import Planner, Probe, Workload
from pipeline.registry import UNSAFE_SUFFIXES
from pipeline.report import Reporter
from pipeline.trainer import (
    Course,
    FineTuning,
    Run,
    Splits,
    Trainer,
    TrainState,
    classifier,
    tempered,
)
from shared.contracts.jobs import EventType
from shared.contracts.labels import LABELS
from shared.contracts.results import (
    AdaptPoint,
    MemberScores,
    TrainingHistory,
    TrainingRecord,
    TrainPoint,
    ValidationPoint,
    ValidationScores,
)
from shared.contracts.training import BlendMixing, TrainConfig, TrainingParams, TrainingPlan
from shared.settings import Settings


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
    feedback_rows: int = 0

    def record(self) -> TrainingRecord:
        """What a registered model keeps of its training."""
        plan = self.state.plan
        params = TrainingParams(
            **self.config.model_dump(),
            rows_trained=self.rows_trained,
            rows_validated=self.validation.n,
            feedback_rows=self.feedback_rows,
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


def split_rows(
    labels: np.ndarray, config: TrainConfig, feedback: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: a stratified validation split, then the training subset;
    the `feedback` rows are trained on always, `feedback_repeat` times each, and never validate."""
    pinned = np.asarray(feedback, dtype=np.int64)
    order = stratified_order(labels, config.seed)
    order = order[~np.isin(order, pinned)]
    n_val = min(config.val_max_rows, max(len(LABELS), round(config.val_fraction * len(order))))
    train = order[n_val:][: config.train_rows]
    return np.concatenate([train, np.tile(pinned, config.feedback_repeat)]), order[:n_val]


def prepare(
    config: TrainConfig,
    rows: Sequence[Row],
    settings: Settings,
    reporter: Reporter,
    checkpoints: CheckpointStore | None,
    feedback: Sequence[int] = (),
    teacher: np.ndarray | None = None,
) -> tuple[Run, Course, Trainer]:
    """What a fit works with, the examples it starts on, and a trainer of the base model with a
    new head."""
    device = configure_torch(settings)
    bf16 = config.bf16 and bf16_supported(device)
    labels = np.array([row.label for row in rows], dtype=np.int64)
    train_index, val_index = split_rows(labels, config, feedback)
    base = resolve_base_model(config.base_model)
    tokenizer = load_tokenizer(base)
    padding = padding_of(tokenizer)
    model = classifier(base, padding, config, device)
    max_length = readable_length(config.max_length, tokenizer, model)
    config = config.model_copy(update={"max_length": max_length})
    soft = None
    if teacher is not None and config.distil_weight > 0:
        soft = tempered(teacher, config.distil_temperature)
    splits = Splits(tokenizer, rows, labels, train_index, val_index, len(set(feedback)), soft)
    train, val = splits.tokenized(config.max_length)
    workload = Workload.of(config, train.lengths, val.lengths)
    planner = Planner(workload, device.type, bf16)
    model_type = str(model.config.model_type)
    run = Run(
        config,
        settings,
        reporter,
        checkpoints,
        base,
        model_type,
        splits,
        padding,
        device,
        bf16,
        planner,
    )
    course = Course(config, splits, train, val, workload.steps_per_epoch)
    return run, course, run.trainer(model)


def resume(run: Run, trainer: Trainer) -> tuple[int | None, StartOver | None]:
    """Go on from the latest checkpoint if it trained the same config: fine-tuning at the step
    it was at, keeping its plan (the step is returned), or adaptation, after which fine-tuning
    starts over (the action to do so is returned)."""
    checkpoints = run.checkpoints
    latest = None if checkpoints is None else checkpoints.latest()
    if checkpoints is None or latest is None:
        return None, None
    resumed_from: int | None = None
    start_over: StartOver | None = None
    with tempfile.TemporaryDirectory() as scratch:
        saved = SavedCheckpoint.fetch(checkpoints, latest, Path(scratch))
        if saved is not None and saved.state.get("config") == trainer.state.config:
            if saved.phase == "adapt":
                start_over = StartOver(new_adapter(run))
                start_over.adapter.restore(saved)
            else:
                trainer.restore(saved)
                resumed_from = trainer.state.step
    if start_over is not None:
        state = start_over.adapter.state
        message = (
            f"resumed adapting to the texts from the checkpoint at step {state.step} of "
            f"{state.total}"
        )
    elif resumed_from is not None:
        message = f"resumed from the checkpoint at step {resumed_from} of {trainer.state.total}"
    else:
        message = f"ignored the checkpoint at step {latest}: it trained another config"
    run.reporter.event(EventType.log, {"message": message})
    return resumed_from, start_over


def fine_tune(
    run: Run, course: Course, trainer: Trainer, clock: Clock, *, kept: bool, probe: Probe | None
) -> StartOver | None:
    """The training loop over the course, hooked to the budget, the training curve, validation,
    progress and checkpoints; None once it ends, or where the budget chose adaptation, the
    action that starts fine-tuning over."""
    hooks = [
        Budget(run, trainer, course, clock, kept=kept, probe=probe),
        TrainCurve(trainer, run),
        Validation(trainer, course, run),
        Progress(trainer, run),
        Checkpointing(trainer, run.settings, clock, run.checkpoints),
    ]
    trainer.model.train()
    action = loop.run(FineTuning(trainer, course, run), course.batches, hooks, run.reporter)
    if action is not None and not isinstance(action, StartOver):
        raise TypeError(f"fine-tuning cannot {action}")
    return action


def fit(
    config: TrainConfig,
    rows: Sequence[Row],
    settings: Settings,
    reporter: Reporter,
    checkpoints: CheckpointStore | None = None,
    feedback: Sequence[int] = (),
    teacher: np.ndarray | None = None,
) -> FitResult:
    """The base model fine-tuned on the rows, from the latest checkpoint of the same config
    where there is one; its encoder adapted to their texts first where the config asks for it
    and the budget holds it, which starts fine-tuning over. `feedback`: the indices of rows
    that are people's corrections (see split_rows). `teacher`: a teacher's log-probabilities
    for every row, which distil_weight of the loss learns from (pipeline/distil.py)."""
    run, course, trainer = prepare(config, rows, settings, reporter, checkpoints, feedback, teacher)
    resumed_from, start_over = resume(run, trainer)
    reporter.event(EventType.log, {"message": run.describe()})
    adapting = None if start_over is None else start_over.adapter.state
    clock = Clock(trainer.state.seconds if adapting is None else adapting.loop_seconds)
    kept, probe = resumed_from is not None, None
    while True:
        if start_over is not None:
            del trainer  # the unadapted classifier goes before adaptation goes on
            trainer = fine_tuning_after(run, start_over.adapter, course.train, clock)
            clock, kept = Clock(trainer.state.seconds), False
            probe, start_over = start_over.probe, None  # the adapter goes too
        start_over = fine_tune(run, course, trainer, clock, kept=kept, probe=probe)
        if start_over is None:
            return finish(run, course, trainer, clock, resumed_from)


def finish(
    run: Run, course: Course, trainer: Trainer, clock: Clock, resumed_from: int | None
) -> FitResult:
    """The result once training ends: the best weights kept, with the linear member and its
    blend where the config asks for them."""
    state, splits, reporter = trainer.state, run.splits, run.reporter
    state.seconds = clock.spent()
    trainer.keep_best(reporter)
    model = trainer.evaluated
    validation = ValidationScores(
        n=len(splits.val_index),
        accuracy=state.best_accuracy,
        loss=state.best_loss,
        step=state.best_step,
        steps=state.step,
        stopped_early=state.stopped_early,
    )
    config, train, val = course.config, course.train, course.val
    linear, blend = None, None
    if config.linear_member:
        transformer = class_probabilities(
            model,
            val.ids,
            padding=run.padding,
            batch_size=config.eval_batch_size,
            device=run.device,
        )
        linear, blend = blend_linear(
            [splits.rows[i].text for i in splits.train_index],
            train.labels,
            [splits.rows[i].text for i in splits.val_index],
            val.labels,
            transformer,
            config.blend_mixing,
            reporter,
        )
    rows_trained = len(splits.train_index)
    return FitResult(
        model.cpu(),
        splits.tokenizer,
        config,
        state,
        validation,
        rows_trained,
        resumed_from,
        linear,
        blend,
        feedback_rows=splits.feedback_rows,
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
