"""Training recipes compared on the same rows: validation accuracy decides, test.csv is reported.

    .venv/bin/python bench/recipes.py --rows 10000 --epochs 1
    .venv/bin/python bench/recipes.py --recipe base --recipe no-ema --rows 0 --epochs 2
    .venv/bin/python bench/recipes.py --recipe base --recipe smoothing --seed 1 --seed 2 --seed 3
    .venv/bin/python bench/recipes.py --base-model .agnews/base-models/all-mpnet-base-v2 \
        --recipe teacher-lr-4e-5 --recipe teacher-lr-8e-5 --rows 2000 --max-length 64

Each recipe is the `full` profile with some fields changed, trained on one stratified subset of
train.csv (`--rows`; 0: every row) and validated on the same split. Prints one JSON line per
recipe and seed as it ends (also appended to bench/out/recipes.jsonl) and Markdown tables at the
end: per run, wall time, validation accuracy, and test.csv accuracy and macro-F1 of the
transformer alone and, where the recipe trains it, blended with the linear member; per recipe,
the mean and spread over seeds and the difference from the first recipe paired by seed.

A seed draws the validation split, the initial head and the batch order. Runs of one seed share
their split and test rows, so two recipes are compared row by row: of the rows exactly one of
them gets right, how many each gets (the counts McNemar's test weighs); a difference smaller
than about twice the square root of their sum is noise.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import cpu_line
from pipeline.evaluate import classification_metrics
from pipeline.ingest import RawDataset, read_archive
from pipeline.modeling import class_probabilities, encode, padding_of
from pipeline.report import TqdmReporter
from pipeline.train import FitResult, fit
from shared.contracts.training import PROFILES, TrainConfig
from shared.settings import Settings

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "archive.zip"
OUT = Path(__file__).parent / "out" / "recipes.jsonl"

RECIPES: dict[str, dict[str, Any]] = {
    "base": {},
    "no-adapt": {"adapt_epochs": 0.0},
    "length-64": {"max_length": 64, "ema_decay": 0.0},
    "no-ema": {"ema_decay": 0.0},
    "smoothing": {"label_smoothing": 0.1},
    "r-drop": {"rdrop": 0.5},
    "dropout": {"dropout": 0.15},
    "no-dropout": {"dropout": 0.0},
    "llrd": {"layer_decay": 0.85, "lr": 1.5e-4},
    "lr-1.2e-4": {"lr": 1.2e-4},
    "mean-blend": {"blend_mixing": "arithmetic"},  # with --linear
    "all": {"ema_decay": 0.998, "label_smoothing": 0.1, "layer_decay": 0.85, "lr": 1.5e-4},
    # For a base-size teacher (--base-model): no adaptation or weight average, its own rate.
    "teacher-lr-2e-5": {"lr": 2e-5, "warmup": 0.1, "ema_decay": 0.0, "adapt_epochs": 0.0},
    "teacher-lr-4e-5": {"lr": 4e-5, "warmup": 0.1, "ema_decay": 0.0, "adapt_epochs": 0.0},
    "teacher-lr-8e-5": {"lr": 8e-5, "warmup": 0.1, "ema_decay": 0.0, "adapt_epochs": 0.0},
    "teacher-llrd": {
        "lr": 8e-5,
        "layer_decay": 0.85,
        "warmup": 0.1,
        "ema_decay": 0.0,
        "adapt_epochs": 0.0,
    },
}


def test_scores(
    result: FitResult, texts: list[str], truth: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """Scores on test.csv, and which rows the transformer alone got right."""
    encoded = encode(result.tokenizer, texts, result.config.max_length)
    transformer = class_probabilities(
        result.model,
        encoded,
        padding=padding_of(result.tokenizer),
        batch_size=64,
        device=result.model.device,
    )
    scores: dict[str, Any] = {}
    alone = classification_metrics(truth, transformer.argmax(axis=1))
    scores["test_accuracy"], scores["test_macro_f1"] = alone.accuracy, alone.macro_f1
    if result.linear is not None:
        blended = result.linear.blend(transformer, texts)
        mixed = classification_metrics(truth, blended.argmax(axis=1))
        scores["blend_weight"] = result.linear.weight
        scores["blend_test_accuracy"], scores["blend_test_macro_f1"] = (
            mixed.accuracy,
            mixed.macro_f1,
        )
    return scores, transformer.argmax(axis=1) == truth


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def row(summary: dict[str, Any]) -> str:
    return (
        f"| {summary['recipe']} | {summary['seed']} | {summary['changes'] or '(full)'} "
        f"| {summary['steps']} "
        f"| {summary['train_s'] / 60:.1f} min | {_pct(summary['validation_accuracy'])} "
        f"| {_pct(summary['test_accuracy'])} | {summary['test_macro_f1']:.4f} "
        f"| {_pct(summary.get('blend_test_accuracy'))} |"
    )


def _spread(values: list[float]) -> str:
    mean = 100 * float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.2f}%"
    return f"{mean:.2f} ± {100 * float(np.std(values, ddof=1)):.2f}%"


def paired(right: np.ndarray, reference: np.ndarray) -> str:
    """Rows only this recipe gets right against rows only the reference gets right."""
    only_this = int(np.sum(right & ~reference))
    only_reference = int(np.sum(reference & ~right))
    return f"+{only_this} / -{only_reference}"


def aggregate(
    recipes: list[str],
    summaries: dict[tuple[str, int], dict[str, Any]],
    right: dict[tuple[str, int], np.ndarray],
    seeds: list[int],
) -> list[str]:
    """A row per recipe: means and spreads over seeds, and test.csv rows won and lost against
    the first recipe, seed by seed."""
    reference = recipes[0]
    lines = []
    for name in recipes:
        runs = [summaries[name, seed] for seed in seeds]
        against = (
            "-"
            if name == reference
            else ", ".join(paired(right[name, seed], right[reference, seed]) for seed in seeds)
        )
        lines.append(
            f"| {name} | {len(seeds)} | {_spread([r['validation_accuracy'] for r in runs])} "
            f"| {_spread([r['test_accuracy'] for r in runs])} | {against} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--recipe", action="append", choices=sorted(RECIPES))
    parser.add_argument("--rows", type=int, default=10_000, help="training rows; 0: all")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=PROFILES["full"].max_length)
    parser.add_argument("--linear", action="store_true", help="train and blend the linear member")
    parser.add_argument("--base-model", help="a local model folder (default: the profile's)")
    parser.add_argument(
        "--seed", type=int, action="append", help=f"repeat; default {PROFILES['full'].seed}"
    )
    args = parser.parse_args()

    print(f"CPU: {cpu_line()}", flush=True)
    settings = Settings()
    dataset = read_archive(args.data, settings)
    texts = [r.text for r in dataset.test.rows]  # cleaned at ingest
    truth = np.array([r.label for r in dataset.test.rows], dtype=np.int64)
    common = {
        "train_rows": args.rows or None,
        "epochs": args.epochs,
        "max_length": args.max_length,
        "linear_member": args.linear,
        "patience": 0,
        "budget_s": None,  # the same epochs for every recipe, not what a budget buys
        **({"base_model": args.base_model} if args.base_model else {}),
    }
    recipes: list[str] = args.recipe or list(RECIPES)
    seeds: list[int] = args.seed or [PROFILES["full"].seed]
    lines = []
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    right: dict[tuple[str, int], np.ndarray] = {}
    for seed in seeds:
        for name in recipes:
            summaries[name, seed], right[name, seed] = run(
                name, seed, common, dataset, settings, texts, truth
            )
            lines.append(row(summaries[name, seed]))
    print(
        "| recipe | seed | changes | steps | training | validation | test.csv | macro-F1 "
        "| blend test |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print()
    print(f"| recipe | seeds | validation | test.csv | test rows won / lost against {recipes[0]} |")
    print("|---|---|---|---|---|")
    print("\n".join(aggregate(recipes, summaries, right, seeds)))


def run(
    name: str,
    seed: int,
    common: dict[str, Any],
    dataset: RawDataset,
    settings: Settings,
    texts: list[str],
    truth: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray]:
    """One recipe trained with one seed: its summary, and which test rows it got right."""
    changes = RECIPES[name]
    config = TrainConfig.model_validate(
        {**PROFILES["full"].model_dump(), **common, **changes, "seed": seed}
    )
    reporter = TqdmReporter()
    started = time.monotonic()
    result = fit(config, dataset.train.rows, settings, reporter)
    reporter.close()
    scores, right = test_scores(result, texts, truth)
    summary = {
        "recipe": name,
        "seed": seed,
        "changes": changes,
        "cpu": cpu_line(),
        "date": time.strftime("%Y-%m-%d"),
        "rows_trained": result.rows_trained,
        "steps": result.state.step,
        "train_s": round(result.state.seconds, 1),
        "fit_wall_s": round(time.monotonic() - started, 1),
        "validation_accuracy": result.validation.accuracy,
        "best_step": result.validation.step,
        **scores,
        **common,
    }
    print(json.dumps(summary), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("a") as out:
        out.write(json.dumps(summary) + "\n")
    return summary, right


if __name__ == "__main__":
    main()
