"""The predict fleet as a batch job sends to it: predict jobs in the store, their messages on the
predict queue, as the gateway sends interactive ones."""

from collections.abc import Sequence

from celery import Celery

from shared.broker import dispatch
from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import Job, JobType, PredictParams, new_job_id
from shared.contracts.results import PredictResult
from shared.jobstore import JobStore


class StoreFleet:
    def __init__(self, store: JobStore, app: Celery, owner: str | None) -> None:
        self.store, self.app, self.owner = store, app, owner

    def send(self, texts: list[str]) -> str:
        job = Job(
            id=new_job_id(),
            type=JobType.predict,
            params=PredictParams(texts=texts),
            owner=self.owner,
        )
        self.store.create(job)
        dispatch(self.app, job)
        return job.id

    def answers(self, job_ids: Sequence[str]) -> dict[str, PredictResult | ErrorInfo]:
        return self.store.predict_answers(job_ids)
