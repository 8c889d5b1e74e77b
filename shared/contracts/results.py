"""What the pipeline produces, typed once for every reader: metrics.json, the serving check,
what training records, and each job type's result (the gateway, the front end and the CLI read
these same models)."""

import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

from shared.contracts.monitor import Profile
from shared.contracts.serving import REFERENCE_FORM, Form, serving_form_name
from shared.contracts.training import BlendMixing, TrainingParams


class ClassScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class ValidationScores(BaseModel):
    """The best evaluation on the validation split carved from train.csv."""

    n: int
    accuracy: float
    loss: float
    step: int
    steps: int
    stopped_early: bool


class FormScore(BaseModel):
    """One serving form on the test rows at registration, beside torch fp32 on the same ids."""

    form: Form
    accuracy: float
    texts_per_s: float
    accuracy_drop_pts: float = Field(default=0.0, description="points below torch fp32")
    speedup: float = Field(default=1.0, description="texts/s over torch fp32's")
    allowed: bool = Field(description="within the allowed drop, so it may serve")
    files: list[str] = Field(default_factory=list, description="its files in the version")
    error: str | None = Field(default=None, description="why it could not be built, if so")


class MemberScores(BaseModel):
    """A blended model's members scored alone and together on the same rows."""

    n: int
    weight: float = Field(description="the linear member's share, fitted on validation rows")
    mixing: BlendMixing = Field(
        default="arithmetic",
        description="how the shares blend (versions registered before geometric blending hold "
        "no field and blended arithmetically)",
    )
    transformer_accuracy: float
    linear_accuracy: float
    blend_accuracy: float


