"""A loaded model answering texts: the one path that serving and evaluation both take."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from pipeline.labels import ID2LABEL, LABELS
from pipeline.modeling import (
    class_probabilities,
    configure_torch,
    encode_flagged,
    load_tokenizer,
    quiet_transformers,
    to_device,
)
from pipeline.registry import download, verify
from pipeline.text import clean_text
from shared.errors import ModelIntegrityError, NoProductionModel
from shared.registry import ModelRegistry
from shared.settings import Settings


class Predictor:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        version: str,
        max_length: int,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.model = to_device(model, device)
        self.model.train(False)
        self.tokenizer = tokenizer
        self.version = version
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device

    @classmethod
    def load(cls, model_dir: Path, settings: Settings) -> "Predictor":
        """A model directory whose files all match its manifest (else ModelIntegrityError)."""
        info = verify(model_dir)
        return cls.from_files(
            model_dir, settings, version=info.version, max_length=int(info.params["max_length"])
        )

    @classmethod
    def from_files(
        cls, model_dir: Path, settings: Settings, *, version: str, max_length: int
    ) -> "Predictor":
        """A model directory as saved by training, not (yet) checked against a manifest."""
        device = configure_torch(settings)
        quiet_transformers()
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, use_safetensors=True, local_files_only=True
        )
        labels = {int(key): value for key, value in model.config.id2label.items()}
        if labels != ID2LABEL:
            raise ModelIntegrityError(
                f"model {version} names labels {labels}, not {ID2LABEL}",
                details={"id2label": labels},
            )
        return cls(
            model,
            load_tokenizer(str(model_dir)),
            version=version,
            max_length=max_length,
            batch_size=settings.predict_max_batch,
            device=device,
        )

    def probabilities(
        self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, list[bool]]:
        """Class probabilities (one row per text, in order) and which texts were cut short."""
        cleaned = [clean_text(text) for text in texts]
        ids, truncated = encode_flagged(self.tokenizer, cleaned, self.max_length)
        probabilities = class_probabilities(
            self.model,
            ids,
            pad_id=self.tokenizer.pad_token_id or 0,
            batch_size=self.batch_size,
            device=self.device,
            on_batch=on_batch,
        )
        return probabilities, truncated

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        probabilities, truncated = self.probabilities(texts)
        return [
            {
                "label": LABELS[int(row.argmax())],
                "label_id": int(row.argmax()),
                "scores": {label: float(score) for label, score in zip(LABELS, row, strict=True)},
                "truncated": cut,
            }
            for row, cut in zip(probabilities, truncated, strict=True)
        ]


def load_version(version: str, settings: Settings, cache_dir: Path | None = None) -> Predictor:
    registry = ModelRegistry.from_settings(settings)
    model_dir = download(registry, version, cache_dir or settings.data_dir / "models")
    return Predictor.load(model_dir, settings)


def load_production(settings: Settings, cache_dir: Path | None = None) -> Predictor:
    """The production version, downloaded and verified (NoProductionModel where there is none)."""
    pointer = ModelRegistry.from_settings(settings).production()
    if pointer is None:
        raise NoProductionModel("no model has been promoted to production yet")
    return load_version(pointer.version, settings, cache_dir)
