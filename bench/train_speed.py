"""Training throughput: the project's trainer against a bare PyTorch loop on the same batches.

    .venv/bin/python bench/train_speed.py --steps 30 [--data data/archive.zip]
    .venv/bin/python bench/train_speed.py --steps 30 --set bf16=false

Each loop runs in its own process, so each reports its own peak memory (ru_maxrss). Samples per
second are timed over the steps after the first few (warm-up), excluding loading and validation.
"""

import argparse
import json
import multiprocessing
import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.ingest import read_archive
from pipeline.modeling import (
    autocast,
    bf16_supported,
    bucketed_batches,
    collate,
    configure_torch,
    encode,
    load_classifier,
    load_tokenizer,
    padding_of,
    resolve_base_model,
    to_device,
)
from pipeline.report import NullReporter
from pipeline.train import fit, split_rows
from shared.contracts.jobs import EventType
from shared.contracts.training import TrainConfig
from shared.settings import Settings, config_for

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent / "data" / "archive.zip"
WARMUP_STEPS = 5


class StepClock(NullReporter):
    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def progress(self, data: Mapping[str, Any]) -> None:
        self.times[int(data["step"])] = time.perf_counter()

    def event(self, type_: EventType, data: Mapping[str, Any]) -> None:
        pass


def _batches(config: TrainConfig, data: Path, settings: Settings) -> tuple[Any, ...]:
    rows = read_archive(data, settings).train.rows
    labels = np.array([row.label for row in rows])
    train_index, _ = split_rows(labels, config)
    tokenizer = load_tokenizer(resolve_base_model(config.base_model))
    ids = encode(tokenizer, [rows[i].text for i in train_index], config.max_length)
    batches = bucketed_batches(
        [len(x) for x in ids], config.batch_size, config.bucket_pool, config.seed
    )
    return rows, ids, torch.from_numpy(labels[train_index]), batches, padding_of(tokenizer)


def _rate(times: dict[int, float], sizes: list[int], steps: int) -> float:
    """Samples per second over steps WARMUP_STEPS+1 .. steps-1 (the trainer validates at its
    last step before reporting it)."""
    end = steps - 1
    return sum(sizes[WARMUP_STEPS:end]) / (times[end] - times[WARMUP_STEPS])


def trainer(config: TrainConfig, data: Path, settings: Settings) -> dict[str, Any]:
    rows, _, _, batches, _ = _batches(config, data, settings)
    clock = StepClock()
    fit(config, rows, settings.replace(progress_interval_s=0.0), clock)
    steps = int(config.max_steps or 0)
    return {"samples_per_s": _rate(clock.times, [len(b) for b in batches], steps)}


def bare(config: TrainConfig, data: Path, settings: Settings) -> dict[str, Any]:
    _, ids, labels, batches, padding = _batches(config, data, settings)
    device = configure_torch(settings)
    bf16 = config.bf16 and bf16_supported(device)
    torch.manual_seed(config.seed)
    model = to_device(
        load_classifier(resolve_base_model(config.base_model), padding.pad_id), device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=True)
    model.train()
    times: dict[int, float] = {}
    steps = int(config.max_steps or 0)
    for step, batch in enumerate(batches[:steps], start=1):
        with autocast(device, bf16):
            logits = model(**collate([ids[i] for i in batch], padding, device)).logits
        loss = F.cross_entropy(logits.float(), labels[batch].to(device))
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
        times[step] = time.perf_counter()
    return {"samples_per_s": _rate(times, [len(b) for b in batches], steps)}


def _run(name: str, config: TrainConfig, data: Path, queue: Any) -> None:
    result = {"trainer": trainer, "bare": bare}[name](config, data, Settings())
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    queue.put(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--profile", default="full")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="change a TrainConfig field",
    )
    args = parser.parse_args()
    changes = dict(item.split("=", 1) for item in args.set)
    config = config_for(Settings().training, args.profile, max_steps=args.steps).model_copy(
        update={name: json.loads(value) for name, value in changes.items()}
    )
    context = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {}
    for name in ("bare", "trainer"):
        queue = context.Queue()
        process = context.Process(target=_run, args=(name, config, args.data, queue))
        process.start()
        results[name] = queue.get()
        process.join()
    results["ratio"] = round(
        results["trainer"]["samples_per_s"] / results["bare"]["samples_per_s"], 3
    )
    results["steps"] = args.steps
    results["profile"] = args.profile
    results["changes"] = changes
    print(json.dumps(results))


if __name__ == "__main__":
    main()
