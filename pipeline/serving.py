"""The form a model serves in, chosen by measurement.

At registration every form (torch fp32 and int8, ONNX Runtime fp32 and int8, the ONNX graphs
exported then and kept in the version) is scored on the same tokenised test rows, batch by
batch together; metrics.json keeps each form's accuracy and speed under "serving", and whether
it may serve (at most `serving_max_accuracy_drop_pts` below torch fp32). At load each predict
worker times the allowed forms on its own CPU, on test texts kept with the version, and serves
the fastest (the setting `serving_form` may force one).
"""

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pipeline.evaluate import progress, scored, truth_of
from pipeline.ingest import Row
from pipeline.modeling import probabilities_together
from pipeline.predictor import Predictor
from pipeline.registry import download, read_manifest
from pipeline.report import Reporter
from pipeline.runners import (
    ONNX_FILES,
    OnnxRunner,
    Runner,
    TorchRunner,
    torch_int8,
)
from shared.contracts.results import FormScore, Metrics, ServingCheck, ServingSample
from shared.contracts.serving import FORMS, REFERENCE_FORM, Form
from shared.registry import ModelRegistry
from shared.settings import Settings

log = logging.getLogger(__name__)

# The slice sizes a predict worker times at load, on its kept texts taken GATHERED at a time:
# what a busy worker has gathered for one pass, sorted by length, then cut into slices.
FORWARD_BATCHES = (1, 2, 4, 8, 16)
GATHERED = 16

SAMPLE = "serving-sample.json"


def _torch_fp32(predictor: Predictor, model_dir: Path, threads: int) -> Runner:
    return TorchRunner(predictor.model, predictor.device, REFERENCE_FORM)


def _torch_int8(predictor: Predictor, model_dir: Path, threads: int) -> Runner:
    return torch_int8(predictor.model)


def _onnx(form: Form) -> Callable[[Predictor, Path, int], Runner]:
    def build(predictor: Predictor, model_dir: Path, threads: int) -> Runner:
        return OnnxRunner(model_dir / ONNX_FILES[form], threads, form)

    return build


# How each form's runner is built from a loaded model and its version's folder.
RUNNERS: dict[Form, Callable[[Predictor, Path, int], Runner]] = {
    "torch-fp32": _torch_fp32,
    "torch-int8": _torch_int8,
    "onnx-fp32": _onnx("onnx-fp32"),
    "onnx-int8": _onnx("onnx-int8"),
}


def with_form(predictor: Predictor, form: Form, model_dir: Path, threads: int) -> Predictor:
    if form == predictor.form:
        return predictor
    return predictor.with_runner(RUNNERS[form](predictor, model_dir, threads))


class Stopwatch:
    """Seconds spent in each named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + spent, 3)


def _make_files(form: Form, predictor: Predictor, model_dir: Path) -> None:
    """The ONNX graphs, written into the version's folder: exported, then quantized."""
    # Imported here: `onnx` costs a predict worker, which only loads graphs, a second to import.
    from pipeline.export import export_onnx, quantize_onnx

    if form == "onnx-fp32":
        export_onnx(predictor.model, predictor.padding, model_dir / ONNX_FILES[form])
    elif form == "onnx-int8":
        quantize_onnx(model_dir / ONNX_FILES["onnx-fp32"], model_dir / ONNX_FILES[form])


def _build_forms(
    predictor: Predictor, model_dir: Path, threads: int, watch: Stopwatch
) -> tuple[list[Predictor], dict[Form, str]]:
    """Every form that could be built, torch fp32 first, and why the others could not."""
    built, failed = [predictor], {}
    for form in FORMS:
        if form == predictor.form:
            continue
        try:
            with watch(f"build {form}"):
                _make_files(form, predictor, model_dir)
                built.append(with_form(predictor, form, model_dir, threads))
        except Exception as exc:
            log.warning("the %s form of %s could not be built: %s", form, predictor.version, exc)
            failed[form] = f"{type(exc).__name__}: {exc}"
    return built, failed


def _score(
    form: Form,
    accuracy: float,
    texts_per_s: float,
    reference: FormScore | None,
    limit: float,
) -> FormScore:
    base = reference or FormScore(
        form=form, accuracy=accuracy, texts_per_s=texts_per_s, allowed=True
    )
    drop = round((base.accuracy - accuracy) * 100, 3)
    return FormScore(
        form=form,
        accuracy=accuracy,
        texts_per_s=round(texts_per_s, 1),
        accuracy_drop_pts=drop,
        speedup=round(texts_per_s / base.texts_per_s, 2) if base.texts_per_s else 0.0,
        allowed=drop <= limit,
        files=[ONNX_FILES[form]] if form in ONNX_FILES else [],
    )


