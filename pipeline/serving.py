"""The form a model serves in: fp32, or int8 where the test set shows it answers as well.

At registration the int8 form is scored on the same test rows as fp32; metrics.json keeps the
result under "serving", and predict workers read it to choose (setting `serving_precision`).
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.ingest import Row
from pipeline.predictor import Predictor
from pipeline.registry import download, read_manifest
from shared.registry import ModelRegistry
from shared.results import FormScore, Metrics, Precision, ServingCheck
from shared.settings import Settings

log = logging.getLogger(__name__)


def int8_check(
    predictor: Predictor,
    rows: Sequence[Row],
    fp32_accuracy: float,
    fp32_seconds: float,
    settings: Settings,
) -> ServingCheck:
    """Accuracy and speed of the int8 form beside fp32's metrics on the same rows, and whether
    it may serve: at most `int8_max_accuracy_drop_pts` points below fp32."""
    int8 = predictor.int8()
    started = time.perf_counter()
    probabilities, _ = int8.probabilities([row.text for row in rows])
    int8_speed = len(rows) / (time.perf_counter() - started)
    truth = np.array([row.label for row in rows], dtype=np.int64)
    int8_accuracy = float((probabilities.argmax(axis=1) == truth).mean())
    fp32_speed = len(rows) / fp32_seconds
    drop_pts = (fp32_accuracy - int8_accuracy) * 100
    limit = settings.int8_max_accuracy_drop_pts
    return ServingCheck(
        n=len(rows),
        fp32=FormScore(accuracy=fp32_accuracy, texts_per_s=round(fp32_speed, 1)),
        int8=FormScore(accuracy=int8_accuracy, texts_per_s=round(int8_speed, 1)),
        int8_accuracy_drop_pts=round(drop_pts, 3),
        int8_speedup=round(int8_speed / fp32_speed, 2),
        max_accuracy_drop_pts=limit,
        int8_allowed=drop_pts <= limit,
    )


def choose_precision(settings: Settings, metrics: Metrics) -> Precision:
    """The setting when it names a form; under "auto", int8 only where its check passed."""
    if settings.serving_precision != "auto":
        return settings.serving_precision
    return "int8" if metrics.serving is not None and metrics.serving.int8_allowed else "fp32"


def serving_note(settings: Settings, metrics: Metrics) -> str:
    """One sentence on the form a model will serve in, and why."""
    precision = choose_precision(settings, metrics)
    check = metrics.serving
    if settings.serving_precision != "auto" or check is None:
        return f"It serves in {precision}."
    drop, limit = check.int8_accuracy_drop_pts, check.max_accuracy_drop_pts
    if precision == "int8":
        return (
            f"It serves in int8, {check.int8_speedup}x as fast as fp32 and {drop:.2f} points "
            f"below it on the test set (at most {limit} allowed)."
        )
    return f"It serves in fp32: int8 was {drop:.2f} points below it, over the {limit} allowed."


def load_serving(version: str, settings: Settings, cache_dir: Path) -> Predictor:
    """A registered version, downloaded, verified and in the form it should serve in."""
    model_dir = download(ModelRegistry.from_settings(settings), version, cache_dir)
    info = read_manifest(model_dir)
    precision = choose_precision(settings, info.metrics)
    log.info("loading model %s to serve in %s", version, precision)
    serving = settings.model_copy(update={"torch_threads": settings.predict_threads})
    return Predictor.from_manifest(model_dir, info, serving).with_precision(precision)
