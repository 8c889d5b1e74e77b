"""Jobs and their events: the schemas the gateway, workers and clients agree on."""

import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.contracts.errors import ErrorInfo, InvalidRequest
from shared.contracts.results import (
    BatchPredictResult,
    EvaluateResult,
    JobResult,
    PredictResult,
    TrainResult,
)
from shared.contracts.times import utcnow
from shared.contracts.training import ProfileName


class JobType(StrEnum):
    predict = "predict"
    train = "train"
    evaluate = "evaluate"
    pipeline = "pipeline"
    batch_predict = "batch_predict"


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
    """22 URL-safe characters, never a leading "-": a command line reads that as an option."""
    while (job_id := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return job_id


class Event(BaseModel):
    """One entry of a job's event stream; `id` is the Redis Stream entry id."""

    id: str = ""
    type: EventType
    data: dict[str, Any] = Field(default_factory=dict)


# Requests that create jobs. Each job type has its own parameters; `type` discriminates.

# A text holds a character that is no whitespace (str.isspace, what str.strip removes); the same
# class in JSON Schema's regular expressions documents the rule.
NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
Text = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": NOT_BLANK})]


class _Request(BaseModel):
    model_config = {"extra": "forbid"}


def _text_or_texts(schema: dict[str, Any]) -> None:
    """What PredictParams' validator takes: a `text`, or a non-empty list of `texts`."""
    schema["oneOf"] = [
        {"required": ["texts"], "properties": {"texts": {"minItems": 1}, "text": {"type": "null"}}},
        {
            "required": ["text"],
            "properties": {"text": {"type": "string"}, "texts": {"maxItems": 0}},
        },
    ]


class PredictParams(_Request):
    model_config = ConfigDict(json_schema_extra=_text_or_texts)

    type: Literal["predict"] = "predict"
    texts: list[Text] = Field(default_factory=list)
    text: Text | None = None

    @model_validator(mode="after")
    def _one_or_many(self) -> "PredictParams":
        if self.text is not None:
            if self.texts:
                raise ValueError("give either 'text' or 'texts', not both")
            if re.search(NOT_BLANK, self.text) is None:
                raise ValueError("text is blank")
            self.texts = [self.text]
            self.text = None
        if not self.texts:
            raise ValueError("give 'text' (a string) or 'texts' (a non-empty list of strings)")
        return self

    @field_validator("texts")
    @classmethod
    def _not_blank(cls, texts: list[str]) -> list[str]:
        for index, text in enumerate(texts):
            if re.search(NOT_BLANK, text) is None:
                raise ValueError(f"texts[{index}] is blank")
        return texts


def _an_archive(dataset: str) -> str:
    if not dataset.endswith(".zip"):
        raise ValueError("dataset must name a .zip archive holding train.csv and test.csv")
    return dataset


class DatasetParams(_Request):
    dataset: str = Field(
        min_length=1, description="s3://bucket/key of an archive.zip, or a key in the bucket"
    )

    @field_validator("dataset")
    @classmethod
    def _is_archive(cls, dataset: str) -> str:
        return _an_archive(dataset)


class TrainParams(DatasetParams):
    type: Literal["train"] = "train"
    profile: ProfileName | None = None
    base_model: str | None = None
    max_steps: int | None = Field(default=None, ge=1)
    promote: bool = False


class EvaluateParams(DatasetParams):
    type: Literal["evaluate"] = "evaluate"
    model_version: str | None = Field(
        default=None, description="a registered version; the production model if left out"
    )


class ObjectVersion(BaseModel):
    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_time: datetime | None = None


def _dataset_or_feedback(schema: dict[str, Any]) -> None:
    """What PipelineParams' validator takes: a `dataset`, or `with_feedback` true."""
    schema["anyOf"] = [
        {"required": ["dataset"], "properties": {"dataset": {"type": "string"}}},
        {"required": ["with_feedback"], "properties": {"with_feedback": {"const": True}}},
    ]


class PipelineParams(_Request):
    model_config = ConfigDict(json_schema_extra=_dataset_or_feedback)

    type: Literal["pipeline"] = "pipeline"
    dataset: str | None = Field(
        default=None,
        min_length=1,
        description="s3://bucket/key of an archive.zip, or a key in the bucket; with "
        "with_feedback it may be left out: the dataset accepted last",
    )
    with_feedback: bool = Field(
        default=False,
        description="train on the dataset plus every text's latest feedback (feedback wins "
        "where a text disagrees), written as a new dataset under every ingest guard",
    )
    profile: ProfileName | None = None
    base_model: str | None = None
    max_steps: int | None = Field(default=None, ge=1)
    source: ObjectVersion | None = Field(
        default=None, description="the object version whose storage event started it"
    )

    @field_validator("dataset")
    @classmethod
    def _is_archive(cls, dataset: str | None) -> str | None:
        return None if dataset is None else _an_archive(dataset)

    @model_validator(mode="after")
    def _names_a_dataset(self) -> "PipelineParams":
        if self.dataset is None and not self.with_feedback:
            raise ValueError("give dataset (an archive.zip), or with_feedback: true")
        return self


BATCH_INPUT_SUFFIXES = (".csv", ".jsonl", ".json")


class BatchPredictParams(_Request):
    type: Literal["batch_predict"] = "batch_predict"
    dataset: str = Field(
        min_length=1,
        description="s3://bucket/key or a key of a .csv (AG News layout, or a `text` column) or "
        ".jsonl file (one object with `text` a line) to classify",
    )

    @field_validator("dataset")
    @classmethod
    def _is_text_file(cls, dataset: str) -> str:
        if not dataset.endswith(BATCH_INPUT_SUFFIXES):
            raise ValueError("dataset must name a .csv or .jsonl file of texts to classify")
        return dataset


JobParams = Annotated[
    PredictParams | TrainParams | EvaluateParams | PipelineParams | BatchPredictParams,
    Field(discriminator="type"),
]
"""What a job was asked to do: the request that created it, kept with its type in the store."""

ParamsT = TypeVar("ParamsT", bound=_Request)

RESULT_TYPES: dict[JobType, type[BaseModel]] = {
    JobType.predict: PredictResult,
    JobType.evaluate: EvaluateResult,
    JobType.train: TrainResult,
    JobType.pipeline: TrainResult,
    JobType.batch_predict: BatchPredictResult,
}


class TaskCall(BaseModel):
    """The task a job is in, as sent: what the reaper sends again when its worker vanished.
    A message whose call id is not the job's current one is a stale copy and does nothing."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str = Field(default_factory=lambda: secrets.token_hex(8))


class Job(BaseModel):
    id: str
    type: JobType
    status: JobStatus = JobStatus.queued
    params: JobParams | None = Field(
        description="what the job was asked; None for a predict job once answered: it keeps "
        "its answer, not its texts"
    )
    texts: int | None = Field(default=None, description="a predict job's number of texts")
    owner: str | None = Field(default=None, description="the name of the API key that made it")
    progress: dict[str, Any] | None = None
    result: JobResult | None = None
    error: ErrorInfo | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    # Written by the worker running the job, every `heartbeat_interval_s`.
    heartbeat_at: datetime | None = None
    task: TaskCall | None = None
    # The call a worker started running (the heartbeat is its); the reaper never sets it.
    running_call: str | None = None
    # How often each task of the job was delivered to a worker.
    deliveries: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _typed_by_job_type(cls, data: Any) -> Any:
        """Params and result parse as the models of the job's type (jobs stored before params
        kept their `type` get it back from the job's)."""
        if not isinstance(data, dict) or "type" not in data:
            return data
        data = dict(data)
        job_type = JobType(data["type"])
        params = data.get("params")
        if isinstance(params, dict) and "type" not in params:
            data["params"] = {"type": job_type.value, **params}
        if isinstance(data.get("result"), dict):
            data["result"] = RESULT_TYPES[job_type].model_validate(data["result"])
        return data

    @model_validator(mode="after")
    def _params_match_type(self) -> "Job":
        if self.params is None and self.type is not JobType.predict:
            raise ValueError(f"a {self.type} job keeps its parameters")
        if self.params is not None and self.params.type != self.type.value:
            raise ValueError(f"a {self.type} job cannot hold {self.params.type} parameters")
        if isinstance(self.params, PredictParams) and self.texts is None:
            self.texts = len(self.params.texts)
        return self

    def public(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude={"task", "deliveries", "running_call"})
        if self.params is not None:
            body["params"] = self.params.model_dump(mode="json", exclude_none=True)
        body["links"] = {"self": f"/v1/jobs/{self.id}", "events": f"/v1/jobs/{self.id}/events"}
        return body


def params_of(job: Job, kind: type[ParamsT]) -> ParamsT:
    """A job's parameters as the model its task expects (InvalidRequest otherwise)."""
    if not isinstance(job.params, kind):
        raise InvalidRequest(f"job {job.id} is a {job.type} job, not one {kind.__name__} describe")
    return job.params
