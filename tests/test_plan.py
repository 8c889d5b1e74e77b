"""Training within a time budget: the plan comes from a measured rate, fits the budget, uses a
bigger one, falls back to shorter texts only when an epoch does not fit, is announced, recorded
and kept by a resumed run."""

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.checkpoints import LocalCheckpoints
from pipeline.ingest import read_archive
from pipeline.modeling import bucketed_batches
from pipeline.plan import (
    FORWARD_SHARE,
    PLAN_SHARE,
    UNTIMED_STEPS,
    Cost,
    Pace,
    Planner,
    Probe,
    Schedule,
    Workload,
    evaluations,
)
from pipeline.stages import train_model
from pipeline.train import fit
from pipeline.trainer import Trainer
from shared.contracts.models import HISTORY
from shared.contracts.results import Metrics, StageSeconds, TrainResult
from shared.contracts.training import TrainConfig, TrainingPlan
from shared.progress import ProgressBars
from shared.settings import Settings
from testkit.archives import MINI_ARCHIVE
from testkit.families import tiny_family_model
from testkit.job_results import train_result
from testkit.models import Recorder

TOKENS_PER_S = 4000.0
SPENT_S = 5.0


def workload(**changes: Any) -> Workload:
    config = TrainConfig(
        max_length=128, budget_s=1.0, max_epochs=3.0, evals_per_epoch=2, bucket_pool=4
    ).model_copy(update=changes)
    rng = np.random.default_rng(0)
    train, val = rng.integers(8, 129, size=650), rng.integers(8, 129, size=64)
    work = Workload.of(config, train, val)
    batches = bucketed_batches(train.tolist(), config.batch_size, config.bucket_pool, config.seed)
    assert work.steps_per_epoch == len(batches) == 21
    assert work.eval_every == 10
    return work


def probe(steps: int = 4) -> Probe:
    """Steps of 32 rows at 64 tokens, each taking exactly what TOKENS_PER_S says."""
    measured = Probe(steps)
    for _ in range(UNTIMED_STEPS + steps):
        measured.add(32, 32 * 64, 32 * 64 / TOKENS_PER_S)
    return measured


def epoch_s(work: Workload, max_length: int) -> float:
    return work.epoch_tokens(max_length) / TOKENS_PER_S


def planned(work: Workload, budget_s: float) -> TrainingPlan:
    config = work.config.model_copy(update={"budget_s": budget_s})
    done = UNTIMED_STEPS + 4
    return Planner(dataclasses.replace(work, config=config), "cpu", False).plan(
        probe(), spent_s=SPENT_S, done=done
    )


def test_a_plan_fills_its_budget_at_the_measured_rate() -> None:
    work = workload()
    budget_s = (SPENT_S + 1.5 * epoch_s(work, 128)) / PLAN_SHARE
    plan = planned(work, budget_s)

    assert plan.tokens_per_s == TOKENS_PER_S
    assert plan.samples_per_s == round(32 / (32 * 64 / TOKENS_PER_S), 2)
    assert plan.timed_steps == 4
    assert plan.max_length == plan.measured_length == 128
    assert 1.0 < plan.epochs < 3.0
    cost = Cost(
        step_s=epoch_s(work, 128) / work.steps_per_epoch,
        eval_s=work.validation_tokens(128) * FORWARD_SHARE / TOKENS_PER_S,
        eval_every=work.eval_every,
        spent_s=SPENT_S,
        done=UNTIMED_STEPS + 4,
    )
    assert plan.predicted_s == pytest.approx(cost.seconds(plan.steps), abs=0.05)
    assert cost.seconds(plan.steps) <= PLAN_SHARE * budget_s < cost.seconds(plan.steps + 1)
    assert plan.predicted_s is not None
    assert plan.predicted_s <= budget_s
    assert plan.budget_s == budget_s
    assert "over 4 timed steps" in plan.describe()


def test_a_bigger_budget_buys_more_epochs_up_to_the_cap() -> None:
    work = workload()
    budgets = [(SPENT_S + epochs * epoch_s(work, 128)) / PLAN_SHARE for epochs in (1.2, 2.4, 50)]
    epochs = [planned(work, budget).epochs for budget in budgets]
    assert epochs[0] < epochs[1] < epochs[2]
    assert planned(work, budgets[2]).steps == math.ceil(3.0 * work.steps_per_epoch)


def test_max_length_is_cut_only_when_not_even_one_epoch_fits() -> None:
    work = workload()
    validations = evaluations(work.steps_per_epoch, work.eval_every)
    validation_s = work.validation_tokens(128) * FORWARD_SHARE / TOKENS_PER_S
    one_epoch = SPENT_S + epoch_s(work, 128) + validations * validation_s
    assert planned(work, 1.001 * one_epoch / PLAN_SHARE).max_length == 128

    budget_s = (SPENT_S + 0.5 * epoch_s(work, 128)) / PLAN_SHARE
    plan = planned(work, budget_s)
    assert plan.max_length < 128
    assert plan.epochs >= 1.0
    assert plan.predicted_s is not None
    assert plan.predicted_s <= budget_s
    assert "cut from 128 to fit one epoch" in plan.describe()

    hopeless = planned(work, SPENT_S)
    assert hopeless.max_length == 32
    assert hopeless.steps == UNTIMED_STEPS + 4, "the timed steps are all the budget allowed"


