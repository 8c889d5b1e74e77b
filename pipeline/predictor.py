"""A loaded model answering texts: the one path that serving and evaluation both take."""

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from pipeline.linear import LinearMember
from pipeline.modeling import (
    configure_torch,
    encode_flagged,
    load_tokenizer,
    padding_of,
    probabilities_together,
    quiet_transformers,
    to_device,
)
from pipeline.registry import download, read_manifest, verify
from pipeline.runners import Runner, TorchRunner
from pipeline.text import clean_text
from shared.contracts.errors import ModelIntegrityError
from shared.contracts.labels import ID2LABEL, LABELS
from shared.contracts.models import ModelInfo
from shared.contracts.results import Prediction
from shared.contracts.serving import REFERENCE_FORM, Form
from shared.registry import ModelRegistry
from shared.settings import Settings


class Encoded(NamedTuple):
    """Token ids cut to the model's limit, and which texts lost tokens to the cut."""

    ids: list[list[int]]
    truncated: list[bool]


class Predictor:
    """Safe to share between threads: one thread tokenizes while another runs the model.

    Texts are encoded, run through the runner of the form it serves in (torch fp32 unless
    given another), and blended with the linear member: every form serves through this path."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        version: str,
        max_length: int,
        batch_size: int,
        device: torch.device,
        linear: LinearMember | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.model = to_device(model, device)
        self.linear = linear
        self.model.train(False)
        self.tokenizer = tokenizer
        self.padding = padding_of(tokenizer)
        self.version = version
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.runner: Runner = runner or TorchRunner(self.model, device, REFERENCE_FORM)
        # texts/s of each form timed on this CPU when the serving form was chosen, if it was,
        # and of each forward batch size when that was
        self.timings: dict[str, float] = {}
        self.batch_timings: dict[int, float] = {}
        # A fast tokenizer is not reentrant; the model is the hot resource.
        self._tokenizer_lock = threading.Lock()
        self._model_lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: Path, settings: Settings) -> "Predictor":
        """A model directory whose files all match its manifest (else ModelIntegrityError)."""
        return cls.from_manifest(model_dir, verify(model_dir), settings)

    @classmethod
    def from_manifest(cls, model_dir: Path, info: ModelInfo, settings: Settings) -> "Predictor":
        """A model directory already verified against its manifest `info`."""
        return cls.from_files(
            model_dir, settings, version=info.version, max_length=info.params.max_length
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
            batch_size=settings.serving.forward_batch,
            device=device,
            linear=LinearMember.load(model_dir) if settings.serving.blend else None,
        )

    @property
    def form(self) -> Form:
        return self.runner.form

    def with_runner(self, runner: Runner, batch_size: int | None = None) -> "Predictor":
        """This model, tokenizer and linear member, serving through another runner (and in
        slices of another size)."""
        return Predictor(
            self.model,
            self.tokenizer,
            version=self.version,
            max_length=self.max_length,
            batch_size=batch_size or self.batch_size,
            device=self.device,
            linear=self.linear,
            runner=runner,
        )

    def encode(self, texts: Sequence[str]) -> Encoded:
        cleaned = [clean_text(text) for text in texts]
        with self._tokenizer_lock:
            return Encoded(*encode_flagged(self.tokenizer, cleaned, self.max_length))

    def forward(
        self, ids: Sequence[Sequence[int]], on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Class probabilities, one row per text in order, in length-sorted padded batches."""
        with self._model_lock:
            (probabilities,), _ = probabilities_together(
                [self.runner.logits],
                ids,
                padding=self.padding,
                batch_size=self.batch_size,
                on_batch=on_batch,
            )
        return probabilities

    def blend(self, transformer: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The transformer's probabilities blended with the linear member's, where there is one."""
        if self.linear is None:
            return transformer
        return self.linear.blend(transformer, [clean_text(text) for text in texts])

    def mix(self, transformer: np.ndarray, linear: np.ndarray | None) -> np.ndarray:
        """As blend, with the linear member's probabilities of the same texts already known."""
        if self.linear is None or linear is None:
            return transformer
        return self.linear.mix(transformer, linear)

    def linear_probabilities(self, texts: Sequence[str]) -> np.ndarray | None:
        if self.linear is None:
            return None
        return self.linear.probabilities([clean_text(text) for text in texts])

    def probabilities(
        self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, list[bool]]:
        """Class probabilities (one row per text, in order) and which texts were cut short."""
        encoded = self.encode(texts)
        return self.blend(self.forward(encoded.ids, on_batch), texts), encoded.truncated

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return answers(*self.probabilities(texts))


SCORE_DECIMALS = 6


def answers(probabilities: np.ndarray, truncated: Sequence[bool]) -> list[Prediction]:
    """One answer per text: the label, its id, every class's probability (to 6 decimals: a
    float32 model's outputs carry no more), whether it was cut."""
    rows: list[list[float]] = probabilities.round(SCORE_DECIMALS).tolist()
    best = probabilities.argmax(axis=1).tolist()
    return [
        Prediction(
            label=LABELS[label_id],
            label_id=label_id,
            scores=dict(zip(LABELS, row, strict=True)),
            truncated=cut,
        )
        for row, label_id, cut in zip(rows, best, truncated, strict=True)
    ]


def load_version(version: str, settings: Settings, cache_dir: Path | None = None) -> Predictor:
    registry = ModelRegistry.from_settings(settings.storage)
    cache = cache_dir or settings.run.data_dir / "models"
    model_dir = download(registry, version, cache, keep=settings.serving.model_cache_versions)
    return Predictor.from_manifest(model_dir, read_manifest(model_dir), settings)


def load_production(settings: Settings, cache_dir: Path | None = None) -> Predictor:
    """The production version, downloaded and verified (NoProductionModel where there is none)."""
    version = ModelRegistry.from_settings(settings.storage).production_version()
    return load_version(version, settings, cache_dir)
