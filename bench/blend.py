"""Trained models blended both ways: their weighted mean and their weighted geometric mean.

    .venv/bin/python -m bench.blend --model /tmp/m1 --model /tmp/m2

Each model folder is a trained one with a linear member (`agnews train --out DIR` leaves one).
For each, the transformer's and the linear member's probabilities on the model's own validation
split (drawn again from its recorded seed) and on the archive's test.csv; for each blend, the
weight training would fit (least validation log-loss), validation log-loss and accuracy, test.csv
accuracy, and the test rows the geometric blend gets right and the mean does not, and back
(against the first blend, the mean).
"""

import argparse
from pathlib import Path
from typing import get_args

import numpy as np

from bench.machine import cpu_line
from pipeline.ingest import read_archive
from pipeline.linear import fit_weight, log_loss, mix
from pipeline.predictor import Predictor
from pipeline.registry import read_manifest
from pipeline.train import split_rows
from shared.contracts.training import BlendMixing
from shared.settings import Settings

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "archive.zip"


def members(predictor: Predictor, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    linear = predictor.linear_probabilities(texts)
    if linear is None:
        raise SystemExit(f"model {predictor.version} has no linear member")
    return predictor.forward(predictor.encode(texts).ids), linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE)
    args = parser.parse_args()

    print(f"CPU: {cpu_line()}", flush=True)
    settings = Settings()
    dataset = read_archive(args.data, settings)
    rows = dataset.train.rows
    labels = np.array([row.label for row in rows], dtype=np.int64)
    test_texts = [row.text for row in dataset.test.rows]
    truth = np.array([row.label for row in dataset.test.rows], dtype=np.int64)
    print(
        "| model | blend | weight | validation log-loss | validation | test.csv "
        "| test rows won / lost |"
    )
    print("|---|---|---|---|---|---|---|")
    for model_dir in args.model:
        params = read_manifest(model_dir).params
        predictor = Predictor.load(model_dir, settings)
        _, val_index = split_rows(labels, params)
        val_transformer, val_linear = members(predictor, [rows[i].text for i in val_index])
        test_transformer, test_linear = members(predictor, test_texts)
        val_labels = labels[val_index]
        reference: np.ndarray | None = None
        mixing: BlendMixing
        for mixing in get_args(BlendMixing):
            weight = fit_weight(val_transformer, val_linear, val_labels, mixing)
            val = mix(val_transformer, val_linear, weight, mixing)
            right = mix(test_transformer, test_linear, weight, mixing).argmax(axis=1) == truth
            against = (
                "-"
                if reference is None
                else f"{int(np.sum(right & ~reference))} / {int(np.sum(reference & ~right))}"
            )
            reference = right if reference is None else reference
            print(
                f"| {model_dir.name} (seed {params.seed}) | {mixing} | {weight:.2f} "
                f"| {log_loss(val, val_labels):.4f} "
                f"| {100 * np.mean(val.argmax(axis=1) == val_labels):.2f}% "
                f"| {100 * right.mean():.3f}% | {against} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
