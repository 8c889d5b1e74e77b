"""`agnews`: train, evaluate and query models from a shell, without Redis or workers.

agnews train --data archive.zip --profile quick --out model/
agnews evaluate --model model/ --data test.csv --json
agnews predict "Stocks rally as ..." --model model/

Data is read and checked before the ML stack (torch, transformers: seconds to import) is loaded,
so a bad file is reported at once.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from pipeline.checkpoints import LocalCheckpoints
from pipeline.ingest import BAD_ROW_RULES, Row, Split, fetch_archive, read_archive, read_csv
from pipeline.report import TqdmReporter
from pipeline.validate import check, validate
from shared.contracts.errors import AgNewsError, BadRequest, DatasetInvalid, ModelIntegrityError
from shared.contracts.labels import LABELS
from shared.contracts.models import MANIFEST
from shared.contracts.results import Metrics, PredictResult, StageSeconds, seconds_since
from shared.contracts.training import PROFILES
from shared.digests import file_sha256
from shared.logs import configure_logging
from shared.settings import Settings, config_for, distillation_for

if TYPE_CHECKING:
    from pipeline.predictor import Predictor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agnews", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a model on an archive's train.csv")
    train.add_argument("--data", required=True, help="archive.zip: a path or s3://bucket/key")
    train.add_argument("--profile", choices=sorted(PROFILES), help="default: settings")
    train.add_argument("--out", required=True, type=Path, help="the model folder to write")
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    train.add_argument("--base-model", help="a hub id or local folder (default: settings)")
    train.add_argument("--json", action="store_true", help="end with a JSON summary")

    evaluate = commands.add_parser("evaluate", help="score a model on a labelled test set")
    evaluate.add_argument("--model", required=True, help="a model folder or registered version")
    evaluate.add_argument("--data", required=True, help="test.csv, or an archive.zip's test.csv")
    evaluate.add_argument("--json", action="store_true", help="end with the metrics as JSON")

    predict = commands.add_parser("predict", help="classify texts")
    predict.add_argument("texts", nargs="+", metavar="TEXT")
    predict.add_argument("--model", help="a model folder or version (default: production)")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
    return parser


def _load(model: str | None, settings: Settings) -> "Predictor":
    from pipeline.predictor import Predictor, load_production, load_version

    if model is None:
        return load_production(settings)
    if Path(model).is_dir():
        return Predictor.load(Path(model), settings)
    return load_version(model, settings)


def _checked_rows(split: Split) -> list[Row]:
    bad = [problem for problem in split.problems if problem.rule in BAD_ROW_RULES]
    if bad:
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise DatasetInvalid(bad[0].message + more, details={"rule": bad[0].rule})
    if not split.rows:
        raise DatasetInvalid(f"{split.name} has no labelled rows")
    return split.rows


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise BadRequest(f"{out} exists and is not a model folder; choose another --out")
        shutil.rmtree(out)


def train(args: argparse.Namespace, settings: Settings, reporter: TqdmReporter) -> dict[str, Any]:
    out: Path = args.out
    _prepare_out(out)
    config = config_for(
        settings.training, args.profile, base_model=args.base_model, max_steps=args.max_steps
    )
    distillation = distillation_for(settings.training, args.profile)
    teacher_out = out.with_name(out.name + "-teacher")
    if distillation is not None:
        _prepare_out(teacher_out)
    checkpoints = LocalCheckpoints(out.with_name(out.name + ".checkpoints"))
    phases_root = out.with_name(out.name + ".distil")
    with tempfile.TemporaryDirectory() as scratch:
        started = time.monotonic()
        dataset = read_archive(fetch_archive(args.data, settings, Path(scratch)), settings)
        report = validate(dataset, settings)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        check(report)
        ingested = StageSeconds(ingest=seconds_since(started))

        from pipeline.distil import Distilling, LocalPhases
        from pipeline.stages import train_model

        model_dir = Path(scratch) / "model"
        distilling = None
        if distillation is not None:
            distilling = Distilling(distillation, LocalPhases(phases_root), Path(scratch))
        info, teacher = train_model(
            config, dataset, model_dir, settings, reporter, checkpoints, ingested, distilling
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.move(model_dir, out)
        if teacher is not None:
            shutil.rmtree(teacher_out, ignore_errors=True)
            shutil.move(Path(scratch) / "teacher", teacher_out)
    checkpoints.clear()
    shutil.rmtree(phases_root, ignore_errors=True)
    reporter.close()
    summary: dict[str, Any] = {}
    if teacher is not None:
        print(f"teacher {teacher.version} written to {teacher_out}")
        _print_metrics(teacher.metrics)
        summary["teacher"] = {
            "version": teacher.version,
            "model_dir": str(teacher_out),
            **_headline(teacher.metrics),
        }
    print(f"model {info.version} written to {out}")
    if info.params.plan is not None:
        print(info.params.plan.describe())
    stage_seconds = info.metrics.stage_seconds or StageSeconds()
    print(f"wall time: {stage_seconds.describe()}")
    _print_metrics(info.metrics)
    return {
        "version": info.version,
        "model_dir": str(out),
        **_headline(info.metrics),
        "plan": info.params.plan and info.params.plan.model_dump(mode="json"),
        "stage_seconds": stage_seconds.model_dump(),
        **summary,
    }


def evaluate_command(
    args: argparse.Namespace, settings: Settings, reporter: TqdmReporter
) -> Metrics:
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as scratch:
        if data.suffix.lower() == ".csv":
            rows = _checked_rows(read_csv(data, settings))
            sha256 = file_sha256(data)
        else:
            dataset = read_archive(fetch_archive(args.data, settings, Path(scratch)), settings)
            rows, sha256 = _checked_rows(dataset.test), dataset.sha256
    from pipeline.evaluate import evaluate

    metrics = evaluate(_load(args.model, settings), rows, settings, reporter, dataset_sha256=sha256)
    reporter.close()
    _print_metrics(metrics)
    return metrics


def predict(args: argparse.Namespace, settings: Settings, reporter: TqdmReporter) -> PredictResult:
    predictor = _load(args.model, settings)
    predictions = predictor.predict(args.texts)
    if not args.json:
        for text, prediction in zip(args.texts, predictions, strict=True):
            score = prediction.scores[prediction.label]
            cut = " (truncated)" if prediction.truncated else ""
            print(f"{prediction.label:<9} {score:6.1%}  {text}{cut}")
    return PredictResult(
        model_version=predictor.version, form=predictor.form, predictions=predictions
    )


def _headline(metrics: Metrics) -> dict[str, Any]:
    return {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1, "n": metrics.n}


def _print_metrics(metrics: Metrics) -> None:
    print(f"model {metrics.model_version}: {metrics.headline()}")
    print(f"{'':<9} {'precision':>9} {'recall':>9} {'f1':>9}   confusion (rows: true)")
    for label, row in zip(LABELS, metrics.confusion_matrix, strict=True):
        scores = metrics.per_class[label]
        print(
            f"{label:<9} {scores.precision:9.4f} {scores.recall:9.4f} {scores.f1:9.4f}"
            f"   {' '.join(f'{count:5d}' for count in row)}"
        )


Command = Callable[[argparse.Namespace, Settings, TqdmReporter], BaseModel | dict[str, Any]]
COMMANDS: dict[str, Command] = {"train": train, "evaluate": evaluate_command, "predict": predict}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.run, "agnews")
    reporter = TqdmReporter()
    try:
        result = COMMANDS[args.command](args, settings, reporter)
    except AgNewsError as exc:
        reporter.close()
        print(f"agnews {args.command}: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, (DatasetInvalid, ModelIntegrityError)) else 1
    except (BotoCoreError, ClientError) as exc:
        reporter.close()
        print(f"agnews {args.command}: the object store failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        reporter.close()
        return 130
    if args.json:
        print(result.model_dump_json() if isinstance(result, BaseModel) else json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
