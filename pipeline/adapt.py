"""Task-adaptive pretraining: masked-language-model training of the encoder on the run's own
training texts before it is fine-tuned, so that it has read news like the news it will classify.

Only the training split's texts are read, never the validation split's or test.csv's. A base
model without a masked-LM head of its own (the packaged MiniLM ships none) gets a new one; its
output layer stays tied to the input embeddings. Each step scores the masked positions only:
a vocabulary-wide output at every position would cost half as much again as the step.

Adaptation runs in the training loop (pipeline.loop) with hooks of its own: its curve, its pace
against a budget, progress as the train stage's "adapt" phase, checkpoints. Once it ends,
fine-tuning starts over from a new classifier over the adapted encoder (StartOver).
"""

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from pipeline import loop
from pipeline.checkpoint_state import Checkpoint, Phase, SavedCheckpoint, save_checkpoint
from pipeline.hooks import Checkpointing, Progress
from pipeline.loop import Action, Batches, Clock, Hook, LossWindow, Stepped, finished
from pipeline.modeling import (
    Batch,
    Padding,
    autocast,
    bucketed_batches,
    collate,
    quiet_transformers,
    to_device,
)
from pipeline.plan import Probe, Rate, Schedule
from pipeline.trainer import Examples, Run, Trainer
from shared.contracts.jobs import EventType
from shared.contracts.training import AdaptationPlan, TrainConfig
from shared.hub import hub_model

ADAPT_PHASE: Phase = "adapt"  # the train stage's progress while it adapts the encoder
ADAPT_CURVE_POINTS = 100
IGNORED = -100  # the label of a position that is not scored
SCORED_ROWS = 64
# Of the positions chosen, these shares are masked, replaced by a random token, or left as they
# are (BERT's recipe: the model cannot tell which unmasked tokens it is asked about).
MASKED, RANDOM = 0.8, 0.1
# The module that turns hidden states into vocabulary scores, per family: with it, only the
# masked positions are scored. Other families score every position.
_HEADS = {
    "bert": "cls",
    "albert": "predictions",
    "roberta": "lm_head",
    "xlm-roberta": "lm_head",
    "camembert": "lm_head",
    "mpnet": "lm_head",
}


