"""Fine-tuning: one training loop over length-bucketed batches, with checkpoints to resume from.

A stratified validation split carved from train.csv chooses the model (the best evaluation wins)
and stops training early; test.csv is never looked at here.
"""

import dataclasses
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.checkpoints import CheckpointStore
from pipeline.ingest import Row
from pipeline.labels import LABELS
from pipeline.modeling import (
    autocast,
    bf16_supported,
    bucketed_batches,
    class_probabilities,
    collate,
    configure_torch,
    encode,
    load_classifier,
    load_tokenizer,
    resolve_base_model,
    to_device,
)
from pipeline.registry import UNSAFE_SUFFIXES
from pipeline.report import Reporter, Ticker
from shared.jobs import EventType
from shared.results import TrainingRecord, ValidationScores
from shared.settings import Settings
from shared.training import TrainConfig, TrainingParams

PROFILES: dict[str, TrainConfig] = {
    # A few minutes on two CPU cores.
    "quick": TrainConfig(
        train_rows=3200, max_length=64, epochs=1.0, lr=1e-4, warmup=0.1, val_max_rows=400
    ),
    # The best accuracy in about 45 minutes on two CPU cores with bf16 units, for 33k rows.
    "full": TrainConfig(max_length=128, epochs=3.0, lr=8e-5, evals_per_epoch=2, patience=3),
}


def config_for(
    settings: Settings,
    profile: str | None = None,
    *,
    base_model: str | None = None,
    max_steps: int | None = None,
) -> TrainConfig:
    return PROFILES[profile or settings.training_profile].model_copy(
        update={
            "base_model": base_model or settings.base_model,
            "seed": settings.seed,
            "max_steps": max_steps,
        }
    )


@dataclass
class TrainState:
    """What a checkpoint records besides weights and optimizer: where training is."""

    step: int = 0
    total: int = 0
    seconds: float = 0.0
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    best_step: int = 0
    evals_without_gain: int = 0
    stopped_early: bool = False


@dataclass
class FitResult:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: TrainConfig
    state: TrainState
    validation: ValidationScores
    rows_trained: int
    resumed_from: int | None

    def record(self) -> TrainingRecord:
        """What a registered model keeps of its training."""
        params = TrainingParams(
            **self.config.model_dump(),
            rows_trained=self.rows_trained,
            rows_validated=self.validation.n,
            steps=self.state.step,
        )
        return TrainingRecord(
            params=params, validation=self.validation, train_seconds=round(self.state.seconds, 1)
        )

    def save(self, directory: Path) -> None:
        """A loadable model folder: safetensors weights, config with label names, tokenizer."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        for path in directory.iterdir():
            if path.suffix in UNSAFE_SUFFIXES:
                path.unlink()


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of row indices in which every prefix keeps the classes' proportions."""
    order = np.random.default_rng(seed).permutation(len(labels))
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        members = order[labels[order] == label]
        keys[members] = (np.arange(len(members)) + 0.5) / len(members)
    return order[np.argsort(keys[order], kind="stable")]


