"""Jobs and their events: the schemas the gateway, workers and clients agree on."""

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from shared.errors import ErrorInfo


class JobType(StrEnum):
    predict = "predict"
    train = "train"
    evaluate = "evaluate"
    pipeline = "pipeline"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class EventType(StrEnum):
    status = "status"
    progress = "progress"
    metric = "metric"
    log = "log"
    result = "result"
    error = "error"

    @property
    def terminal(self) -> bool:
        return self in (EventType.result, EventType.error)


def new_job_id() -> str:
    return secrets.token_urlsafe(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(BaseModel):
    id: str
    type: JobType
    status: JobStatus = JobStatus.queued
    params: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)

    def public(self) -> dict[str, Any]:
        body = self.model_dump(mode="json")
        body["links"] = {"self": f"/v1/jobs/{self.id}", "events": f"/v1/jobs/{self.id}/events"}
        return body


class Event(BaseModel):
    """One entry of a job's event stream; `id` is the Redis Stream entry id."""

    id: str = ""
    type: EventType
    data: dict[str, Any] = Field(default_factory=dict)


# Requests that create jobs. Each job type has its own parameters; `type` discriminates.

Text = Annotated[str, Field(min_length=1)]


class _Request(BaseModel):
    model_config = {"extra": "forbid"}


class PredictParams(_Request):
    type: Literal["predict"] = "predict"
    texts: list[Text] = Field(default_factory=list)
    text: Text | None = None

    @model_validator(mode="after")
    def _one_or_many(self) -> "PredictParams":
        if self.text is not None:
            if self.texts:
                raise ValueError("give either 'text' or 'texts', not both")
            self.texts = [self.text]
            self.text = None
        if not self.texts:
            raise ValueError("give 'text' (a string) or 'texts' (a non-empty list of strings)")
        return self

    @field_validator("texts")
    @classmethod
    def _not_blank(cls, texts: list[str]) -> list[str]:
        for index, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"texts[{index}] is blank")
        return texts


class DatasetParams(_Request):
    dataset: str = Field(
        min_length=1, description="s3://bucket/key of an archive.zip, or a key in the bucket"
    )

    @field_validator("dataset")
    @classmethod
    def _is_archive(cls, dataset: str) -> str:
        if not dataset.endswith(".zip"):
            raise ValueError("dataset must name a .zip archive holding train.csv and test.csv")
        return dataset


class TrainParams(DatasetParams):
    type: Literal["train"] = "train"
    profile: Literal["quick", "full"] | None = None
    base_model: str | None = None
    max_steps: int | None = Field(default=None, ge=1)
    promote: bool = False


class EvaluateParams(DatasetParams):
    type: Literal["evaluate"] = "evaluate"
    model_version: str | None = Field(
        default=None, description="a registered version; the production model if left out"
    )


class PipelineParams(DatasetParams):
    type: Literal["pipeline"] = "pipeline"
    profile: Literal["quick", "full"] | None = None
    base_model: str | None = None
    max_steps: int | None = Field(default=None, ge=1)
    source: dict[str, Any] | None = Field(
        default=None, description="the storage event that started it: bucket, key, version, etag"
    )


JobRequest = Annotated[
    PredictParams | TrainParams | EvaluateParams | PipelineParams, Field(discriminator="type")
]
