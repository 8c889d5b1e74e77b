"""One error hierarchy: each error knows its HTTP status and its stable code for job errors."""

from typing import Any

from pydantic import BaseModel, Field


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class AgNewsError(Exception):
    status_code = 500
    code = "internal_error"

    def __init_subclass__(
        cls, *, code: str | None = None, status: int | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code or cls.code
        cls.status_code = status or cls.status_code

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, details=self.details)

    def headers(self) -> dict[str, str]:
        """HTTP headers an answer carrying this error needs."""
        return {}


class BadRequest(AgNewsError, status=400, code="bad_request"): ...


class Unauthorized(AgNewsError, status=401, code="unauthorized"):
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(AgNewsError, status=403, code="forbidden"): ...


class NotFound(AgNewsError, status=404, code="not_found"): ...


class MethodNotAllowed(AgNewsError, status=405, code="method_not_allowed"): ...


class Conflict(AgNewsError, status=409, code="conflict"): ...


class PayloadTooLarge(AgNewsError, status=413, code="payload_too_large"): ...


class UnsupportedMediaType(AgNewsError, status=415, code="unsupported_media_type"): ...


class InvalidRequest(AgNewsError, status=422, code="invalid_request"): ...


class RateLimited(AgNewsError, status=429, code="rate_limited"):
    """Details carry `retry_after_s`, the whole seconds until a request would be let through."""

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.details.get("retry_after_s", 1))}


class ServiceUnavailable(AgNewsError, status=503, code="service_unavailable"): ...


class DatasetInvalid(InvalidRequest, code="dataset_invalid"):
    """An archive or CSV breaks a validation rule; the message names the file, line and rule."""


class DatasetNotFound(NotFound, code="dataset_not_found"): ...


class NoFeedback(InvalidRequest, code="no_feedback"):
    """A with_feedback pipeline found no feedback it may train on."""


class MalformedEvent(InvalidRequest, code="malformed_event"):
    """A storage event notification that is not in any format the listener knows."""


class ModelNotFound(NotFound, code="model_not_found"): ...


class TeacherNotInstalled(InvalidRequest, code="teacher_not_installed"):
    """A distil run's teacher base model is not where the settings say."""


class ChallengerNotFound(NotFound, code="challenger_not_found"): ...


class NoProductionModel(ServiceUnavailable, code="no_production_model"): ...


class BatchChunkFailed(ServiceUnavailable, code="batch_chunk_failed"):
    """The predict fleet answered one chunk of a batch job with an error; details carry it."""


class ModelIntegrityError(AgNewsError, status=409, code="model_integrity"):
    """A registered model's files do not match the sha256 sums in its manifest."""


class DatasetIntegrityError(AgNewsError, status=409, code="dataset_integrity"):
    """A stored dataset's bytes do not match the sha256 it is stored under."""


class JobEnded(Conflict, code="job_ended"):
    """A change to a job that has already ended; details name the status it ended with."""


class JobCancelled(JobEnded, code="cancelled"): ...


HTTP_ERRORS: dict[int, type[AgNewsError]] = {
    error.status_code: error
    for error in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidRequest,
        RateLimited,
        ServiceUnavailable,
    )
}
"""The plain error of each HTTP status, for errors that come from HTTP itself (404, 405)."""


def error_info(exc: BaseException) -> ErrorInfo:
    """What a job or an HTTP client is told about an exception."""
    if isinstance(exc, AgNewsError):
        return exc.info()
    return ErrorInfo(
        code="internal_error",
        message=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
    )
