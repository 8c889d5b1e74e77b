"""Scores of a model on labelled rows: accuracy, macro-F1, per-class figures, confusion matrix."""

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.ingest import Row
from pipeline.predictor import Encoded, Predictor
from pipeline.report import Reporter, Ticker, check_cancelled
from shared.contracts.jobs import EventType
from shared.contracts.labels import LABELS
from shared.contracts.monitor import Profile
from shared.contracts.results import ClassScores, MemberScores, Metrics
from shared.settings import Settings


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, **about: Any) -> Metrics:
    """Rows of the confusion matrix are true labels, columns predicted ones, in label order."""
    size = len(LABELS)
    confusion = np.zeros((size, size), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    hits = np.diag(confusion).astype(np.float64)
    support, claimed = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, claimed, out=np.zeros(size), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros(size), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(size), where=both > 0)
    n = int(confusion.sum())
    return Metrics(
        n=n,
        accuracy=float(hits.sum() / n) if n else 0.0,
        macro_f1=float(f1.mean()),
        per_class={
            label: ClassScores(
                precision=float(precision[i]),
                recall=float(recall[i]),
                f1=float(f1[i]),
                support=int(support[i]),
            )
            for i, label in enumerate(LABELS)
        },
        labels=list(LABELS),
        confusion_matrix=confusion.tolist(),
        **about,
    )


def _members(
    predictor: Predictor,
    transformer: np.ndarray,
    linear: np.ndarray | None,
    blended: np.ndarray,
    truth: np.ndarray,
) -> MemberScores | None:
    if predictor.linear is None or linear is None:
        return None

    def accuracy(probabilities: np.ndarray) -> float:
        return float((probabilities.argmax(axis=1) == truth).mean())

    return MemberScores(
        n=len(truth),
        weight=predictor.linear.weight,
        mixing=predictor.linear.config.mixing,
        transformer_accuracy=accuracy(transformer),
        linear_accuracy=accuracy(linear),
        blend_accuracy=accuracy(blended),
    )


def progress(reporter: Reporter, total: int, settings: Settings) -> Callable[[int], None]:
    """Evaluation's progress per batch, which also stops a cancelled job."""
    ticker = Ticker(reporter, "evaluate", total, settings.training.progress_interval_s)
    ticker.send(0)
    check_cancelled(reporter, "evaluate")

    def on_batch(done: int) -> None:
        ticker(done)
        check_cancelled(reporter, "evaluate")

    return on_batch


def truth_of(rows: Sequence[Row]) -> np.ndarray:
    return np.array([row.label for row in rows], dtype=np.int64)


def answered_profile(probabilities: np.ndarray, encoded: Encoded) -> Profile:
    """What the model answered, as the predict workers count it on live traffic."""
    profile = Profile()
    rows = probabilities.tolist()
    for row, best, ids, cut in zip(
        rows, probabilities.argmax(axis=1).tolist(), encoded.ids, encoded.truncated, strict=True
    ):
        profile.add(LABELS[best], row, len(ids), cut)
    return profile


def scored(
    predictor: Predictor,
    rows: Sequence[Row],
    encoded: Encoded,
    transformer: np.ndarray,
    linear: np.ndarray | None,
    reporter: Reporter,
    **about: Any,
) -> Metrics:
    """Metrics of the transformer's probabilities blended with the linear member's."""
    truth = truth_of(rows)
    probabilities = predictor.mix(transformer, linear)
    metrics = classification_metrics(
        truth,
        probabilities.argmax(axis=1),
        model_version=predictor.version,
        truncated=sum(encoded.truncated),
        max_length=predictor.max_length,
        members=_members(predictor, transformer, linear, probabilities, truth),
        profile=answered_profile(probabilities, encoded),
        **about,
    )
    reporter.event(
        EventType.metric,
        {
            "name": "evaluation",
            "model_version": predictor.version,
            "accuracy": metrics.accuracy,
            "macro_f1": metrics.macro_f1,
            "n": metrics.n,
        },
    )
    return metrics


def evaluate(
    predictor: Predictor,
    rows: Sequence[Row],
    settings: Settings,
    reporter: Reporter,
    *,
    dataset_sha256: str | None,
    split: str = "test.csv",
) -> Metrics:
    """The model's metrics on rows, as stored in metrics.json."""
    started = time.monotonic()
    on_batch = progress(reporter, len(rows), settings)
    texts = [row.text for row in rows]
    encoded = predictor.encode(texts)
    transformer = predictor.forward(encoded.ids, on_batch)
    return scored(
        predictor,
        rows,
        encoded,
        transformer,
        predictor.linear_probabilities(texts),
        reporter,
        dataset_sha256=dataset_sha256,
        split=split,
        seconds=round(time.monotonic() - started, 2),
    )
