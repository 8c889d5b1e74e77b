"""A client of the gateway's HTTP API for programs: typed jobs, events, models and predictions."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from shared.contracts.errors import ErrorInfo
from shared.contracts.feedback import Feedback, FeedbackList, ReviewList
from shared.contracts.jobs import Event, EventType, Job, JobParams, JobStatus, JobType
from shared.contracts.models import ChallengerPointer, ModelInfo, ModelRecord, ProductionPointer
from shared.contracts.monitor import MonitorReport
from shared.contracts.results import PredictResult

RETRYABLE = (httpx.TransportError, SSEError)


class GatewayError(Exception):
    """An answer in the gateway's error shape, or no answer at all (status 0)."""

    def __init__(self, status: int, error: ErrorInfo) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.status = status
        self.error = error


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = ErrorInfo.model_validate(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        error = ErrorInfo(code="http_error", message=response.text[:500] or response.reason_phrase)
    raise GatewayError(response.status_code, error)


class GatewayClient:
    """One gateway; `key` is sent as a bearer token. Network failures raise GatewayError(0, …)."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **options)
        except httpx.TransportError as exc:
            message = f"cannot reach the gateway at {self.http.base_url}: {exc}"
            raise GatewayError(0, ErrorInfo(code="unreachable", message=message)) from exc
        _raise_for_error(response)
        return response

    def submit(self, params: JobParams) -> Job:
        body = params.model_dump(mode="json", exclude_none=True)
        return Job.model_validate(self._request("POST", "/v1/jobs", json=body).json())

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(
        self, type_: JobType | None = None, status: JobStatus | None = None, limit: int = 50
    ) -> list[Job]:
        query: dict[str, str | int] = {"limit": limit}
        if type_:
            query["type"] = type_.value
        if status:
            query["status"] = status.value
        body = self._request("GET", "/v1/jobs", params=query).json()
        return [Job.model_validate(job) for job in body["jobs"]]

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._request("DELETE", f"/v1/jobs/{job_id}").json())

    def classify(self, texts: list[str]) -> PredictResult | Job:
        """The predictions, or the job when the gateway stopped waiting for them (202)."""
        response = self._request("POST", "/v1/predict", json={"texts": texts})
        if response.status_code == 202:
            return Job.model_validate(response.json())
        return PredictResult.model_validate(response.json())

    def events(
        self,
        job_id: str,
        last_event_id: str | None = None,
        *,
        retries: int = 10,
        backoff_s: float = 0.5,
    ) -> Iterator[Event]:
        """A job's events until its terminal one; a dropped stream resumes with Last-Event-ID,
        so no event is missed or repeated."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with connect_sse(
                    self.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None
                ) as source:
                    if not source.response.is_success:
                        source.response.read()
                        _raise_for_error(source.response)
                    for message in source.iter_sse():
                        if not message.data:
                            # httpx-sse passes on a heartbeat comment as an empty message
                            continue
                        event = Event(
                            id=message.id,
                            type=EventType(message.event),
                            data=message.json(),
                        )
                        last_event_id, failures = event.id, 0
                        yield event
                        if event.type.terminal:
                            return
            except RETRYABLE as exc:
                failures += 1
                if failures > retries:
                    why = f"the event stream of job {job_id} kept failing: {exc}"
                    raise GatewayError(0, ErrorInfo(code="unreachable", message=why)) from exc
                time.sleep(backoff_s * failures)

    def models(self, limit: int = 500) -> tuple[list[ModelInfo], ProductionPointer | None]:
        """Every registered version, newest first (paged through), and the production pointer."""
        models: list[ModelInfo] = []
        query: dict[str, str | int] = {"limit": limit}
        while True:
            body = self._request("GET", "/v1/models", params=query).json()
            models += [ModelInfo.model_validate(model) for model in body["models"]]
            if not body.get("next"):
                break
            query["before"] = body["next"]
        production = body.get("production")
        return models, ProductionPointer.model_validate(production) if production else None

    def model(self, version: str) -> ModelRecord:
        """A version's manifest, card and training curves."""
        return ModelRecord.model_validate(self._request("GET", f"/v1/models/{version}").json())

    def monitor(self, version: str | None = None) -> MonitorReport:
        """A version's live window against its holdout (production's when none is named)."""
        if version is None:
            pointer = self._request("GET", "/v1/models/production").json()
            version = ProductionPointer.model_validate(pointer).version
        answer = self._request("GET", f"/v1/models/{version}/monitor")
        return MonitorReport.model_validate(answer.json())

    def give_feedback(
        self, text: str, label: str | int, job_id: str | None = None, index: int | None = None
    ) -> Feedback:
        """Store a text's right label; with the predict job that answered it (and the text's
        index in it), the version and the label it answered are recorded too."""
        body: dict[str, Any] = {"text": text, "label": label}
        if job_id is not None:
            body["job_id"] = job_id
        if index is not None:
            body["index"] = index
        return Feedback.model_validate(self._request("POST", "/v1/feedback", json=body).json())

    def feedback(self, limit: int = 50) -> list[Feedback]:
        """The texts given feedback last, newest first."""
        answer = self._request("GET", "/v1/feedback", params={"limit": limit})
        return FeedbackList.model_validate(answer.json()).feedback

    def review(self, version: str | None = None, limit: int = 50) -> ReviewList:
        """A version's (production's) newest uncertain answers not yet given feedback."""
        query: dict[str, str | int] = {"limit": limit}
        if version is not None:
            query["version"] = version
        answer = self._request("GET", "/v1/feedback/review", params=query)
        return ReviewList.model_validate(answer.json())

    def promote(self, version: str, reason: str) -> ProductionPointer:
        body = self._request("POST", f"/v1/models/{version}/promote", json={"reason": reason})
        return ProductionPointer.model_validate(body.json())

    def challenge(self, version: str, share: float, reason: str) -> ChallengerPointer:
        """Score `version` on `share` of live traffic beside production."""
        body = {"share": share, "reason": reason}
        answer = self._request("POST", f"/v1/models/{version}/challenge", json=body)
        return ChallengerPointer.model_validate(answer.json())

    def dismiss(self) -> ChallengerPointer:
        """Stop scoring the challenger; the pointer it had."""
        answer = self._request("DELETE", "/v1/models/challenger")
        return ChallengerPointer.model_validate(answer.json())

    def rollback(self, reason: str) -> ProductionPointer:
        """Production back to the version it replaced."""
        _, production = self.models()
        if production is None or production.previous is None:
            error = ErrorInfo(
                code="conflict", message="production replaced no earlier version to go back to"
            )
            raise GatewayError(409, error)
        return self.promote(production.previous, reason)

    def upload(self, archive: Path) -> str:
        """Put a local archive.zip (or a batch job's .csv or .jsonl) into the bucket's incoming
        prefix; the key it landed at."""
        size = archive.stat().st_size
        kind = "application/zip" if archive.suffix.lower() == ".zip" else "text/plain"
        ticket = self._request(
            "POST", "/v1/uploads", json={"filename": archive.name, "size": size}
        ).json()
        with archive.open("rb") as file:
            try:
                response = httpx.post(
                    ticket["url"],
                    data=ticket["fields"],
                    files={"file": (archive.name, file, kind)},
                    timeout=None,
                )
            except httpx.TransportError as exc:
                message = f"cannot reach the object store at {ticket['url']}: {exc}"
                raise GatewayError(0, ErrorInfo(code="unreachable", message=message)) from exc
        if not response.is_success:
            message = f"the object store refused the upload: {response.text[:300]}"
            raise GatewayError(response.status_code, ErrorInfo(code="upload", message=message))
        return str(ticket["key"])

    def download_output(self, job_id: str, target: Path) -> str:
        """Save a batch job's predictions.csv to `target`; its key in the bucket."""
        output = self._request("GET", f"/v1/jobs/{job_id}/output").json()
        try:
            with httpx.stream("GET", output["url"], timeout=None) as response:
                if not response.is_success:
                    message = f"the object store refused the download: {response.read()[:300]!r}"
                    raise GatewayError(
                        response.status_code, ErrorInfo(code="download", message=message)
                    )
                with target.open("wb") as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
        except httpx.TransportError as exc:
            message = f"cannot reach the object store at {output['url']}: {exc}"
            raise GatewayError(0, ErrorInfo(code="unreachable", message=message)) from exc
        return str(output["key"])

    def job_for_upload(self, key: str, timeout_s: float = 60.0) -> Job:
        """The pipeline job that the upload of `key` started."""
        deadline = time.monotonic() + timeout_s
        while True:
            for job in self.jobs(JobType.pipeline, limit=200):
                source = getattr(job.params, "source", None)
                if source is not None and source.key == key:
                    return job
            if time.monotonic() > deadline:
                message = f"no pipeline job started for {key} within {timeout_s:.0f}s"
                raise GatewayError(0, ErrorInfo(code="no_pipeline", message=message))
            time.sleep(0.5)