def unadaptable(model_type: str, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Why a base model cannot be adapted here, or None when it can."""
    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return f"{model_type} models have no masked-language-model form"
    if tokenizer.mask_token_id is None:
        return "the tokenizer has no mask token"
    return None


def mask_tokens(
    batch: Batch,
    specials: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    rate: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels): `rate` of each row's real tokens chosen (at least one), labels holding
    their ids and IGNORED elsewhere; of the chosen, MASKED become the mask token, RANDOM a random
    token, the rest stay."""
    ids = batch["input_ids"]
    candidates = batch["attention_mask"].bool() & ~torch.isin(ids, specials)
    draw = torch.rand(ids.shape, generator=generator)
    chosen = candidates & (draw < rate)
    lowest = torch.where(candidates, draw, 2.0).argmin(dim=1, keepdim=True)
    unchosen = ~chosen.any(dim=1, keepdim=True) & candidates.any(dim=1, keepdim=True)
    chosen |= torch.zeros_like(chosen).scatter(1, lowest, unchosen)
    labels = torch.where(chosen, ids, IGNORED)
    how = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = torch.where(chosen & (how < MASKED), mask_id, ids)
    inputs = torch.where(chosen & (how >= MASKED) & (how < MASKED + RANDOM), random_ids, inputs)
    return inputs, labels


def scored_rows(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat positions to score and their labels, padded to a multiple of SCORED_ROWS with
    the first position, labelled IGNORED. The head's shapes then repeat from batch to batch:
    with one shape per count of masked tokens, the CPU's kernels were built afresh at most
    steps, and on the AMX Xeon a worker's memory grew by 5 MB a second to 9 GB in an epoch while
    its steps slowed by a quarter (bench/RESULTS.md)."""
    flat = labels.flatten()
    picked = (flat != IGNORED).nonzero().squeeze(1)
    padding = -len(picked) % SCORED_ROWS
    picked = torch.cat([picked, picked.new_zeros(padding)])
    targets = torch.cat([flat[picked[: len(picked) - padding]], flat.new_full((padding,), IGNORED)])
    return picked, targets


@dataclass
class AdaptState:
    """Where adaptation is, and what fine-tuning needs once it ends: a checkpoint saves it."""

    step: int = 0
    total: int = 0
    seconds: float = 0.0  # adaptation's own
    loop_seconds: float = 0.0  # the training loop's at the last checkpoint, timed steps included
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    # The AdaptationPlan, and the fine-tuning Probe's fields that chose it: fine-tuning is planned
    # from them once adaptation ends, however often the job was restarted in between.
    plan: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)


class Adapter:
    """A masked-LM over the base model's encoder, its optimizer and schedule, and its place."""

    def __init__(
        self,
        base: str,
        tokenizer: PreTrainedTokenizerBase,
        config: TrainConfig,
        padding: Padding,
        device: torch.device,
        bf16: bool,
        total: int,
    ) -> None:
        quiet_transformers()
        source, revision = hub_model(base)
        model: PreTrainedModel = AutoModelForMaskedLM.from_pretrained(
            source, revision=revision, local_files_only=Path(base).is_dir(), use_safetensors=True
        )
        self.model = to_device(model, device)
        self.config = config
        self.padding = padding
        self.device = device
        self.bf16 = bf16
        self.mask_id = int(tokenizer.mask_token_id)
        self.vocab_size = int(model.config.vocab_size)
        self.specials = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.head_name = _HEADS.get(model.config.model_type)
        decays = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
        rest = [p for n, p in model.named_parameters() if p.ndim < 2 or "LayerNorm" in n]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decays, "weight_decay": config.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=config.adapt_lr,
            fused=True,
        )
        self.schedule = Schedule.over(total, config.warmup, total=total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.state = AdaptState(total=total, config=config.model_dump(mode="json"))

    def batches(self, lengths: Sequence[int], epoch: int) -> list[np.ndarray]:
        """One epoch's batches: the fine-tuning's bucketing, in an order of their own."""
        config = self.config
        return bucketed_batches(
            lengths, config.batch_size, config.bucket_pool, config.seed + 1_000 + epoch
        )

    def step(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, int]:
        """One optimizer step on one batch: its loss, still on the device, and padded tokens."""
        batch = collate(rows, self.padding, torch.device("cpu"))
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.state.step)
        inputs, labels = mask_tokens(
            batch, self.specials, self.mask_id, self.vocab_size, self.config.adapt_mask, generator
        )
        attention = batch["attention_mask"].to(self.device)
        self.model.train()
        with autocast(self.device, self.bf16):
            loss = self.loss(inputs.to(self.device), attention, labels.to(self.device))
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return loss.detach(), int(inputs.numel())

    def loss(
        self, inputs: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy over the labelled positions, scoring only them where the family's
        head is known."""
        if self.head_name is None:
            logits = self.model(input_ids=inputs, attention_mask=attention).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        hidden = self.model.base_model(input_ids=inputs, attention_mask=attention)[0]
        picked, targets = scored_rows(labels)
        logits = getattr(self.model, self.head_name)(hidden.flatten(0, 1)[picked])
        return F.cross_entropy(logits.float(), targets)

    def into(self, classifier: PreTrainedModel) -> None:
        """Put the adapted encoder into a classifier of the same base; what the masked-LM has no
        part of (BERT's pooler) stays as the base model has it."""
        source = self.model.base_model.state_dict()
        result = classifier.base_model.load_state_dict(source, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"the classifier has no place for {result.unexpected_keys}")
        strays = [key for key in result.missing_keys if not key.startswith("pooler.")]
        if strays:
            raise ValueError(f"the adapted encoder lacks {strays}")

    def resumable(self) -> bool:
        """Whether a checkpoint now would have chosen adaptation left to resume."""
        return self.state.plan is not None and self.state.step < self.state.total

    def checkpoint(self, loop_seconds: float) -> Checkpoint:
        """What a checkpoint saves now, the training loop having run loop_seconds."""
        self.state.loop_seconds = loop_seconds
        return Checkpoint(
            ADAPT_PHASE,
            self.state.step,
            dataclasses.asdict(self.state),
            {"model": self.model},
            self.optimizer,
            self.scheduler,
            self.device,
        )

    def restore(self, saved: SavedCheckpoint) -> None:
        """Go on from a checkpoint of adaptation."""
        saved.restore({"model": self.model}, self.optimizer, self.scheduler, self.device)
        self.state = AdaptState(**saved.state)

    def outcome(self) -> AdaptationPlan:
        """The plan as adaptation went: with its seconds and its first and last losses."""
        losses = [point["loss"] for point in self.state.loss_curve]
        return AdaptationPlan.model_validate(self.state.plan).model_copy(
            update={
                "seconds": round(self.state.seconds, 1),
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
            }
        )


def new_adapter(run: Run) -> Adapter:
    """An adapter of the run's base model, for the steps the config asks."""
    steps = run.planner.adaptation().steps
    tokenizer, config = run.splits.tokenizer, run.config
    return Adapter(run.base, tokenizer, config, run.padding, run.device, run.bf16, steps)


class Adapting:
    """The adapter as the loop steps it: through the training texts, up to `until` steps or to
    its plan's last; it keeps the adaptation's own seconds."""

    def __init__(self, adapter: Adapter, train: Examples, until: int) -> None:
        self.adapter = adapter
        self.ids = train.ids
        self.until = until
        self.started, self.seconds_before = time.monotonic(), adapter.state.seconds

    @property
    def step(self) -> int:
        return self.adapter.state.step

    def going(self) -> bool:
        state = self.adapter.state
        return state.step < min(self.until, state.total)

    def learn(self, batch: np.ndarray) -> Stepped:
        began = time.monotonic()
        loss, tokens = self.adapter.step([self.ids[i] for i in batch])
        self.adapter.state.seconds = self.seconds_before + time.monotonic() - self.started
        return Stepped(self.adapter.state.step, len(batch), tokens, loss, began)


class Timing(Hook):
    """Times each step, once the device has done it, into a probe."""

    def __init__(self, probe: Probe, device: torch.device) -> None:
        self.probe = probe
        self.device = device

    def after_step(self, stepped: Stepped) -> Action | None:
        self.probe.add(stepped.samples, stepped.tokens, finished(self.device) - stepped.began)
        return None


class AdaptationPace(Hook):
    """Chosen adaptation's pace, against a budget: where its steps left and then the whole
    fine-tuning would end past it, adaptation is cut short, its learning rate then decaying to
    zero at the new last step."""

    def __init__(self, adapter: Adapter, run: Run, fine_tuning_s: float, clock: Clock) -> None:
        self.adapter = adapter
        self.run = run
        self.fine_tuning_s = fine_tuning_s
        self.clock = clock
        self.pace = Rate()

    def after_step(self, stepped: Stepped) -> Action | None:
        self.pace.add(stepped.tokens, time.monotonic() - stepped.began)
        if self.pace.steps % max(1, self.run.config.probe_steps) == 0:
            self.keep_to_budget()
        return None

    def keep_to_budget(self) -> None:
        state, pace = self.adapter.state, self.pace
        plan = AdaptationPlan.model_validate(state.plan)
        cut = self.run.planner.adaptation_kept_to_budget(
            plan, self.fine_tuning_s, pace, done=state.step, spent_s=self.clock.spent()
        )
        if cut is None:
            return
        state.plan, state.total = cut.model_dump(mode="json"), cut.steps
        self.adapter.schedule.plan(cut.steps, self.run.config.warmup, state.step)
        message = (
            f"adaptation cut to {cut.steps} of {cut.first_steps} steps at step {state.step}: at "
            f"its pace, {pace.tokens_per_s(1) or 0:.0f} tokens/s, the whole fine-tuning after it "
            "would end past the budget"
        )
        self.run.reporter.event(EventType.log, {"message": message, "adaptation": state.plan})


class AdaptCurve(Hook):
    """Adaptation's curve: about ADAPT_CURVE_POINTS points, each the mean loss since the last."""

    def __init__(self, adapter: Adapter, device: torch.device) -> None:
        self.adapter = adapter
        self.every = max(1, adapter.state.total // ADAPT_CURVE_POINTS)
        self.window = LossWindow(device)

    def after_step(self, stepped: Stepped) -> Action | None:
        self.window.add(stepped.loss, stepped.samples)
        state = self.adapter.state
        if stepped.step % self.every == 0 or stepped.step == state.total:
            state.loss_curve.append({"step": stepped.step, "loss": self.window.take()[0]})
        return None


def adapt(
    run: Run,
    adapter: Adapter,
    train: Examples,
    clock: Clock,
    *,
    until: int,
    probe: Probe | None = None,
) -> None:
    """Masked-LM steps up to `until`, timed into `probe` where there is one: progress as the
    train stage's "adapt" phase, a loss curve, and once adaptation is chosen, checkpoints and,
    with a budget, a pace that may cut it."""
    state, lengths = adapter.state, train.lengths.tolist()
    hooks: list[Hook] = [] if probe is None else [Timing(probe, run.device)]
    if state.probe is not None and state.plan is not None and run.config.budget_s is not None:
        fine_tuning_s = run.planner.fine_tuning_s(Probe(**state.probe))
        hooks.append(AdaptationPace(adapter, run, fine_tuning_s, clock))
    hooks += [
        AdaptCurve(adapter, run.device),
        Progress(adapter, run, phase=ADAPT_PHASE),
        Checkpointing(adapter, run.settings, clock, run.checkpoints),
    ]
    batches = Batches(lambda epoch: adapter.batches(lengths, epoch), run.steps_per_epoch)
    loop.run(Adapting(adapter, train, until), batches, hooks, run.reporter)


@dataclass(frozen=True)
class StartOver(Action):
    """Fine-tuning starts over, from a new classifier over the encoder that the adapter adapts
    first. `probe`: the fine-tuning probe this process timed, which chose adaptation; the new
    plan's pace goes on from its rate."""

    adapter: Adapter
    probe: Probe | None = None


def fine_tuning_after(run: Run, adapter: Adapter, train: Examples, clock: Clock) -> Trainer:
    """Adaptation to its end, then a trainer of a new classifier over the adapted encoder, its
    plan set (from the fine-tuning probe that chose adaptation, where there was one) and
    checkpointed at step 0, so that a lost worker does not adapt again."""
    adapt(run, adapter, train, clock, until=adapter.state.total)
    adaptation = adapter.outcome()
    model = run.classifier()
    adapter.into(model)
    trainer = run.trainer(model)
    trainer.state.seconds = clock.spent()
    trainer.state.adapt_curve = adapter.state.loss_curve
    probe = None if adapter.state.probe is None else Probe(**adapter.state.probe)
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
