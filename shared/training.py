"""A training run's parameters: the plan a profile gives, and what a registered model records."""

from pydantic import BaseModel, ConfigDict

from shared.settings import PACKAGED_BASE_MODEL


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
    dropout: float | None = None  # every dropout layer's rate; None: the base model's
    layer_decay: float = 1.0  # each layer below the top learns at this times the one above's rate
    ema_decay: float = 0.0  # validate and keep an exponential moving average of the weights; 0: off
    train_rows: int | None = None  # a stratified subset of train.csv; None: every row
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


class TrainingParams(TrainConfig):
    """The parameters a registered model's manifest records: its plan and what it did."""

    model_config = ConfigDict(frozen=False, extra="ignore")

    rows_trained: int
    rows_validated: int
    steps: int
    job_id: str | None = None
