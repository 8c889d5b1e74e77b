"""The training plan a profile gets on this machine, without training it through.

    .venv/bin/python -m bench.train_plan [--profile full] [--data data/archive.zip]
    .venv/bin/python -m bench.train_plan --samples-per-s 22 --no-bf16

Runs the real trainer on the archive's train.csv until it announces its plan (after its timed
first steps), then stops: prints the CPU, the samples/s and tokens/s measured, and the epochs,
max_length and minutes the plan chose within the profile's budget. Where the profile adapts the
encoder to the texts first and the plan holds the whole fine-tuning, it stops once adaptation's
first steps are timed too, and prints whether the budget holds both. With --samples-per-s (at the
profile's max_length, over the epoch's average batch), trains nothing and prints the plan made
from that rate instead: another machine's, or this one's when it is not shared.
"""

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import cpu_line
from pipeline.ingest import Row, read_archive
from pipeline.modeling import load_tokenizer, resolve_base_model
from pipeline.plan import UNTIMED_STEPS, Planner, Probe, Workload
from pipeline.report import NullReporter
from pipeline.train import fit, split_rows
from pipeline.trainer import Splits
from shared.contracts.jobs import EventType
from shared.contracts.training import AdaptationPlan, TrainConfig, TrainingPlan
from shared.settings import Settings, config_for

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "archive.zip"


class Planned(Exception):
    def __init__(self, plan: TrainingPlan | AdaptationPlan) -> None:
        super().__init__(plan.describe())
        self.plan = plan


class StopAtPlan(NullReporter):
    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        if "plan" in data:
            raise Planned(TrainingPlan.model_validate(data["plan"]))
        if "adaptation" in data:
            raise Planned(AdaptationPlan.model_validate(data["adaptation"]))


def measured(
    config: TrainConfig, rows: Sequence[Row], settings: Settings
) -> TrainingPlan | AdaptationPlan:
    """The plan, or where the run adapts first, the adaptation it chose."""
    try:
        fit(config, rows, settings, StopAtPlan())
    except Planned as planned:
        return planned.plan
    raise SystemExit("training ended without announcing a plan")


def from_rate(config: TrainConfig, rows: Sequence[Row], samples_per_s: float) -> TrainingPlan:
    """The plan of a run whose timed steps, average batches, ran at samples_per_s."""
    labels = np.array([row.label for row in rows])
    tokenizer = load_tokenizer(resolve_base_model(config.base_model))
    splits = Splits(tokenizer, rows, labels, *split_rows(labels, config))
    train, val = splits.tokenized(config.max_length)
    workload = Workload.of(config, train.lengths, val.lengths)
    tokens = workload.step_tokens(config.max_length)
    tokens_per_s = samples_per_s * tokens / config.batch_size
    probe = Probe(config.probe_steps)
    steps = UNTIMED_STEPS + config.probe_steps
    for _ in range(steps):
        probe.add(config.batch_size, round(tokens), tokens / tokens_per_s)
    planner = Planner(workload, "cpu", config.bf16)
    return planner.plan(probe, spent_s=steps * tokens / tokens_per_s, done=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--profile", default="full")
    parser.add_argument("--samples-per-s", type=float, help="plan from this rate; train nothing")
    parser.add_argument("--no-bf16", action="store_true", help="train in fp32")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    settings = Settings()
    config = config_for(settings.training, args.profile).model_copy(
        update={"bf16": not args.no_bf16}
    )
    rows = read_archive(args.data, settings).train.rows
    started = time.monotonic()
    plan = (
        measured(config, rows, settings)
        if args.samples_per_s is None
        else from_rate(config, rows, args.samples_per_s)
    )
    if isinstance(plan, AdaptationPlan):
        print(
            f"adapts to the texts first: {plan.steps} steps of masked-LM at {plan.tokens_per_s} "
            f"tokens/s, {plan.predicted_s} s predicted, then the whole fine-tuning afresh in "
            f"{plan.fine_tuning_s} s"
        )
    else:
        print(plan.describe())
    result = {
        "cpu": cpu_line(),
        "profile": args.profile,
        "rows": len(rows),
        "seconds_to_plan": round(time.monotonic() - started, 1),
        "plan": plan.model_dump(mode="json"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
