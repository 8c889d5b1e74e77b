"""Training within a wall-clock budget: time the first steps, then choose how long to train.

The budget covers the training loop, what a run's train_seconds records: every optimizer step
(the timed ones train like any other) and every validation pass. Loading and tokenising before
it, the linear member after it, and the evaluate, register and promote stages lie outside it;
each stage reports its own wall time. A plan fills PLAN_SHARE of the budget and leaves the rest
to checkpoints, progress reports and a machine whose speed drifts. As the run goes on, its rate
since the first timed step (a Pace) re-predicts its end: past the budget, the plan is cut; before
EXTEND_SHARE of it (the machine sped up, or a slow spell passed), it is lengthened, up to
max_epochs. The decay then ends at the new last step, going on from the rate reached.

A step's time is its padded tokens over the measured tokens/s: length-bucketed batches differ
several-fold in width, so a rate in tokens carries from the timed batches to a whole epoch, and
to a shorter max_length, where a rate in samples would not. A validation pass runs forward
only: about a third of a training step's work per token (backward costs twice the forward).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.modeling import bucketed_batches, sorted_batches
from pipeline.report import Reporter
from shared.contracts.jobs import EventType
from shared.contracts.training import AdaptationPlan, TrainConfig, TrainingPlan

UNTIMED_STEPS = 2  # trained, not timed: the first steps pay for allocations and warm caches
PLAN_SHARE = 0.95
EXTEND_SHARE = 0.9  # a run predicted to end before this share of its budget plans more steps
FORWARD_SHARE = 1 / 3
MIN_LENGTH = 32  # the shortest max_length a plan falls back to
SHORTER = 0.75  # each fallback keeps this share of the previous max_length (multiples of 8)


def padded_tokens(batches: Sequence[np.ndarray], lengths: np.ndarray) -> int:
    return int(sum(len(batch) * int(lengths[batch].max()) for batch in batches))


def candidate_lengths(wanted: int) -> list[int]:
    """The profile's max_length first, then ever shorter ones down to MIN_LENGTH."""
    lengths = [wanted]
    while (shorter := int(lengths[-1] * SHORTER) // 8 * 8) >= MIN_LENGTH:
        lengths.append(shorter)
    return lengths


def evaluations(steps: int, every: int) -> int:
    """Validation passes in a run of `steps`: every `every` steps, and at its last step."""
    return steps // every + (steps % every != 0)


@dataclass(frozen=True)
class Workload:
    """One run's epoch and validation pass, in padded tokens at any max_length."""

    config: TrainConfig
    train_lengths: np.ndarray  # tokens per row at config.max_length
    val_lengths: np.ndarray
    steps_per_epoch: int
    eval_every: int

    @classmethod
    def of(
        cls, config: TrainConfig, train_lengths: np.ndarray, val_lengths: np.ndarray
    ) -> "Workload":
        steps_per_epoch = math.ceil(len(train_lengths) / config.batch_size)
        eval_every = max(1, steps_per_epoch // config.evals_per_epoch)
        return cls(config, train_lengths, val_lengths, steps_per_epoch, eval_every)

    def epoch_tokens(self, max_length: int) -> int:
        config = self.config
        lengths = np.minimum(self.train_lengths, max_length)
        batches = bucketed_batches(
            lengths.tolist(), config.batch_size, config.bucket_pool, config.seed
        )
        return padded_tokens(batches, lengths)

    def validation_tokens(self, max_length: int) -> int:
        lengths = np.minimum(self.val_lengths, max_length)
        return padded_tokens(sorted_batches(lengths.tolist(), self.config.eval_batch_size), lengths)

    def steps_for(self, epochs: float) -> int:
        steps = math.ceil(epochs * self.steps_per_epoch)
        return min(steps, self.config.max_steps or steps)

    def step_tokens(self, max_length: int) -> float:
        """A training step's mean padded tokens."""
        return self.epoch_tokens(max_length) / self.steps_per_epoch

    def eval_tokens(self, max_length: int) -> float:
        """A validation pass, in training-step tokens."""
        return self.validation_tokens(max_length) * FORWARD_SHARE

    def work(self, max_length: int) -> "StepWork":
        return StepWork(self.step_tokens(max_length), self.eval_tokens(max_length), self.eval_every)

    def cost(
        self, max_length: int, tokens_per_s: float, *, spent_s: float = 0.0, done: int = 0
    ) -> "Cost":
        """Training at max_length and this rate, going on from `done` steps in spent_s."""
        return self.work(max_length).cost(tokens_per_s, spent_s=spent_s, done=done)


@dataclass(frozen=True)
class StepWork:
    """A run's work at one max_length: a training step's mean padded tokens, and a validation
    pass's (in training-step tokens) every eval_every steps."""

    step_tokens: float
    eval_tokens: float
    eval_every: int

    def cost(self, tokens_per_s: float, *, spent_s: float = 0.0, done: int = 0) -> "Cost":
        """This work at this rate, going on from `done` steps in spent_s."""
        return Cost(
            step_s=self.step_tokens / tokens_per_s,
            eval_s=self.eval_tokens / tokens_per_s,
            eval_every=self.eval_every,
            spent_s=spent_s,
            done=done,
        )


@dataclass
class Probe:
    """Times training steps, after the first UNTIMED_STEPS, on the run's own batches."""

    steps: int
    seen: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, samples: int, tokens: int, seconds: float) -> None:
        self.seen += 1
        if self.seen > UNTIMED_STEPS:
            self.samples += samples
            self.tokens += tokens
            self.seconds += seconds

    @property
    def timed(self) -> int:
        return max(0, self.seen - UNTIMED_STEPS)

    @property
    def done(self) -> bool:
        return self.timed >= self.steps


@dataclass(frozen=True)
class Cost:
    """The training loop's predicted wall time, run on from `done` steps to any step count."""

    step_s: float
    eval_s: float
    eval_every: int
    spent_s: float
    done: int

    def seconds(self, steps: int) -> float:
        evals = evaluations(steps, self.eval_every) - self.done // self.eval_every
        return self.spent_s + (steps - self.done) * self.step_s + evals * self.eval_s

    def most_steps(self, cap: int, budget_s: float) -> int:
        """The most steps up to `cap` that end within budget_s; `done` when none do."""
        low, high = self.done, max(cap, self.done)
        while low < high:
            middle = (low + high + 1) // 2
            if self.seconds(middle) <= budget_s:
                low = middle
            else:
                high = middle - 1
        return low


@dataclass
class Rate:
    """Tokens trained over the seconds their steps took."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds

    def tokens_per_s(self, min_steps: int) -> float | None:
        if self.steps < min_steps or self.seconds <= 0:
            return None
        return self.tokens / self.seconds


@dataclass
class Pace:
    """A planned run's rate over every step timed since the probe began (a burst of load weighs
    by its length), the steps since its plan was last set, and its work at the planned length."""

    work: StepWork
    min_steps: int
    overall: Rate = field(default_factory=Rate)
    since_plan: int = 0

    def add(self, tokens: int, seconds: float) -> None:
        self.overall.add(tokens, seconds)
        self.since_plan += 1

    def replanned(self) -> None:
        self.since_plan = 0

    @property
    def tokens_per_s(self) -> float | None:
        return self.overall.tokens_per_s(self.min_steps)

    def cost(self, *, spent_s: float, done: int) -> Cost | None:
        rate = self.tokens_per_s
        if rate is None:
            return None
        return self.work.cost(rate, spent_s=spent_s, done=done)


@dataclass
class Schedule:
    """The learning-rate factor per step: a linear warm-up to 1 at warmup_steps, then a linear
    decay to 0 at total. A budgeted run starts with a provisional warm-up and no end; `plan`
    sets both, the warm-up going on from the factor the timed steps reached, so the rate never
    jumps. A checkpoint keeps these fields (LambdaLR saves a callable object's attributes)."""

    warmup_steps: int
    total: int | None = None
    from_step: int = -1
    from_factor: float = 0.0

    @classmethod
    def over(cls, steps: int, warmup: float, total: int | None = None) -> "Schedule":
        return cls(warmup_steps=max(1, round(warmup * steps)), total=total)

    def plan(self, total: int, warmup: float, step: int) -> None:
        self.from_factor, self.from_step = self(step), step
        self.warmup_steps, self.total = max(1, round(warmup * total)), total

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            rise = (step - self.from_step) / (self.warmup_steps - self.from_step)
            return self.from_factor + (1.0 - self.from_factor) * rise
        if self.total is None:
            return 1.0
        peak_step, peak = (
            (self.warmup_steps, 1.0)
            if self.warmup_steps > self.from_step
            else (self.from_step, self.from_factor)
        )
        return max(0.0, peak * (self.total - step) / max(1, self.total - peak_step))


@dataclass(frozen=True)
class Planner:
    """Chooses a run's plan: at once when it has no budget (or too few steps to time), else from
    a Probe of its first steps."""

    workload: Workload
    device: str
    bf16: bool

    @property
    def config(self) -> TrainConfig:
        return self.workload.config

    def measures(self) -> bool:
        config = self.config
        timed = UNTIMED_STEPS + config.probe_steps
        return config.budget_s is not None and self.workload.steps_for(config.max_epochs) > timed

    def schedule(self) -> Schedule:
        """A fixed run's whole schedule, or a budgeted run's provisional warm-up (a share of the
        most steps it may plan), which `Schedule.plan` completes."""
        if self.measures():
            return Schedule.over(
                self.workload.steps_for(self.config.max_epochs), self.config.warmup
            )
        steps = self.fixed().steps
        return Schedule.over(steps, self.config.warmup, total=steps)

    def upper_bound(self) -> int:
        """The most steps a plan may choose: what progress shows until there is one."""
        return self.workload.steps_for(self.config.max_epochs)

    def fixed(self) -> TrainingPlan:
        """`epochs` as given, or with a budget and too few steps to time, max_epochs."""
        config = self.config
        epochs = config.epochs if config.budget_s is None else config.max_epochs
        steps = self.workload.steps_for(epochs)
        return TrainingPlan(
            steps=steps,
            epochs=round(steps / self.workload.steps_per_epoch, 3),
            max_length=config.max_length,
            device=self.device,
            bf16=self.bf16,
            budget_s=config.budget_s,
        )

    def plan(self, probe: Probe, *, spent_s: float, done: int) -> TrainingPlan:
        """The most steps (up to max_epochs) that end within the budget at the profile's
        max_length; a shorter one only where not even one epoch fits there."""
        config, workload = self.config, self.workload
        if config.budget_s is None:
            raise ValueError("only a run with a time budget is planned from a probe")
        budget_s = config.budget_s * PLAN_SHARE
        tokens_per_s = probe.tokens / probe.seconds
        cap = self.upper_bound()
        one_epoch = min(cap, workload.steps_per_epoch)
        lengths = candidate_lengths(config.max_length)
        for max_length in lengths:
            cost = workload.cost(max_length, tokens_per_s, spent_s=spent_s, done=done)
            if cost.seconds(one_epoch) <= budget_s:
                break
        steps = cost.most_steps(cap, budget_s)
        return TrainingPlan(
            steps=steps,
            epochs=round(steps / workload.steps_per_epoch, 3),
            max_length=max_length,
            device=self.device,
            bf16=self.bf16,
            budget_s=config.budget_s,
            predicted_s=round(cost.seconds(steps), 1),
            samples_per_s=round(probe.samples / probe.seconds, 2),
            tokens_per_s=round(tokens_per_s, 1),
            timed_steps=probe.timed,
            measured_length=config.max_length,
        )

    def adaptation(self, **fields: object) -> AdaptationPlan:
        """Adaptation as the config asks for it (`adapt_epochs` over the training rows)."""
        config, workload = self.config, self.workload
        steps = math.ceil(config.adapt_epochs * workload.steps_per_epoch)
        return AdaptationPlan.model_validate(
            {
                "steps": steps,
                "epochs": round(steps / workload.steps_per_epoch, 3),
                "rows": len(workload.train_lengths),
                "mask": config.adapt_mask,
                "lr": config.adapt_lr,
                "chosen": True,
                **fields,
            }
        )

    def adapts(self, plan: TrainingPlan) -> bool:
        """Whether adaptation is worth timing: asked for, and the plan holds the whole
        fine-tuning (adaptation never takes fine-tuning's steps)."""
        return self.config.adapt_epochs > 0 and plan.steps >= self.upper_bound()

    def adapt_or_not(
        self, fine_tuning: Probe, adapting: Probe, *, done: int, spent_s: float
    ) -> AdaptationPlan:
        """Adaptation, chosen when its steps left at the timed masked-LM rate, then the whole
        fine-tuning from its first step at the timed fine-tuning rate, end within PLAN_SHARE of
        the budget (the fine-tuning's timed steps are spent and start over)."""
        config, workload = self.config, self.workload
        if config.budget_s is None:
            raise ValueError("only a run with a time budget weighs adaptation against it")
        budget_s = config.budget_s * PLAN_SHARE
        step_tokens = workload.step_tokens(config.max_length)
        adapting_rate = adapting.tokens / adapting.seconds
        plan = self.adaptation()
        fine_tuning_s = self.fine_tuning_s(fine_tuning)
        ends_s = spent_s + (plan.steps - done) * step_tokens / adapting_rate + fine_tuning_s
        chosen = ends_s <= budget_s
        reason = (
            None
            if chosen
            else f"with {config.max_epochs:g} epochs of fine-tuning it would end at "
            f"{ends_s / 60:.1f} minutes, past {budget_s / 60:.1f} of the "
            f"{config.budget_s / 60:.1f}-minute budget"
        )
        return plan.model_copy(
            update={
                "chosen": chosen,
                "predicted_s": round(plan.steps * step_tokens / adapting_rate, 1),
                "tokens_per_s": round(adapting_rate, 1),
                "fine_tuning_s": round(fine_tuning_s, 1),
                "reason": reason,
            }
        )

    def fine_tuning_s(self, probe: Probe) -> float:
        """The whole fine-tuning, from its first step, at the probe's rate."""
        rate = probe.tokens / probe.seconds
        return self.workload.cost(self.config.max_length, rate).seconds(self.upper_bound())

    def adaptation_kept_to_budget(
        self, plan: AdaptationPlan, fine_tuning_s: float, pace: Rate, *, done: int, spent_s: float
    ) -> AdaptationPlan | None:
        """A shorter adaptation when, at its pace so far, its steps left and then the whole
        fine-tuning would end past the budget: the most steps (at least those done) that leave
        the whole fine-tuning within PLAN_SHARE of it. Fine-tuning is what the run is for, so
        adaptation gives way. None while they fit, and until a probe's worth of steps is timed."""
        config = self.config
        rate = pace.tokens_per_s(max(1, config.probe_steps))
        if config.budget_s is None or rate is None:
            return None
        step_s = self.workload.step_tokens(config.max_length) / rate
        if spent_s + (plan.steps - done) * step_s + fine_tuning_s <= config.budget_s:
            return None
        room_s = config.budget_s * PLAN_SHARE - spent_s - fine_tuning_s
        steps = min(plan.steps, done + max(0, math.floor(room_s / step_s)))
        if steps == plan.steps:
            return None
        return plan.model_copy(
            update={
                "steps": steps,
                "epochs": round(steps / self.workload.steps_per_epoch, 3),
                "cut_at_step": done,
                "first_steps": plan.first_steps or plan.steps,
            }
        )

    def pace(self, plan: TrainingPlan, probe: Probe | None = None) -> Pace:
        """The pace a plan is kept to: going on from the probe's timed steps, or for a resumed
        run, from none (it checks once it has timed as many steps as a probe would)."""
        pace = Pace(self.workload.work(plan.max_length), min_steps=max(1, self.config.probe_steps))
        if probe is not None:
            pace.overall = Rate(probe.timed, probe.tokens, probe.seconds)
        return pace

    def kept_to_budget(
        self, plan: TrainingPlan, pace: Pace, *, spent_s: float, done: int
    ) -> TrainingPlan | None:
        """A new plan when, at the pace so far, the steps left would end past the budget, or
        before EXTEND_SHARE of it with steps still to gain: the most steps (up to max_epochs, at
        least those done) that end within PLAN_SHARE of it. None while the plan ends between the
        two, and until a probe's worth of steps has passed since the plan was last set."""
        budget_s = plan.budget_s
        cost = pace.cost(spent_s=spent_s, done=done)
        if budget_s is None or cost is None or pace.since_plan < pace.min_steps:
            return None
        predicted_s = cost.seconds(plan.steps)
        cap = self.upper_bound()
        if EXTEND_SHARE * budget_s <= predicted_s <= budget_s or (
            predicted_s < budget_s and plan.steps >= cap
        ):
            return None
        steps = cost.most_steps(cap, budget_s * PLAN_SHARE)
        if steps == plan.steps:
            return None
        rate = pace.tokens_per_s
        return plan.model_copy(
            update={
                "steps": steps,
                "epochs": round(steps / self.workload.steps_per_epoch, 3),
                "predicted_s": round(cost.seconds(steps), 1),
                "replanned_at_step": done,
                "first_steps": plan.first_steps or plan.steps,
                "pace_tokens_per_s": None if rate is None else round(rate, 1),
            }
        )


def announce(reporter: Reporter, plan: TrainingPlan, *, kept: bool = False) -> None:
    """The plan as a log event: its words for people, its fields for programs."""
    message = plan.describe() + (" (kept from the checkpoint)" if kept else "")
    reporter.event(EventType.log, {"message": message, "plan": plan.model_dump(mode="json")})
