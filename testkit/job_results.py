"""Typed jobs and results for tests and benchmarks that make and end jobs by hand."""

from shared.contracts.jobs import Job, JobType, TrainParams, new_job_id
from shared.contracts.results import ClassScores, Metrics, Prediction, PredictResult, TrainResult

LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def metrics(accuracy: float = 0.9, n: int = 40) -> Metrics:
    scores = ClassScores(precision=accuracy, recall=accuracy, f1=accuracy, support=n // 4)
    right = round(accuracy * n / 4)
    return Metrics(
        n=n,
        accuracy=accuracy,
        macro_f1=accuracy,
        per_class=dict.fromkeys(LABELS, scores),
        labels=LABELS,
        confusion_matrix=[
            [
                right if column == row else (n // 4 - right) * (column == (row + 1) % 4)
                for column in range(4)
            ]
            for row in range(4)
        ],
    )


def train_result(version: str = "v1", accuracy: float = 0.9) -> TrainResult:
    return TrainResult(dataset_sha256="0" * 64, version=version, metrics=metrics(accuracy))


def predict_result(version: str = "v1", labels: tuple[str, ...] = ("Sports",)) -> PredictResult:
    return PredictResult(
        model_version=version,
        form="torch-fp32",
        predictions=[
            Prediction(
                label=label,
                label_id=LABELS.index(label),
                scores={name: float(name == label) for name in LABELS},
                truncated=False,
            )
            for label in labels
        ],
    )


def uncertain(label: str, top: float) -> Prediction:
    """An answer of `label` with the top score `top`, the rest shared by the other labels."""
    rest = (1 - top) / (len(LABELS) - 1)
    return Prediction(
        label=label,
        label_id=LABELS.index(label),
        scores={name: top if name == label else rest for name in LABELS},
        truncated=False,
    )


def train_job(dataset: str = "s3://agnews/incoming/a.zip") -> Job:
    return Job(id=new_job_id(), type=JobType.train, params=TrainParams(dataset=dataset))