def serving_check(
    forms: Sequence[Form],
    accuracies: Sequence[float],
    speeds: Sequence[float],
    failed: dict[Form, str],
    n: int,
    settings: Settings,
) -> ServingCheck:
    """Each form beside the first (torch fp32), and whether it may serve."""
    limit = settings.serving.max_accuracy_drop_pts
    reference = _score(forms[0], accuracies[0], speeds[0], None, limit)
    scores = [reference] + [
        _score(form, accuracy, speed, reference, limit)
        for form, accuracy, speed in zip(forms[1:], accuracies[1:], speeds[1:], strict=True)
    ]
    scores += [
        FormScore(form=form, accuracy=0.0, texts_per_s=0.0, speedup=0.0, allowed=False, error=why)
        for form, why in failed.items()
    ]
    return ServingCheck(n=n, max_accuracy_drop_pts=limit, forms=scores, sample=SAMPLE)


def _keep_sample(rows: Sequence[Row], model_dir: Path, size: int) -> None:
    step = max(1, len(rows) // size)
    texts = [row.text for row in rows[::step][:size]]
    (model_dir / SAMPLE).write_text(ServingSample(texts=texts).model_dump_json())


def _drop_refused(check: ServingCheck, model_dir: Path) -> None:
    for score in check.forms:
        if not score.allowed:
            for name in score.files:
                (model_dir / name).unlink(missing_ok=True)


def evaluate_forms(
    predictor: Predictor,
    rows: Sequence[Row],
    model_dir: Path,
    settings: Settings,
    reporter: Reporter,
    *,
    dataset_sha256: str,
) -> Metrics:
    """torch fp32's metrics on rows, with every form scored beside it on the same ids; the
    ONNX graphs of allowed forms and a sample of texts are left in model_dir."""
    started = time.perf_counter()
    watch = Stopwatch()
    texts = [row.text for row in rows]
    with watch("tokenize"):
        encoded = predictor.encode(texts)
    built, failed = _build_forms(predictor, model_dir, settings.training.torch_threads, watch)
    with watch("forward"):
        transformers, seconds = probabilities_together(
            [form.runner.logits for form in built],
            encoded.ids,
            padding=predictor.padding,
            batch_size=predictor.batch_size,
            on_batch=progress(reporter, len(rows), settings),
        )
    with watch("linear member"):
        linear = predictor.linear_probabilities(texts)
    with watch("score"):
        truth = truth_of(rows)
        accuracies = [
            float((predictor.mix(probabilities, linear).argmax(axis=1) == truth).mean())
            for probabilities in transformers
        ]
        metrics = scored(
            predictor,
            rows,
            encoded,
            transformers[0],
            linear,
            reporter,
            dataset_sha256=dataset_sha256,
        )
    forms = [form.form for form in built]
    speeds = [len(rows) / spent if spent else 0.0 for spent in seconds]
    metrics.serving = serving_check(forms, accuracies, speeds, failed, len(rows), settings)
    _drop_refused(metrics.serving, model_dir)
    _keep_sample(rows, model_dir, settings.serving.sample_texts)
    forward = {
        f"forward {form}": round(spent, 3) for form, spent in zip(forms, seconds, strict=True)
    }
    metrics.evaluation_seconds = {**watch.seconds, **forward}
    metrics.seconds = round(time.perf_counter() - started, 2)
    return metrics


def candidate_forms(settings: Settings, metrics: Metrics, model_dir: Path) -> list[Form]:
    """The forms a worker may serve this version in: the allowed ones whose files it has (torch
    fp32 for versions registered before any check), or the one the setting forces."""
    check = metrics.serving
    allowed = (
        [REFERENCE_FORM]
        if check is None
        else [
            score.form
            for score in check.allowed()
            if all((model_dir / name).is_file() for name in score.files)
        ]
    )
    forced = settings.serving.form
    if forced == "auto":
        return allowed
    if forced in ONNX_FILES and not (model_dir / ONNX_FILES[forced]).is_file():
        log.warning("%s is forced but this version has no %s graph", forced, forced)
        return allowed
    return [forced]


def time_forms(
    predictors: Sequence[Predictor], texts: Sequence[str], budget_s: float
) -> list[float]:
    """Texts/s of each form on these texts, batch by batch together, after one batch that warms
    every form up: the best of as many rounds as fit in budget_s (at least one)."""
    first = predictors[0]
    ids = first.encode(texts).ids
    runs = [predictor.runner.logits for predictor in predictors]

    def seconds(batch: Sequence[Sequence[int]]) -> list[float]:
        return probabilities_together(
            runs, batch, padding=first.padding, batch_size=first.batch_size
        )[1]

    seconds(ids[: first.batch_size])
    return _texts_per_s(len(ids), lambda: seconds(ids), budget_s)


def _texts_per_s(
    texts: int, one_round: Callable[[], Sequence[float]], budget_s: float
) -> list[float]:
    """Texts/s of each entry of a timed round (its seconds for `texts` texts): the best of as
    many rounds as fit in budget_s, at least one."""
    deadline = time.perf_counter() + budget_s
    best = list(one_round())
    while time.perf_counter() < deadline:
        best = [min(old, new) for old, new in zip(best, one_round(), strict=True)]
    return [texts / spent if spent else math.inf for spent in best]


def _registered_speed(metrics: Metrics, form: Form) -> float:
    score = metrics.serving.score(form) if metrics.serving else None
    return score.texts_per_s if score else 0.0


def fastest(
    predictor: Predictor, model_dir: Path, metrics: Metrics, settings: Settings
) -> Predictor:
    """The loaded model in the fastest of its candidate forms on this CPU, run in the fastest
    slices (settings.serving.worker_forward_batch)."""
    forms = candidate_forms(settings, metrics, model_dir)
    threads = settings.training.torch_threads
    predictors = [with_form(predictor, form, model_dir, threads) for form in forms]
    sample = model_dir / SAMPLE
    texts = ServingSample.model_validate_json(sample.read_bytes()).texts if sample.is_file() else []
    if len(predictors) == 1:
        chosen = predictors[0]
    elif not texts:
        speeds = [_registered_speed(metrics, form) for form in forms]
        chosen = _choose(predictors, forms, speeds, "at registration")
    else:
        speeds = time_forms(predictors, texts, settings.serving.timing_s)
        chosen = _choose(
            predictors, forms, speeds, f"timed here ({len(texts)} texts, {threads} threads)"
        )
    return fastest_batch(chosen, texts, settings)


def _choose(
    predictors: Sequence[Predictor], forms: Sequence[Form], speeds: Sequence[float], source: str
) -> Predictor:
    chosen = predictors[int(np.argmax(speeds))]
    chosen.timings = {form: round(speed, 1) for form, speed in zip(forms, speeds, strict=True)}
    table = "; ".join(f"{form} {speed}" for form, speed in chosen.timings.items())
    log.info("model %s serves in %s: texts/s %s: %s", chosen.version, chosen.form, source, table)
    return chosen


def fastest_batch(predictor: Predictor, texts: Sequence[str], settings: Settings) -> Predictor:
    """The predictor run in slices of the size that serves these texts fastest here, as a busy
    worker gathers them (settings.serving.worker_forward_batch "auto"), or of the size it forces."""
    forced = settings.serving.worker_forward_batch
    speeds: dict[int, float] = {}
    if forced == "auto" and texts:
        timed = time_forward_batches(predictor, texts, FORWARD_BATCHES, settings.serving.timing_s)
        speeds = {size: round(speed, 1) for size, speed in zip(FORWARD_BATCHES, timed, strict=True)}
        size = max(speeds, key=speeds.__getitem__)
        table = "; ".join(f"{batch} {speed}" for batch, speed in speeds.items())
        log.info(
            "model %s runs slices of %d texts: texts/s by size %s", predictor.version, size, table
        )
    else:
        size = settings.serving.forward_batch if forced == "auto" else forced
    chosen = predictor.with_runner(predictor.runner, size)
    chosen.timings, chosen.batch_timings = predictor.timings, speeds
    return chosen


def time_forward_batches(
    predictor: Predictor, texts: Sequence[str], sizes: Sequence[int], budget_s: float
) -> list[float]:
    """Texts/s of the predictor with each slice size, on these texts taken GATHERED at a time in
    their order, each group sorted by length and cut into slices as a worker cuts a batch: the
    best of as many interleaved rounds as fit in budget_s (at least one)."""
    ids = predictor.encode(texts).ids
    groups = [ids[start : start + GATHERED] for start in range(0, len(ids), GATHERED)]

    def seconds(size: int) -> float:
        started = time.perf_counter()
        for group in groups:
            probabilities_together(
                [predictor.runner.logits], group, padding=predictor.padding, batch_size=size
            )
        return time.perf_counter() - started

    seconds(max(sizes))
    return _texts_per_s(len(ids), lambda: [seconds(size) for size in sizes], budget_s)


def serving_note(settings: Settings, metrics: Metrics) -> str:
    """One sentence on the forms a model may serve in, and why."""
    check = metrics.serving
    if settings.serving.form != "auto":
        return f"It serves in {settings.serving.form} (set)."
    if check is None:
        return f"It serves in {REFERENCE_FORM}."
    allowed = ", ".join(
        f"{score.form} ({score.speedup}x, {score.accuracy_drop_pts:.2f} points below)"
        for score in check.allowed()
        if score.form != REFERENCE_FORM
    )
    refused = ", ".join(s.form for s in check.forms if not s.allowed and s.error is None)
    broken = ", ".join(s.form for s in check.forms if s.error is not None)
    note = (
        f"Each predict worker serves the fastest on its CPU of {REFERENCE_FORM} and {allowed}"
        if allowed
        else f"It serves in {REFERENCE_FORM}"
    )
    if refused:
        note += f"; {refused} lost more than the {check.max_accuracy_drop_pts} points allowed"
    if broken:
        note += f"; {broken} could not be built"
    return note + "."


def load_serving(version: str, settings: Settings, cache_dir: Path) -> Predictor:
    """A registered version, downloaded, verified and in the fastest form allowed here."""
    registry = ModelRegistry.from_settings(settings.storage)
    model_dir = download(registry, version, cache_dir, keep=settings.serving.model_cache_versions)
    info = read_manifest(model_dir)
    serving = settings.replace(torch_threads=settings.serving.threads)
    predictor = Predictor.from_manifest(model_dir, info, serving)
    return fastest(predictor, model_dir, info.metrics, serving)
