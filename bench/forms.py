"""Every serving form of a model on the archive's test.csv: accuracy, batched texts/s, single-text
latency, and the form a predict worker would choose here.

    .venv/bin/python -m bench.forms --model /tmp/m

The model folder is a trained one (`agnews train --out DIR` leaves one). The forms are built
and scored as registration does (one tokenisation, every batch through every form in turn,
`--threads` threads; `--rows N` scores the first N test rows only); single-text p50 over
`--single` texts, one at a time; then the allowed forms timed as a predict worker times them at
load (its one thread, on the kept sample), and as it serves them (the kept texts 16 at a time,
each form in its fastest slices). With `--registered`, accuracy and batched texts/s are
those the model's registration measured (the same scoring, kept in its metrics.json).
Writes bench/out/forms.json.
"""

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.machine import cpu_line
from pipeline.ingest import read_archive
from pipeline.predictor import Predictor
from pipeline.registry import read_manifest
from pipeline.report import NullReporter
from pipeline.serving import (
    FORWARD_BATCHES,
    SAMPLE,
    candidate_forms,
    evaluate_forms,
    time_forms,
    time_forward_batches,
    with_form,
)
from shared.contracts.models import MANIFEST
from shared.contracts.results import FormScore, ServingSample
from shared.contracts.serving import Form
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "out"


