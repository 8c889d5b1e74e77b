"""Adapting the encoder to the training texts (masked-LM) before fine-tuning: the masking, each
family's head, the move into the classifier, the budget's say, and a lost worker's resume."""

import dataclasses
import gc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pipeline.adapt
from pipeline.adapt import IGNORED, SCORED_ROWS, Adapter, mask_tokens, scored_rows, unadaptable
from pipeline.checkpoints import LocalCheckpoints
from pipeline.ingest import Row
from pipeline.modeling import load_classifier, load_tokenizer, padding_of
from pipeline.plan import PLAN_SHARE, UNTIMED_STEPS, Planner, Probe, Rate, Workload
from pipeline.train import FitResult, fit
from shared.contracts.training import PROFILES, TrainConfig
from shared.progress import ProgressBars
from shared.settings import Settings
from testkit.families import CONFIGS, tiny_family_model
from testkit.models import Recorder, mini_dataset

SPECIALS = torch.tensor([0, 1, 2])  # pad, [CLS], [SEP] of the masking test's vocabulary
MASK_ID = 3


def batch_of(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        attention[index, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": attention}


def test_masking_scores_a_share_of_each_texts_real_tokens_and_nothing_else() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = [
        [1, *np.random.default_rng(i).integers(10, 100, size=5 + i % 60).tolist(), 2]
        for i in range(400)
    ]
    rows.append([1, 2])  # nothing to mask but its specials
    batch = batch_of(rows)
    inputs, labels = mask_tokens(batch, SPECIALS, MASK_ID, 100, 0.15, generator)

    ids, real = batch["input_ids"], batch["attention_mask"].bool()
    scored = labels != IGNORED
    assert not (scored & ~real).any(), "padding is never scored"
    assert not (scored & torch.isin(ids, SPECIALS)).any(), "nor are [CLS] and [SEP]"
    assert (labels[scored] == ids[scored]).all()
    assert scored[:-1].any(dim=1).all(), "every text with words has one scored at least"
    assert not scored[-1].any()
    words = real & ~torch.isin(ids, SPECIALS)
    assert 0.14 < scored.sum() / words.sum() < 0.17
    masked = (inputs == MASK_ID) & scored
    kept = (inputs == ids) & scored
    assert 0.76 < masked.sum() / scored.sum() < 0.84
    assert 0.07 < kept.sum() / scored.sum() < 0.14, "10 % kept, and a few random draws alike"
    assert (inputs[~scored] == ids[~scored]).all(), "what is not scored is not changed"

    again = mask_tokens(batch, SPECIALS, MASK_ID, 100, 0.15, torch.Generator().manual_seed(0))
    assert (again[0] == inputs).all()
    assert (again[1] == labels).all()


def test_the_scored_positions_come_in_a_few_shapes_whatever_the_masked_count() -> None:
    shapes = set()
    for count in range(1, 400):
        labels = torch.full((8, 60), IGNORED)
        flat = torch.randperm(480, generator=torch.Generator().manual_seed(count))[:count]
        labels.view(-1)[flat] = flat + 1000
        picked, targets = scored_rows(labels)
        shapes.add(len(picked))
        assert len(picked) % SCORED_ROWS == 0
        assert sorted(picked[targets != IGNORED].tolist()) == sorted(flat.tolist())
        assert (targets[targets != IGNORED] == picked[targets != IGNORED] + 1000).all()
        assert (targets == IGNORED).sum() == len(picked) - count
    assert len(shapes) == 7


def adapter_over(folder: Path, steps: int = 4, **changes: Any) -> Adapter:
    tokenizer = load_tokenizer(str(folder))
    config = TrainConfig(base_model=str(folder), max_length=32, bf16=False, **changes)
    return Adapter(
        str(folder), tokenizer, config, padding_of(tokenizer), torch.device("cpu"), False, steps
    )


ADAPTABLE = ["bert", "distilbert", "albert", "roberta", "mpnet", "deberta-v2"]


@pytest.mark.parametrize("family", ADAPTABLE)
def test_each_family_adapts_and_its_encoder_moves_into_the_classifier(
    family: str, tmp_path: Path
) -> None:
    folder = tiny_family_model(family, tmp_path / family)
    adapter = adapter_over(folder, adapt_lr=1e-2)
    texts = [row.text for row in mini_dataset().train.rows[:8]]
    ids = load_tokenizer(str(folder))(texts, truncation=True, max_length=32)["input_ids"]
    before = {k: v.clone() for k, v in adapter.model.base_model.state_dict().items()}
    losses = [float(adapter.step(ids)[0]) for _ in range(4)]
    assert all(np.isfinite(losses))
    after = adapter.model.base_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the encoder learned"

    torch.manual_seed(0)
    classifier = load_classifier(str(folder), adapter.padding.pad_id)
    head = {k: v.clone() for k, v in classifier.state_dict().items()}
    adapter.into(classifier)
    moved = classifier.base_model.state_dict()
    for key, value in after.items():
        assert torch.equal(moved[key], value), key
    encoder = {f"{classifier.base_model_prefix}.{key}" for key in after}
    for key, value in classifier.state_dict().items():
        if key not in encoder:
            assert torch.equal(value, head[key]), f"{key} is not the encoder's: it stays"


@pytest.mark.parametrize("family", ["bert", "albert", "roberta", "mpnet"])
def test_scoring_the_masked_positions_only_gives_the_loss_of_scoring_every_one(
    family: str, tmp_path: Path
) -> None:
    adapter = adapter_over(tiny_family_model(family, tmp_path / family))
    assert adapter.head_name is not None
    adapter.model.train(False)
    tokenizer = load_tokenizer(str(tmp_path / family))
    texts = [row.text for row in mini_dataset().train.rows[:6]]
    batch = batch_of(tokenizer(texts, truncation=True, max_length=32)["input_ids"])
    specials = torch.tensor(tokenizer.all_special_ids)
    inputs, labels = mask_tokens(
        batch, specials, adapter.mask_id, adapter.vocab_size, 0.3, torch.Generator()
    )
    with torch.no_grad():
        masked_only = adapter.loss(inputs, batch["attention_mask"], labels)
        every = adapter.model(
            input_ids=inputs, attention_mask=batch["attention_mask"], labels=labels
        ).loss
    assert float(masked_only) == pytest.approx(float(every), rel=1e-5)


def test_families_without_a_masked_lm_form_are_not_adapted(tmp_path: Path) -> None:
    for family in ("xlnet", "gpt2"):
        folder = tiny_family_model(family, tmp_path / family)
        reason = unadaptable(CONFIGS[family](10, 0).model_type, load_tokenizer(str(folder)))
        assert reason is not None
        assert "no masked-language-model form" in reason
    bert = load_tokenizer(str(tiny_family_model("bert", tmp_path / "bert")))
    assert unadaptable("bert", bert) is None


def test_adaptation_is_chosen_only_where_it_and_the_whole_fine_tuning_fit_the_budget() -> None:
    lengths = np.full(3200, 40)
    config = TrainConfig(max_epochs=2.0, adapt_epochs=1.0, budget_s=1000.0, evals_per_epoch=2)
    work = Workload.of(config, lengths, np.full(200, 40))
    fine = Probe(steps=10, seen=12, samples=320, tokens=320 * 40, seconds=4.0)  # 0.4 s a step
    masked_lm = Probe(steps=10, seen=12, samples=320, tokens=320 * 40, seconds=8.0)

    def decision(budget_s: float, spent_s: float = 20.0) -> Any:
        planner = Planner(
            dataclasses.replace(work, config=config.model_copy(update={"budget_s": budget_s})),
            "cpu",
            False,
        )
        return planner.adapt_or_not(fine, masked_lm, done=12, spent_s=spent_s)

    chosen = decision(1000.0)
    assert chosen.chosen
    assert chosen.reason is None
    assert chosen.steps == 100
    assert chosen.rows == 3200
    assert chosen.predicted_s == pytest.approx(100 * 0.8)
    fine_tuning_s = chosen.fine_tuning_s
    assert fine_tuning_s is not None
    assert 200 * 0.4 < fine_tuning_s < 200 * 0.45
    ends_s = 20.0 + 88 * 0.8 + fine_tuning_s
    assert decision(ends_s / PLAN_SHARE + 1).chosen
    refused = decision(ends_s / PLAN_SHARE - 1)
    assert not refused.chosen
    assert refused.reason is not None
    assert "with 2 epochs of fine-tuning it would end at" in refused.reason
    assert "no adaptation to the texts first" in refused.describe()

    planner = Planner(work, "cpu", False)
    full = planner.plan(fine, spent_s=5.0, done=12)
    assert planner.adapts(full)
    assert not planner.adapts(full.model_copy(update={"steps": full.steps - 1}))
    assert not Planner(
        dataclasses.replace(work, config=config.model_copy(update={"adapt_epochs": 0.0})),
        "cpu",
        False,
    ).adapts(full)


def adapting(**changes: Any) -> TrainConfig:
    fixed = {"budget_s": None, "epochs": 1.0, "train_rows": None, "val_max_rows": 40}
    return PROFILES["quick"].model_copy(update={"adapt_epochs": 1.0, **fixed, **changes})


def rows() -> list[Row]:
    return list(mini_dataset().train.rows)


def phases(recorder: Recorder) -> list[tuple[str | None, int]]:
    return [(data.get("phase"), data["step"]) for data in recorder.progresses]


def test_a_run_adapts_to_its_training_texts_then_fine_tunes_afresh(tmp_path: Path) -> None:
    settings = Settings(progress_interval_s=0.0, data_dir=tmp_path)
    recorder = Recorder()
    result = fit(adapting(), rows(), settings, recorder)

    steps = list(range(1, 13))
    assert phases(recorder) == [("adapt", s) for s in steps] + [(None, s) for s in steps]
    plan = result.record().params.plan
    assert plan is not None
    assert plan.adaptation is not None
    adaptation = plan.adaptation
    assert adaptation.chosen
    assert adaptation.steps == 12
    assert adaptation.rows == 380
    assert adaptation.first_loss is not None
    assert adaptation.last_loss is not None
    assert adaptation.last_loss < adaptation.first_loss - 1.0, "it learned the texts' words"
    assert "adapted to the texts first: 1 epochs (12 steps) of masked-LM" in plan.describe()
    curve = result.record().history.adapt
    assert [point.step for point in curve] == steps
    assert (curve[0].loss, curve[-1].loss) == (adaptation.first_loss, adaptation.last_loss)
    assert result.state.seconds >= (adaptation.seconds or 0) > 0
    assert result.validation.accuracy > 0.25


class ClassifierCensus(Recorder):
    """Counts the sequence classifiers alive at each step of adaptation."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: dict[int, int] = {}

    def progress(self, data: Mapping[str, Any]) -> None:
        super().progress(data)
        if data.get("phase") == "adapt":
            # type(), not isinstance: reading __class__ wakes deprecated module attributes.
            self.alive[data["step"]] = sum(
                type(thing).__name__.endswith("ForSequenceClassification")
                for thing in gc.get_objects()
            )


def test_a_budgeted_run_times_adaptation_then_adapts_without_its_first_classifier(
    tmp_path: Path,
) -> None:
    settings = Settings(progress_interval_s=0.0, data_dir=tmp_path)
    census = ClassifierCensus()
    result = fit(adapting(budget_s=600.0, max_epochs=1.0, probe_steps=2), rows(), settings, census)

    # Fine-tuning's probe (its fourth step, which chose to adapt, is not shown), adaptation
    # (its first four steps timed), fine-tuning afresh.
    steps = list(range(1, 13))
    assert phases(census) == (
        [(None, s) for s in (1, 2, 3)] + [("adapt", s) for s in steps] + [(None, s) for s in steps]
    )
    plan = result.record().params.plan
    assert plan is not None
    assert plan.adaptation is not None
    assert plan.adaptation.chosen
    assert plan.adaptation.predicted_s is not None
    assert plan.adaptation.fine_tuning_s is not None
    assert plan.steps == 12
    assert [census.alive[s] for s in range(1, 5)] == [1] * 4, "timed beside the probe's classifier"
    assert [census.alive[s] for s in steps[4:]] == [0] * 8, "then adapted without it"


class SlowedRate(Rate):
    """Adaptation's pace, as if each step took an hour more: longer than the budget."""

    def add(self, tokens: int, seconds: float) -> None:
        super().add(tokens, seconds + 3600.0)


def test_an_adaptation_that_slows_is_cut_short_and_fine_tuning_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(progress_interval_s=0.0, data_dir=tmp_path)
    config = adapting(budget_s=600.0, max_epochs=1.0, probe_steps=2)
    timed = UNTIMED_STEPS + config.probe_steps
    monkeypatch.setattr(pipeline.adapt, "Rate", SlowedRate)
    recorder = Recorder()
    result = fit(config, rows(), settings, recorder)

    plan = result.record().params.plan
    assert plan is not None
    adaptation = plan.adaptation
    assert adaptation is not None
    assert adaptation.chosen, "timed before it slowed, it fitted"
    assert adaptation.cut_at_step == adaptation.steps == timed + config.probe_steps
    assert adaptation.first_steps == 12
    assert adaptation.cut_at_step is not None
    assert timed < adaptation.cut_at_step <= adaptation.steps < 12
    assert f"cut from 12 at step {adaptation.cut_at_step}" in plan.describe()
    adapted = [(phase, s) for phase, s in phases(recorder) if phase == "adapt"]
    assert adapted == [("adapt", s) for s in range(1, adaptation.steps + 1)]
    assert plan.steps == 12, "fine-tuning kept whole"
    assert result.state.step == 12
    assert any("adaptation cut to" in message for message in recorder.logs())


def test_a_run_whose_budget_holds_nothing_more_does_not_adapt(tmp_path: Path) -> None:
    settings = Settings(progress_interval_s=0.0, data_dir=tmp_path)
    config = adapting(budget_s=0.5, max_epochs=1.0, probe_steps=2)
    recorder = Recorder()
    result = fit(config, rows(), settings, recorder)

    assert all(phase is None for phase, _ in phases(recorder)), "not even timed"
    plan = result.record().params.plan
    assert plan is not None
    assert plan.adaptation is not None
    assert not plan.adaptation.chosen
    assert plan.adaptation.reason == "the budget does not hold 1 epochs of fine-tuning alone"


def test_a_lost_worker_resumes_adaptation_where_it_was_and_never_adapts_twice(
    tmp_path: Path,
) -> None:
    settings = Settings(progress_interval_s=0.0, data_dir=tmp_path, checkpoint_every_steps=4)
    whole = fit(adapting(), rows(), settings, Recorder())
    checkpoints = LocalCheckpoints(tmp_path / "checkpoints")

    with pytest.raises(RuntimeError, match="worker lost at step 6"):
        fit(adapting(), rows(), settings, Recorder(fail_at=6, fail_phase="adapt"), checkpoints)
    second = Recorder(fail_at=2)
    with pytest.raises(RuntimeError, match="worker lost at step 2"):
        fit(adapting(), rows(), settings, second, checkpoints)
    assert "resumed adapting to the texts from the checkpoint at step 4 of 12" in second.logs()
    assert phases(second) == [("adapt", s) for s in range(5, 13)] + [(None, 1), (None, 2)]

    third = Recorder()
    resumed = fit(adapting(), rows(), settings, third, checkpoints)
    assert "resumed from the checkpoint at step 0 of 12" in third.logs()
    assert phases(third) == [(None, s) for s in range(1, 13)], "adaptation is not run again"
    assert_same_training(resumed, whole)


def assert_same_training(resumed: FitResult, whole: FitResult) -> None:
    adapted, adapted_whole = (
        result.record().params.plan.adaptation  # type: ignore[union-attr]
        for result in (resumed, whole)
    )
    assert adapted is not None
    assert adapted_whole is not None
    assert adapted.last_loss == pytest.approx(adapted_whole.last_loss, abs=1e-3)
    curve, curve_whole = (result.record().history.adapt for result in (resumed, whole))
    assert [point.step for point in curve] == [point.step for point in curve_whole]
    assert [point.loss for point in curve] == pytest.approx(
        [point.loss for point in curve_whole], abs=1e-3
    )
    assert resumed.validation.loss == pytest.approx(whole.validation.loss, abs=1e-3)


def test_the_cli_shows_adaptation_in_a_bar_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    bars = ProgressBars()
    bars.progress({"stage": "train", "phase": "adapt", "step": 984, "total": 984})
    bars.progress({"stage": "train", "step": 5, "total": 1968})
    bars.close()
    drawn = capsys.readouterr().err
    assert "train (adapt): 100%" in drawn
    assert "5/1968" in drawn.split("\r")[-1]
