"""Train a profile on an archive and score the model on the archive's test.csv.

    .venv/bin/python bench/accuracy.py --profile quick
    .venv/bin/python bench/accuracy.py --profile full --data data/archive.zip
    .venv/bin/python bench/accuracy.py --profile full --set epochs=4 --set bf16=false

Prints wall time (training, evaluation, all), validation and test accuracy, and test macro-F1;
the model lands in bench/out/model-{profile}/.
"""

import argparse
import json
import time
from pathlib import Path

from pipeline.ingest import read_archive
from pipeline.report import TqdmReporter
from pipeline.stages import train_model
from shared.contracts.training import DISTILLATIONS, PROFILES, TrainConfig
from shared.settings import Settings, config_for

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "archive.zip"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE)
    # distil trains a teacher and a student: `agnews train --profile distil --json` runs it
    parser.add_argument(
        "--profile", choices=sorted(set(PROFILES) - set(DISTILLATIONS)), default="quick"
    )
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--base-model")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="change a TrainConfig field",
    )
    args = parser.parse_args()

    started = time.monotonic()
    settings = Settings()
    config = config_for(
        settings.training, args.profile, base_model=args.base_model, max_steps=args.max_steps
    )
    changes = dict(item.split("=", 1) for item in args.set)
    config = TrainConfig.model_validate(
        {**config.model_dump(), **{name: json.loads(value) for name, value in changes.items()}}
    )
    dataset = read_archive(args.data, settings)
    reporter = TqdmReporter()
    out = args.out or Path(__file__).parent / "out" / f"model-{args.profile}"
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        path.unlink()
    info, _ = train_model(config, dataset, out, settings, reporter)
    reporter.close()
    wall = time.monotonic() - started
    train_s, metrics, validation = (
        info.metrics.train_seconds or 0.0,
        info.metrics,
        info.metrics.validation,
    )
    summary = {
        "profile": args.profile,
        "changes": changes,
        "data": str(args.data),
        "rows_trained": info.params.rows_trained,
        "steps": info.params.steps,
        "train_s": round(train_s, 1),
        "evaluate_s": round(wall - train_s, 1),
        "wall_s": round(wall, 1),
        "validation_accuracy": round(validation.accuracy, 4) if validation else None,
        "test_accuracy": round(metrics.accuracy, 4),
        "test_macro_f1": round(metrics.macro_f1, 4),
        "model_dir": str(out),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
