"""Where a job lives in Redis."""

from shared.contracts.jobs import Job, JobType


class JobKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # Jobs not yet ended, by creation time (members are their hash keys): the reaper's list.
        self.active = f"{prefix}:jobs:active"
        # Every predict job's terminal event, for the gateways waiting on them.
        self.answers = f"{prefix}:predict:answers"
        # Texts of predict jobs not yet ended, and texts answered since the store began.
        self.pending = f"{prefix}:predict:pending"
        self.answered = f"{prefix}:predict:answered"
        # The owners (API key names) with indexes of their own.
        self.owners = f"{prefix}:jobs:owners"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    @property
    def predict_index(self) -> str:
        """Predict jobs by creation time (they live minutes: one index for every owner)."""
        return f"{self.prefix}:jobs:predict"

    def index(self, owner: str | None = None) -> str:
        """Train, evaluate and pipeline jobs by creation time: everyone's, or one owner's."""
        return f"{self.prefix}:jobs" if owner is None else f"{self.prefix}:jobs:owner:{owner}"

    def indexes(self, job: Job) -> list[str]:
        if job.type is JobType.predict:
            return [self.predict_index]
        return [self.index(), *([] if job.owner is None else [self.index(job.owner)])]

    def emit(self, job_id: str) -> list[str]:
        """The keys a change to a job may touch (the `EMIT` script's)."""
        return [
            self.job(job_id),
            self.events(job_id),
            self.active,
            self.answers,
            self.pending,
            self.answered,
        ]
