"""Every model family trains, registers, passes its serving check and serves through the same
code, with its own padding side, pad token and length limit."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.ingest import read_archive
from pipeline.modeling import load_tokenizer, padding_of
from pipeline.predictor import Predictor
from pipeline.stages import train_model
from shared.contracts.training import TrainConfig
from shared.settings import Settings
from testkit.archives import MINI_ARCHIVE
from testkit.families import CONFIGS, POSITIONS, tiny_family_model
from testkit.models import Recorder

TEXTS = [
    "Stocks rally as oil prices fall",
    "Federer wins in straight sets at Wimbledon after a long rain delay on centre court",
    "NASA",
    "Talks on the nuclear programme stall in Geneva " * 6,
]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_family_trains_registers_and_serves_batched_as_alone(family: str, tmp_path: Path) -> None:
    base = tiny_family_model(family, tmp_path / "base")
    settings = Settings(data_dir=tmp_path / "data", progress_interval_s=60.0, torch_threads=1)
    config = TrainConfig(
        base_model=str(base),
        max_length=128,
        batch_size=8,
        max_steps=4,
        train_rows=64,
        val_max_rows=16,
        eval_batch_size=16,
        bf16=False,
    )
    dataset = read_archive(MINI_ARCHIVE, settings)
    info, _ = train_model(config, dataset, tmp_path / "model", settings, Recorder())

    assert info.params.max_length <= POSITIONS, "the length limit comes from the model"
    assert info.params.steps == 4
    assert info.metrics.n == 80
    assert info.metrics.serving is not None
    tokenizer = load_tokenizer(str(tmp_path / "model"))
    assert tokenizer.pad_token is not None
    assert padding_of(tokenizer).left is (family == "xlnet")

    predictor = Predictor.load(tmp_path / "model", settings)
    batched = predictor.probabilities(TEXTS)[0]
    alone = np.vstack([predictor.probabilities([text])[0] for text in TEXTS])
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    assert predictor.predict(TEXTS)[3].truncated is True