class ServingCheck(BaseModel):
    """Every serving form scored on the same test rows at registration; versions registered
    before the forms table (fp32 and int8 only) load into it."""

    n: int
    max_accuracy_drop_pts: float
    forms: list[FormScore]
    sample: str | None = Field(
        default=None, description="the version's file of texts workers time the forms on at load"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_int8_check(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "forms" in data or "int8" not in data:
            return data
        fp32, int8 = data["fp32"], data["int8"]
        return {
            "n": data["n"],
            "max_accuracy_drop_pts": data["max_accuracy_drop_pts"],
            "forms": [
                {"form": REFERENCE_FORM, **fp32, "allowed": True},
                {
                    "form": "torch-int8",
                    **int8,
                    "accuracy_drop_pts": data["int8_accuracy_drop_pts"],
                    "speedup": data["int8_speedup"],
                    "allowed": data["int8_allowed"],
                },
            ],
        }

    def score(self, form: Form) -> FormScore | None:
        return next((score for score in self.forms if score.form == form), None)

    def allowed(self) -> list[FormScore]:
        return [score for score in self.forms if score.allowed]


class ServingSample(BaseModel):
    """Test texts kept with a version, which each predict worker times the forms on at load."""

    texts: list[str]


class StageSeconds(BaseModel):
    """The wall time of each stage of a train or pipeline job; None for a stage not run (yet).
    A stage that ran again after a lost worker counts its last run."""

    ingest: float | None = Field(default=None, description="fetch, validate and store the data")
    train: float | None = None
    evaluate: float | None = Field(default=None, description="test.csv and the serving check")
    registration: float | None = Field(default=None, description="model card, manifest and upload")
    promote: float | None = None

    def describe(self) -> str:
        times = [
            f"{name} {_duration(seconds)}"
            for name, seconds in self.model_dump().items()
            if seconds is not None
        ]
        return ", ".join(times) or "no stage timed"


def seconds_since(started: float) -> float:
    """Wall time since a time.monotonic() reading, to a tenth of a second."""
    return round(time.monotonic() - started, 1)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Metrics(BaseModel):
    """A model's scores on labelled rows; confusion rows are true labels, columns predicted."""

    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    labels: list[str]
    confusion_matrix: list[list[int]]
    model_version: str | None = None
    dataset_sha256: str | None = None
    split: str = "test.csv"
    truncated: int = 0
    max_length: int | None = None
    seconds: float = 0.0
    evaluation_seconds: dict[str, float] = Field(
        default_factory=dict, description="seconds each stage of the evaluation took"
    )
    members: MemberScores | None = Field(
        default=None, description="the transformer and the linear member alone and blended"
    )
    profile: Profile | None = Field(
        default=None,
        description="what the model answered on these rows, as counts: the reference live "
        "traffic's drift is scored against",
    )
    serving: ServingCheck | None = Field(default=None, description="set at registration")
    validation: ValidationScores | None = Field(default=None, description="set at registration")
    train_seconds: float | None = Field(default=None, description="set at registration")
    stage_seconds: StageSeconds | None = Field(
        default=None, description="set at registration: the stages up to evaluation"
    )

    def headline(self) -> str:
        return f"accuracy {self.accuracy:.4f}, macro-F1 {self.macro_f1:.4f} on {self.n} rows"


class TrainPoint(BaseModel):
    """The mean training loss over the steps since the previous point."""

    step: int
    epoch: float
    loss: float
    lr: float


class ValidationPoint(BaseModel):
    step: int
    epoch: float
    accuracy: float
    loss: float


class AdaptPoint(BaseModel):
    """The mean masked-LM loss over the adaptation steps since the previous point."""

    step: int
    loss: float


class TrainingHistory(BaseModel):
    """A training run's curves, kept with the model it made (history.json)."""

    train: list[TrainPoint] = Field(default_factory=list)
    validation: list[ValidationPoint] = Field(default_factory=list)
    adapt: list[AdaptPoint] = Field(
        default_factory=list, description="adaptation to the texts, where the run adapted"
    )


class TrainingRecord(BaseModel):
    """What training leaves beside a trained model: its parameters, scores and curves."""

    params: TrainingParams
    validation: ValidationScores
    train_seconds: float
    history: TrainingHistory = Field(default_factory=TrainingHistory)
    blend: MemberScores | None = Field(default=None, description="on the validation split")


class Prediction(BaseModel):
    label: str
    label_id: int
    scores: dict[str, float] = Field(description="the probability of every class")
    truncated: bool = Field(description="the text was longer than the model reads and was cut")


class PredictResult(BaseModel):
    model_version: str = Field(description="the registered version that produced every answer")
    form: Form = Field(description="the form the model served in")
    predictions: list[Prediction]

    @model_validator(mode="before")
    @classmethod
    def _from_precision(cls, data: Any) -> Any:
        """Answers stored before forms named a precision, fp32 or int8 (of torch)."""
        if isinstance(data, dict) and "precision" in data and "form" not in data:
            data = dict(data)
            data["form"] = serving_form_name(data.pop("precision"))
        return data


class EvaluateResult(BaseModel):
    metrics: Metrics


class Holdout(BaseModel):
    """The promotion holdout, `{holdout_prefix}holdout.json`: the one test set candidates and
    production are compared on, pinned by the sha256 of its CSV; no upload can change it."""

    sha256: str = Field(description="sha256 of the CSV's bytes")
    rows: int = Field(description="its usable rows")
    key: str = Field(description="its pinned copy in the bucket: {holdout_prefix}{sha256}/test.csv")
    source: str = Field(description="where it was taken from: the configured key or a dataset")
    pinned_at: datetime

    def describe(self) -> str:
        return f"the holdout {self.sha256[:12]} ({self.rows} rows)"


class PromotionDecision(BaseModel):
    """Candidate and production are compared on the holdout; the candidate's own test.csv (its
    uploader's) is reported in candidate_test_metrics and decides nothing."""

    promoted: bool
    reason: str
    version: str
    previous: str | None
    candidate_metrics: Metrics = Field(description="the candidate on the holdout")
    production_metrics: Metrics | None = Field(description="production on the holdout")
    candidate_test_metrics: Metrics | None = Field(
        default=None, description="the candidate on its dataset's test.csv (its metrics.json)"
    )
    holdout_sha256: str | None = None
    holdout_rows: int | None = None
    candidate_holdout_accuracy: float | None = None
    production_holdout_accuracy: float | None = None


class TrainResult(BaseModel):
    """The result of a train or pipeline job: the registered version and, if asked, promotion."""

    dataset_sha256: str
    version: str
    metrics: Metrics
    promotion: PromotionDecision | None = None
    stage_seconds: StageSeconds = Field(default_factory=StageSeconds)


class BatchPredictResult(BaseModel):
    """A batch job's output file and, where the input carried labels, how it scored on them."""

    rows: int
    output: str = Field(description="s3:// URL of predictions.csv, one line per input row")
    model_versions: dict[str, int] = Field(description="rows answered by each version")
    labelled: int = Field(description="rows whose input carried a label")
    accuracy: float | None = None
    confusion: list[list[int]] | None = Field(
        default=None, description="rows by true label (outer) and predicted label (inner)"
    )
    seconds: float
    rows_per_s: float


JobResult = PredictResult | EvaluateResult | TrainResult | BatchPredictResult
