"""Every supported model family, tiny and randomly initialised: train a few steps, register with
the serving check, serve, and compare batched with single predictions.

    .venv/bin/python -m bench.families

Prints one row per family: whether it trained and served, the forms it may serve in, seconds.
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_line
from pipeline.ingest import read_archive
from pipeline.predictor import Predictor
from pipeline.stages import train_model
from shared.contracts.training import TrainConfig
from shared.settings import Settings
from testkit.archives import MINI_ARCHIVE
from testkit.families import CONFIGS, tiny_family_model
from testkit.models import Recorder

TEXTS = ["Stocks rally as oil prices fall", "Federer wins in straight sets", "NASA"]


def run(family: str, root: Path) -> tuple[bool, str, float]:
    started = time.monotonic()
    settings = Settings(data_dir=root / "data", progress_interval_s=60.0, torch_threads=1)
    config = TrainConfig(
        base_model=str(tiny_family_model(family, root / "base")),
        batch_size=8,
        max_steps=4,
        train_rows=64,
        val_max_rows=16,
        bf16=False,
    )
    info, _ = train_model(
        config, read_archive(MINI_ARCHIVE, settings), root / "model", settings, Recorder()
    )
    predictor = Predictor.load(root / "model", settings)
    batched = predictor.probabilities(TEXTS)[0]
    alone = np.vstack([predictor.probabilities([text])[0] for text in TEXTS])
    agree = bool(np.allclose(batched, alone, atol=1e-4))
    check = info.metrics.serving
    allowed = " ".join(score.form for score in check.allowed()) if check else "-"
    return agree, allowed, time.monotonic() - started


def main() -> None:
    print(f"CPU: {cpu_line()}")
    print(f"{'family':<12} {'train/serve':<12} {'forms allowed':<42} seconds")
    for family in sorted(CONFIGS):
        with tempfile.TemporaryDirectory() as scratch:
            agree, allowed, seconds = run(family, Path(scratch))
        print(f"{family:<12} {'pass' if agree else 'FAIL':<12} {allowed:<42} {seconds:.1f}")


if __name__ == "__main__":
    main()
