"""Tiny, randomly initialised models of every family the project supports, built offline from
each family's config and a WordPiece vocabulary trained here on AG News text."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoModelForSequenceClassification, PretrainedConfig

from pipeline.ingest import read_archive
from shared.settings import Settings
from testkit.archives import MINI_ARCHIVE

SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
POSITIONS = 64
SIZE = {"hidden": 32, "layers": 2, "heads": 2, "inner": 64}


def _wordpiece(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token=SPECIALS["unk"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=list(SPECIALS.values()), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _unigram(texts: list[str]) -> Tokenizer:
    """A SentencePiece-style vocabulary, for the families whose tokenizers expect one."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=600,
        special_tokens=list(SPECIALS.values()),
        unk_token=SPECIALS["unk"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _byte_bpe(texts: list[str]) -> Tokenizer:
    """A byte-level BPE vocabulary, as GPT-2 and RoBERTa use: every byte is a token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


BACKENDS: dict[str, Callable[[list[str]], Tokenizer]] = {
    "albert": _unigram,
    "deberta-v2": _unigram,
    "xlnet": _unigram,
    "roberta": _byte_bpe,
    "gpt2": _byte_bpe,
}


def _bert_like(vocab: int, pad: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "hidden_size": SIZE["hidden"],
        "num_hidden_layers": SIZE["layers"],
        "num_attention_heads": SIZE["heads"],
        "intermediate_size": SIZE["inner"],
        "max_position_embeddings": POSITIONS,
        "pad_token_id": pad,
    }


CONFIGS: dict[str, Callable[[int, int], PretrainedConfig]] = {
    "bert": lambda vocab, pad: transformers.BertConfig(**_bert_like(vocab, pad)),
    "distilbert": lambda vocab, pad: transformers.DistilBertConfig(
        vocab_size=vocab,
        dim=SIZE["hidden"],
        n_layers=SIZE["layers"],
        n_heads=SIZE["heads"],
        hidden_dim=SIZE["inner"],
        max_position_embeddings=POSITIONS,
        pad_token_id=pad,
    ),
    "albert": lambda vocab, pad: transformers.AlbertConfig(
        embedding_size=16, **_bert_like(vocab, pad)
    ),
    "roberta": lambda vocab, pad: transformers.RobertaConfig(**_bert_like(vocab, pad)),
    "xlnet": lambda vocab, pad: transformers.XLNetConfig(
        vocab_size=vocab,
        d_model=SIZE["hidden"],
        n_layer=SIZE["layers"],
        n_head=SIZE["heads"],
        d_inner=SIZE["inner"],
        pad_token_id=pad,
    ),
    "mpnet": lambda vocab, pad: transformers.MPNetConfig(**_bert_like(vocab, pad)),
    "deberta-v2": lambda vocab, pad: transformers.DebertaV2Config(**_bert_like(vocab, pad)),
    "gpt2": lambda vocab, pad: transformers.GPT2Config(
        vocab_size=vocab,
        n_embd=SIZE["hidden"],
        n_layer=SIZE["layers"],
        n_head=SIZE["heads"],
        n_positions=POSITIONS,
    ),
}

TOKENIZERS: dict[str, str] = {
    "bert": "BertTokenizerFast",
    "distilbert": "DistilBertTokenizerFast",
    "albert": "AlbertTokenizerFast",
    "roberta": "RobertaTokenizerFast",
    "xlnet": "XLNetTokenizerFast",
    "mpnet": "MPNetTokenizerFast",
    "deberta-v2": "DebertaV2TokenizerFast",
    "gpt2": "GPT2TokenizerFast",
}


def tiny_family_model(family: str, folder: Path) -> Path:
    """A Hugging Face folder: the family's tokenizer class over a local vocabulary (GPT-2's with
    no pad token, as published) and a random model from the family's config."""
    texts = [row.text for row in read_archive(MINI_ARCHIVE, Settings()).train.rows]
    backend = BACKENDS.get(family, _wordpiece)(texts)
    specials: dict[str, str | None] = {
        "unk_token": SPECIALS["unk"],
        "pad_token": SPECIALS["pad"],
        "cls_token": SPECIALS["cls"],
        "sep_token": SPECIALS["sep"],
        "mask_token": SPECIALS["mask"],
    }
    if family in ("roberta", "gpt2"):
        specials |= {"bos_token": SPECIALS["cls"], "eos_token": SPECIALS["sep"]}
    if family == "gpt2":
        specials = {"unk_token": SPECIALS["unk"], "eos_token": SPECIALS["sep"]}
    tokenizer_class = getattr(transformers, TOKENIZERS[family])
    tokenizer = tokenizer_class(tokenizer_object=backend, model_max_length=POSITIONS, **specials)
    pad = tokenizer.pad_token_id if tokenizer.pad_token is not None else tokenizer.eos_token_id
    config = CONFIGS[family](len(tokenizer), int(pad))
    model = AutoModelForSequenceClassification.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
