"""Registered model versions as the registry keeps them: names, manifests, production."""

import re
import secrets
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from shared.contracts.errors import ModelNotFound
from shared.contracts.results import Metrics, TrainingHistory
from shared.contracts.training import TrainingParams

MANIFEST = "manifest.json"
METRICS = "metrics.json"
CARD = "README.md"
HISTORY = "history.json"
PRODUCTION = "production.json"
CHALLENGER = "challenger.json"
VERSION_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-[0-9a-f]{4}")


class ModelInfo(BaseModel):
    """A version's manifest: what it was trained from, how it scored, the sha256 of every file."""

    version: str
    created_at: datetime
    base_model: str
    dataset_sha256: str
    metrics: Metrics
    params: TrainingParams
    files: dict[str, str] = Field(default_factory=dict)


class ModelRecord(BaseModel):
    """Everything kept of a version: its manifest, its card and its training curves (versions
    registered before cards existed have neither)."""

    info: ModelInfo
    card: str | None = None
    history: TrainingHistory | None = None


class ProductionPointer(BaseModel):
    version: str
    promoted_at: datetime
    reason: str
    previous: str | None = None


class ChallengerPointer(BaseModel):
    """models/challenger.json: a registered version scored on a share of live traffic beside
    production, after production has answered, until it is promoted or dismissed."""

    version: str
    share: float = Field(gt=0, le=1, description="the share of answered texts it also scores")
    named_at: datetime
    reason: str = ""


def no_such_version(version: str) -> ModelNotFound:
    return ModelNotFound(f"model version {version!r} does not exist", details={"version": version})


def checked_version(version: str) -> str:
    """The name, if it is one a version can have (it is then safe in paths and keys)."""
    if not VERSION_PATTERN.fullmatch(version):
        raise no_such_version(version)
    return version


def new_version() -> str:
    """A sortable, unique version name: UTC time and 4 random hex digits."""
    return f"{datetime.now(UTC):%Y-%m-%dT%H-%M-%S}-{secrets.token_hex(2)}"
