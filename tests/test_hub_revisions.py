"""Hub base models are named and loaded at a pinned commit: the allowlist takes only
`org/model@<commit>`, and the pipeline passes the commit to from_pretrained. No hub is reachable
here: the model sits in a Hugging Face cache of the test's own, under its commit's snapshot only,
so that a load at any other revision (the default branch included) finds nothing."""

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase

from pipeline.adapt import Adapter
from pipeline.modeling import load_classifier, load_tokenizer, padding_of
from shared.contracts.training import TrainConfig
from shared.hub import PINNED_RULE, HubModel, hub_model, is_pinned
from shared.settings import Settings
from testkit.families import tiny_family_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
# What transformers says, offline, of a revision the cache does not hold.
NOT_CACHED = "cached files"


def test_a_hub_name_splits_into_its_repository_and_revision(tmp_path: Path) -> None:
    assert hub_model(f"org/model@{COMMIT}") == HubModel("org/model", COMMIT)
    assert hub_model("org/model@main") == HubModel("org/model", "main")
    assert hub_model("org/model") == HubModel("org/model", None)
    folder = tmp_path / "a@b"
    folder.mkdir()
    assert hub_model(str(folder)) == HubModel(str(folder), None)
    assert is_pinned(f"org/model@{COMMIT}")
    for unpinned in ("org/model", "org/model@main", "org/model@v1.0", f"org/model@{COMMIT[:12]}"):
        assert not is_pinned(unpinned), unpinned


def test_the_allowlist_takes_hub_models_pinned_to_a_commit_and_absolute_folders() -> None:
    listed = Settings(base_model_allowlist=f"org/model@{COMMIT}, /srv/models/mine")
    assert listed.training.base_model_allowlist == [f"org/model@{COMMIT}", "/srv/models/mine"]
    for unpinned in ("org/model", "org/model@main", f"org/model@{COMMIT[:7]}", "models/mine"):
        with pytest.raises(ValidationError) as refused:
            Settings(base_model_allowlist=unpinned)
        assert PINNED_RULE in str(refused.value), unpinned


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding org/tiny at COMMIT only: no refs, no other snapshot."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / COMMIT
    shutil.copytree(tiny_family_model("bert", tmp_path / "model"), snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_the_pipeline_loads_a_hub_model_at_its_pinned_commit(hub_cache: Path) -> None:
    tokenizer = load_tokenizer(f"org/tiny@{COMMIT}")
    model = load_classifier(f"org/tiny@{COMMIT}", padding_of(tokenizer).pad_id)
    assert model.config.num_labels == 4
    assert adapter(f"org/tiny@{COMMIT}", tokenizer).vocab_size == len(tokenizer)
    for elsewhere in ("org/tiny", f"org/tiny@{OTHER}", "org/tiny@main"):
        with pytest.raises(OSError, match=NOT_CACHED):
            load_tokenizer(elsewhere)
        with pytest.raises(OSError, match=NOT_CACHED):
            load_classifier(elsewhere, 0)
        with pytest.raises(OSError, match=NOT_CACHED):
            adapter(elsewhere, tokenizer)


def adapter(base: str, tokenizer: PreTrainedTokenizerBase) -> Adapter:
    config = TrainConfig(base_model=base, max_length=32, bf16=False)
    return Adapter(base, tokenizer, config, padding_of(tokenizer), torch.device("cpu"), False, 2)