def paced(work: Workload, plan: TrainingPlan, slower: float, steps: int) -> Pace:
    """The pace after the probe and `steps` more average steps at 1/`slower` its rate."""
    config = work.config.model_copy(update={"budget_s": plan.budget_s})
    pace = Planner(dataclasses.replace(work, config=config), "cpu", False).pace(plan, probe())
    for _ in range(steps):
        pace.add(round(pace.work.step_tokens), slower * pace.work.step_tokens / TOKENS_PER_S)
    return pace


def test_a_plan_is_re_planned_when_the_pace_since_the_probe_leaves_the_budget_band() -> None:
    work = workload()
    budget_s = (SPENT_S + 1.5 * epoch_s(work, 128)) / PLAN_SHARE
    plan = planned(work, budget_s)
    planner = Planner(
        dataclasses.replace(work, config=work.config.model_copy(update={"budget_s": budget_s})),
        "cpu",
        False,
    )
    done = UNTIMED_STEPS + 4 + 10

    def replanned(slower: float, steps: int = 10) -> tuple[Pace, float, TrainingPlan | None]:
        """The plan after `steps` more steps and their validation passes at 1/`slower` the
        probe's rate."""
        pace = paced(work, plan, slower, steps)
        as_planned = Cost(
            step_s=pace.work.step_tokens / TOKENS_PER_S,
            eval_s=pace.work.eval_tokens / TOKENS_PER_S,
            eval_every=work.eval_every,
            spent_s=SPENT_S,
            done=done - steps,
        )
        spent_s = SPENT_S + slower * (as_planned.seconds(done) - SPENT_S)
        return pace, spent_s, planner.kept_to_budget(plan, pace, spent_s=spent_s, done=done)

    steady, _, same = replanned(1.0)
    assert steady.tokens_per_s == pytest.approx(TOKENS_PER_S, rel=1e-3)
    assert same is None

    slow, spent_s, cut = replanned(2.0)
    assert cut is not None
    assert done < cut.steps < plan.steps
    assert (cut.replanned_at_step, cut.first_steps) == (done, plan.steps)
    assert slow.tokens_per_s is not None
    assert cut.pace_tokens_per_s == round(slow.tokens_per_s, 1)
    cost = slow.cost(spent_s=spent_s, done=done)
    assert cost is not None
    assert cost.seconds(cut.steps) <= PLAN_SHARE * budget_s < cost.seconds(cut.steps + 1)
    assert cut.predicted_s == pytest.approx(cost.seconds(cut.steps), abs=0.05)
    assert f"re-planned at step {done} (first planned {plan.steps} steps)" in cut.describe()
    assert planner.kept_to_budget(cut, slow, spent_s=cost.spent_s, done=done) is None

    _, _, longer = replanned(0.5)
    assert longer is not None
    assert plan.steps < longer.steps <= planner.upper_bound()

    _, _, too_soon = replanned(2.0, steps=work.config.probe_steps - 1)
    assert too_soon is None, "a probe's worth of steps passes between plans"
    assert planner.pace(plan).tokens_per_s is None, "a resumed run times its own pace first"


def test_a_run_that_slows_after_its_plan_is_cut_and_ends_within_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, settings = budgeted(tmp_path, budget_s=4.0, max_epochs=100.0)
    probed = UNTIMED_STEPS + config.probe_steps
    step = Trainer.step

    def slowed(self: Trainer, *args: Any) -> Any:
        if self.state.step >= probed:
            time.sleep(0.05)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "step", slowed)
    recorder = Recorder()
    result = fit(config, read_archive(MINI_ARCHIVE, settings).train.rows, settings, recorder)

    (_, first), *later = plans(recorder)
    assert first.replanned_at_step is None
    assert later, "the slowdown re-planned the run"
    message, last = later[-1]
    assert last.replanned_at_step is not None
    assert last.steps < first.steps
    assert last.first_steps == first.steps
    assert message == last.describe()
    assert result.state.step == last.steps == result.record().params.steps
    assert result.state.seconds <= 1.5 * 4.0, "the first plan at this pace takes several times it"
    lrs = [p["lr"] for p in result.state.train_curve if p["step"] >= last.replanned_at_step]
    if last.steps > last.replanned_at_step:  # else the plan ended the run where it was made
        assert lrs[-1] == 0.0, "the decay ends at the new last step"
    assert all(later <= earlier for earlier, later in itertools.pairwise(lrs))


