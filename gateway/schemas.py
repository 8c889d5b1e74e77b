"""Request and response bodies the gateway defines itself (job requests live in shared.jobs)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import BATCH_INPUT_SUFFIXES, Job, JobStatus, JobType
from shared.contracts.keys import KeyScope
from shared.contracts.models import ModelInfo, ProductionPointer
from shared.contracts.results import PredictResult


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    error: ErrorInfo


class JobLinks(BaseModel):
    self: str
    events: str


class JobResource(Job):
    links: JobLinks


class JobList(BaseModel):
    jobs: list[JobResource]


class JobQuery(BaseModel):
    type: JobType | None = None
    status: JobStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)


class PredictResponse(PredictResult):
    job_id: str


class ModelList(BaseModel):
    models: list[ModelInfo]
    production: ProductionPointer | None
    next: str | None = Field(default=None, description="`before` for the next page, if any")


class ModelQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=500)
    before: str | None = Field(default=None, description="versions older than this one")


class UploadRequest(_Strict):
    filename: str = Field(
        min_length=1,
        description="an archive.zip's name (admin: training data), or a .csv or .jsonl file's "
        "(predict: texts for a batch_predict job)",
    )
    size: int = Field(ge=1, description="the file's size in bytes")

    @field_validator("filename")
    @classmethod
    def _is_zip_or_texts(cls, filename: str) -> str:
        if not filename.lower().endswith((".zip", *BATCH_INPUT_SUFFIXES)):
            raise ValueError(
                "upload a .zip archive holding train.csv and test.csv, or a .csv or .jsonl file "
                "of texts to classify"
            )
        return filename

    @property
    def suffix(self) -> str:
        return "." + self.filename.lower().rsplit(".", 1)[1]


class JobOutput(BaseModel):
    key: str
    url: str = Field(description="GET the file here until it expires")
    expires_in: int


class UploadTicket(BaseModel):
    key: str
    url: str = Field(description="POST a multipart form with `fields` and then `file` here")
    fields: dict[str, str]
    put_url: str = Field(
        description="or PUT exactly `size` bytes here (Content-Length is part of the signature)"
    )
    expires_in: int
    max_bytes: int


class PromoteRequest(_Strict):
    reason: str = Field(default="promoted through the API", min_length=1, max_length=500)


class ChallengeRequest(_Strict):
    share: float = Field(
        default=0.1, gt=0, le=1, description="the share of answered texts it also scores"
    )
    reason: str = Field(default="named through the API", min_length=1, max_length=500)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    redis: str
    s3: str


class SessionRequest(_Strict):
    key: str = Field(min_length=1, max_length=512, description="an API key, sent once")


class SessionInfo(BaseModel):
    signed_in: bool = Field(description="whether a session cookie or key identifies the caller")
    open: bool = Field(description="true when the gateway has no keys: everyone may do anything")
    name: str | None = Field(default=None, description="the key's name")
    scopes: list[KeyScope] = Field(default_factory=list)
    expires_at: int | None = Field(default=None, description="Unix seconds; the cookie's expiry")