def p50_ms(call: Callable[[list[str]], object], texts: list[str], digits: int = 2) -> float:
    """The median ms of `call` on one text at a time, after a warm-up on five."""
    call(texts[:5])
    times = []
    for text in texts:
        started = time.perf_counter()
        call([text])
        times.append((time.perf_counter() - started) * 1000)
    return round(sorted(times)[len(times) // 2], digits)


def linear_cost_ms(predictor: Predictor, texts: list[str]) -> tuple[float, float] | None:
    """The linear member's share of a prediction: p50 ms for one text, and ms per text over all
    `texts` at once; None for a version without the member."""
    if predictor.linear is None:
        return None
    single = p50_ms(predictor.linear_probabilities, texts, digits=3)
    started = time.perf_counter()
    predictor.linear_probabilities(texts)
    batched = (time.perf_counter() - started) * 1000 / len(texts)
    return single, round(batched, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "archive.zip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--rows", type=int, default=None, help="score on the first N test rows")
    parser.add_argument(
        "--registered",
        action="store_true",
        help="take accuracy and batched texts/s from the model's own registration (metrics.json)",
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"CPU: {cpu_line()}")

    settings = Settings(torch_threads=args.threads)
    dataset = read_archive(args.data, settings)
    rows = dataset.test.rows[: args.rows]
    if not (args.model / MANIFEST).is_file():
        parser.error(f"{args.model} holds no trained model (`agnews train --out DIR` makes one)")
    info = read_manifest(args.model)
    predictor = Predictor.from_manifest(args.model, info, settings)
    with tempfile.TemporaryDirectory() as scratch:
        forms_dir = args.model if args.registered else Path(scratch)
        metrics = (
            info.metrics
            if args.registered
            else evaluate_forms(
                predictor, rows, forms_dir, settings, NullReporter(), dataset_sha256=dataset.sha256
            )
        )
        check = metrics.serving
        assert check is not None
        texts = [row.text for row in rows[: args.single]]
        single = {
            score.form: p50_ms(
                with_form(predictor, score.form, forms_dir, args.threads).predict, texts
            )
            for score in check.forms
            if score.error is None and all((forms_dir / name).is_file() for name in score.files)
        }
        worker = settings.replace(torch_threads=1)
        allowed = candidate_forms(worker, metrics, forms_dir)
        one_thread = Predictor.from_files(
            args.model, worker, version=predictor.version, max_length=predictor.max_length
        )
        sample = ServingSample.model_validate_json((forms_dir / SAMPLE).read_bytes()).texts
        served = [with_form(one_thread, form, forms_dir, 1) for form in allowed]
        timed = time_forms(served, sample, 5.0)
        as_served = {
            one.form: dict(
                zip(
                    FORWARD_BATCHES,
                    time_forward_batches(one, sample, FORWARD_BATCHES, 3.0),
                    strict=True,
                )
            )
            for one in served
        }
        linear = linear_cost_ms(one_thread, [row.text for row in rows[:1000]])
    report(
        check.forms,
        single,
        dict(zip(allowed, timed, strict=True)),
        metrics.evaluation_seconds,
        check.n,
    )
    report_slices(as_served)
    if linear is None:
        print("no linear member")
    else:
        chosen = max(zip(timed, allowed, strict=True))
        batched_share = linear[1] / (1000 / chosen[0])
        single_share = linear[0] / single[chosen[1]] if chosen[1] in single else None
        print(
            f"linear member (1 thread): {linear[0]} ms for one text (p50), {linear[1]} ms per "
            f"text batched = {batched_share:.1%} of a batched {chosen[1]} prediction"
            + ("" if single_share is None else f", {single_share:.1%} of a single one")
        )
    OUT.mkdir(exist_ok=True)
    (OUT / "forms.json").write_text(
        json.dumps(
            {
                "cpu": cpu_line(),
                "model": str(args.model),
                "test_rows": check.n,
                "scored_at_registration": args.registered,
                "threads": args.threads,
                "forms": [score.model_dump(mode="json") for score in check.forms],
                "single_p50_ms": single,
                "worker_texts_per_s_1_thread": dict(zip(allowed, timed, strict=True)),
                "as_served_texts_per_s_by_slice_1_thread": as_served,
                "stages_s": metrics.evaluation_seconds,
                "linear_member_ms_single_batched": linear,
            },
            indent=2,
        )
    )


def report(
    forms: list[FormScore],
    single: Mapping[Form, float],
    timed: Mapping[Form, float],
    stages: dict[str, float],
    n: int,
) -> None:
    print(f"\n{n} test rows; batched and single-text figures with the given threads")
    print(
        "| form | accuracy | points below fp32 | texts/s batched | x torch fp32 | p50 single ms |"
    )
    print("|---|---|---|---|---|---|")
    for score in forms:
        if score.error is not None:
            print(f"| {score.form} | not built: {score.error} | | | | |")
            continue
        mark = "" if score.allowed else " (refused)"
        print(
            f"| {score.form}{mark} | {score.accuracy:.4f} | {score.accuracy_drop_pts:+.2f} | "
            f"{score.texts_per_s} | {score.speedup}x | {single.get(score.form, '-')} |"
        )
    chosen = max(timed, key=lambda form: timed[form])
    table = ", ".join(f"{form} {speed:.1f}" for form, speed in timed.items())
    print(f"\npredict worker (1 thread) at load, texts/s on the kept sample: {table}")
    reference = timed.get("torch-fp32")
    ratio = f" = {timed[chosen] / reference:.2f}x torch fp32" if reference else ""
    print(f"it would serve {chosen}{ratio}")
    print("evaluation stages (s): " + ", ".join(f"{k} {v}" for k, v in stages.items()))


def report_slices(as_served: Mapping[Form, Mapping[int, float]]) -> None:
    """Each form as a worker serves it: the kept texts 16 at a time, in its fastest slices."""
    best = {
        form: max(speeds.items(), key=lambda item: item[1]) for form, speeds in as_served.items()
    }
    table = ", ".join(
        f"{form} {speed:.1f} in slices of {size}" for form, (size, speed) in best.items()
    )
    print(
        f"as served (1 thread, kept texts 16 at a time, each form in its fastest slices): {table}"
    )
    chosen = max(best, key=lambda form: best[form][1])
    if "torch-fp32" in best:
        print(f"{chosen} as served = {best[chosen][1] / best['torch-fp32'][1]:.2f}x torch fp32")


if __name__ == "__main__":
    main()