def split_rows(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: a stratified validation split, then the training subset."""
    order = stratified_order(labels, config.seed)
    n_val = min(config.val_max_rows, max(len(LABELS), round(config.val_fraction * len(labels))))
    return order[n_val:][: config.train_rows], order[:n_val]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()
    }


def _warmup_linear(total: int, warmup: float) -> Any:
    warmup_steps = max(1, round(warmup * total))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total - step) / max(1, total - warmup_steps))

    return factor


def fit(
    config: TrainConfig,
    rows: Sequence[Row],
    settings: Settings,
    reporter: Reporter,
    checkpoints: CheckpointStore | None = None,
) -> FitResult:
    device = configure_torch(settings)
    bf16 = config.bf16 and bf16_supported(device)
    torch.manual_seed(config.seed)
    labels = np.array([row.label for row in rows], dtype=np.int64)
    train_index, val_index = split_rows(labels, config)

    base = resolve_base_model(config.base_model)
    tokenizer = load_tokenizer(base)
    model = to_device(load_classifier(base), device)
    pad_id = tokenizer.pad_token_id or 0
    train_ids = encode(tokenizer, [rows[i].text for i in train_index], config.max_length)
    val_ids = encode(tokenizer, [rows[i].text for i in val_index], config.max_length)
    train_labels = torch.from_numpy(labels[train_index])
    lengths = [len(ids) for ids in train_ids]

    def epoch_batches(epoch: int) -> list[np.ndarray]:
        return bucketed_batches(lengths, config.batch_size, config.bucket_pool, config.seed + epoch)

    steps_per_epoch = len(epoch_batches(0))
    total = math.ceil(config.epochs * steps_per_epoch)
    total = min(total, config.max_steps or total)
    eval_every = max(1, steps_per_epoch // config.evals_per_epoch)

    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_linear(total, config.warmup))
    state = TrainState(total=total)
    best_weights: dict[str, torch.Tensor] | None = None
    resumed_from: int | None = None

    latest = checkpoints.latest() if checkpoints else None
    if checkpoints is not None and latest is not None:
        with tempfile.TemporaryDirectory() as scratch:
            folder = checkpoints.fetch(latest, Path(scratch))
            saved = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
            if saved["state"]["total"] == total:
                load_model(model, folder / "model.safetensors", device=str(device))
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
                torch.set_rng_state(saved["rng"])
                state = TrainState(**saved["state"])
                if saved.get("cuda_rng"):
                    torch.cuda.set_rng_state_all(saved["cuda_rng"])
                if (folder / "best.safetensors").exists():
                    best_weights = load_file(folder / "best.safetensors")
                elif state.best_step == state.step > 0:
                    best_weights = _cpu_copy(model)
                resumed_from = state.step
        message = (
            f"resumed from the checkpoint at step {resumed_from} of {total}"
            if resumed_from is not None
            else f"ignored the checkpoint at step {latest}: it planned other than {total} steps"
        )
        reporter.event(EventType.log, {"message": message})

    def validate() -> dict[str, float]:
        probabilities = class_probabilities(
            model,
            val_ids,
            pad_id=pad_id,
            batch_size=config.eval_batch_size,
            device=device,
            bf16=bf16,
        )
        truth = labels[val_index]
        picked = probabilities[np.arange(len(truth)), truth]
        return {
            "accuracy": float((probabilities.argmax(axis=1) == truth).mean()),
            "loss": float(-np.log(np.maximum(picked, 1e-12)).mean()),
        }

    def save_checkpoint() -> None:
        assert checkpoints is not None
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            save_model(model, str(folder / "model.safetensors"))
            if best_weights is not None and state.best_step != state.step:
                save_file(best_weights, str(folder / "best.safetensors"))
            torch.save(
                {
                    "state": dataclasses.asdict(state),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                },
                folder / "trainer.pt",
            )
            checkpoints.save(state.step, folder)

    ticker = Ticker(reporter, "train", total, settings.progress_interval_s, start=state.step)
    reporter.event(
        EventType.log,
        {
            "message": f"training {config.base_model} on {len(train_index)} rows "
            f"({len(val_index)} held out for validation): {total} steps of "
            f"{config.batch_size} on {device.type}{' with bf16' if bf16 else ''}",
        },
    )
    started = time.monotonic()
    seconds_before = state.seconds
    last_checkpoint = started
    window_loss = torch.zeros((), device=device)
    window_steps = window_samples = 0
    window_start = started
    batches, batches_epoch = [], -1
    model.train()
    while state.step < total and not state.stopped_early:
        epoch, index = divmod(state.step, steps_per_epoch)
        if epoch != batches_epoch:
            batches, batches_epoch = epoch_batches(epoch), epoch
        batch = batches[index]
        inputs = collate([train_ids[i] for i in batch], pad_id, device)
        with autocast(device, bf16):
            logits = model(**inputs).logits
        loss = F.cross_entropy(logits.float(), train_labels[batch].to(device))
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        window_loss += loss.detach()
        window_steps += 1
        window_samples += len(batch)

        if state.step % eval_every == 0 or state.step == total:
            scores = validate()
            gained = scores["accuracy"] > state.best_accuracy or (
                scores["accuracy"] == state.best_accuracy and scores["loss"] < state.best_loss
            )
            if gained:
                state.best_accuracy, state.best_loss = scores["accuracy"], scores["loss"]
                state.best_step, state.evals_without_gain = state.step, 0
                best_weights = _cpu_copy(model)
            else:
                state.evals_without_gain += 1
                state.stopped_early = 0 < config.patience <= state.evals_without_gain
            reporter.event(
                EventType.metric,
                {
                    "name": "validation",
                    "step": state.step,
                    "epoch": state.step / steps_per_epoch,
                    **scores,
                },
            )

        if ticker.due(state.step):
            now = time.monotonic()
            ticker.send(
                state.step,
                loss=round(float(window_loss) / window_steps, 4),
                lr=scheduler.get_last_lr()[0],
                samples_per_s=round(window_samples / max(now - window_start, 1e-9), 1),
                epoch=round(state.step / steps_per_epoch, 3),
            )
            window_loss.zero_()
            window_steps = window_samples = 0
            window_start = now

        now = time.monotonic()
        due = state.step % settings.checkpoint_every_steps == 0 or (
            now - last_checkpoint >= settings.checkpoint_interval_s
        )
        if checkpoints is not None and due and state.step < total and not state.stopped_early:
            state.seconds = seconds_before + now - started
            save_checkpoint()
            last_checkpoint = time.monotonic()

    state.seconds = seconds_before + time.monotonic() - started
    if best_weights is not None and state.best_step != state.step:
        model.load_state_dict(best_weights)
        reporter.event(
            EventType.log,
            {"message": f"kept the best validation checkpoint, from step {state.best_step}"},
        )
    validation = ValidationScores(
        n=len(val_index),
        accuracy=state.best_accuracy,
        loss=state.best_loss,
        step=state.best_step,
        steps=state.step,
        stopped_early=state.stopped_early,
    )
    return FitResult(
        model.cpu(), tokenizer, config, state, validation, len(train_index), resumed_from
    )