def test_the_cli_progress_bar_follows_a_re_planned_total(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bars = ProgressBars()
    bars.progress({"stage": "train", "step": 5, "total": 400})
    bars.progress({"stage": "train", "step": 12, "total": 300})
    bars.close()
    assert "12/300" in capsys.readouterr().err.split("\r")[-1]


def test_a_planned_schedule_goes_on_from_where_the_timed_steps_left_it() -> None:
    schedule = Schedule.over(400, warmup=0.1)
    assert schedule(5) == pytest.approx(6 / 41)
    before = schedule(12)
    schedule.plan(200, warmup=0.1, step=12)
    assert schedule(12) == pytest.approx(before)
    assert schedule(20) == pytest.approx(1.0)
    assert schedule(110) == pytest.approx(0.5)
    assert schedule(200) == 0.0

    late = Schedule.over(10, warmup=0.1)
    assert late(12) == 1.0
    late.plan(100, warmup=0.1, step=12)
    assert late(12) == 1.0
    assert late(56) == pytest.approx(0.5)


def budgeted(tmp_path: Path, **changes: Any) -> tuple[TrainConfig, Settings]:
    settings = Settings(data_dir=tmp_path / "data", progress_interval_s=0.0, torch_threads=1)
    config = TrainConfig(
        base_model=str(tiny_family_model("bert", tmp_path / "base")),
        batch_size=16,
        val_fraction=0.1,
        bf16=False,
        linear_member=False,
        budget_s=600.0,
        max_epochs=2.0,
        probe_steps=3,
    ).model_copy(update=changes)
    return config, settings


def plans(recorder: Recorder) -> list[tuple[str, TrainingPlan]]:
    return [
        (data["message"], TrainingPlan.model_validate(data["plan"]))
        for _, data in recorder.events
        if "plan" in data
    ]


def test_a_budgeted_run_announces_its_plan_and_runs_every_planned_step(tmp_path: Path) -> None:
    config, settings = budgeted(tmp_path)
    recorder = Recorder()
    dataset = read_archive(MINI_ARCHIVE, settings)
    info, _ = train_model(
        config,
        dataset,
        tmp_path / "model",
        settings,
        recorder,
        stages=StageSeconds(ingest=1.5),
    )

    [(message, plan)] = plans(recorder)
    assert message == plan.describe()
    assert plan.timed_steps == 3
    assert plan.samples_per_s is not None
    assert plan.samples_per_s > 0
    assert plan.predicted_s is not None
    assert plan.predicted_s <= 600.0
    assert info.params.plan == plan
    assert info.params.steps == plan.steps
    assert info.params.epochs == plan.epochs
    assert recorder.steps()[-1] == plan.steps
    totals = [data["total"] for data in recorder.progresses if data["stage"] == "train"]
    assert set(totals[UNTIMED_STEPS + 3 - 1 :]) == {plan.steps}
    history = json.loads((tmp_path / "model" / HISTORY).read_text())
    assert history["train"][-1]["lr"] == 0.0, "the decay ends at the planned step"

    stages = info.metrics.stage_seconds
    assert stages is not None
    assert stages.ingest == 1.5
    assert stages.train is not None
    assert stages.evaluate is not None
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"The {plan.describe()}." in card
    assert "Wall time by stage: ingest 1.5 s, train " in card


def test_a_resumed_run_keeps_its_plan(tmp_path: Path) -> None:
    config, settings = budgeted(tmp_path)
    settings = settings.replace(checkpoint_every_steps=2)
    rows = read_archive(MINI_ARCHIVE, settings).train.rows
    checkpoints = LocalCheckpoints(tmp_path / "checkpoints")
    first = Recorder(fail_at=UNTIMED_STEPS + 3 + 3)
    with pytest.raises(RuntimeError, match="worker lost at step 8"):
        fit(config, rows, settings, first, checkpoints)
    [(_, plan)] = plans(first)

    again = Recorder()
    result = fit(config, rows, settings, again, checkpoints)
    assert f"resumed from the checkpoint at step 6 of {plan.steps}" in again.logs()
    assert plans(again) == [(plan.describe() + " (kept from the checkpoint)", plan)]
    assert again.steps()[0] == 7
    assert result.state.step == plan.steps
    assert result.record().params.plan == plan


def test_a_run_without_a_budget_or_too_short_to_time_has_a_fixed_plan(tmp_path: Path) -> None:
    config, settings = budgeted(tmp_path, budget_s=None, epochs=1.0, max_steps=4)
    recorder = Recorder()
    result = fit(config, read_archive(MINI_ARCHIVE, settings).train.rows, settings, recorder)
    [(message, plan)] = plans(recorder)
    assert plan.steps == 4
    assert plan.budget_s is None
    assert plan.timed_steps == 0
    assert message.endswith("no time budget")
    assert result.state.step == 4

    config, settings = budgeted(tmp_path, max_steps=4)
    recorder = Recorder()
    fit(config, read_archive(MINI_ARCHIVE, settings).train.rows, settings, recorder)
    [(message, plan)] = plans(recorder)
    assert plan.steps == 4
    assert message.endswith("too few steps to time against the 10.0-minute budget")


def test_results_stored_before_stage_times_still_parse() -> None:
    stored = train_result().model_dump(mode="json")
    del stored["stage_seconds"]
    assert TrainResult.model_validate(stored).stage_seconds == StageSeconds()
    metrics = Metrics.model_validate(stored["metrics"])
    assert metrics.stage_seconds is None
    times = StageSeconds(ingest=2.04, train=2700.0, promote=0.3)
    assert times.describe() == "ingest 2.0 s, train 45.0 min, promote 0.3 s"
