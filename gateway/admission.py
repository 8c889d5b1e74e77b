"""Admission: a prediction the fleet could not answer within `predict_wait_s` is refused at once,
503 with Retry-After, rather than joining a backlog that only grows; likewise a training job
when the train queue is full.

Every gateway process keeps an estimate, refreshed every `REFRESH_S`: the backlog, from the texts
pending that the job store counts exactly, and the rate the fleet can answer at. Each predict
worker says what its model answers per second while busy, measured on its own requests (or,
before it has served any, a share of what it timed alone at load, `ANNOUNCED_SHARE`); the
fleet's rate is their sum, and never less than what the gateway saw answered lately, nor than
the most it saw over the last `PEAK_WINDOW_S` (a pause, such as every worker loading a new model,
is not a fall in capacity). A fleet that is asked little answers little: what it answers is not
what it can, so the workers' own measure leads. But a fleet with more waiting than it answers in
`BUSY_S`, still answering, for `SATURATED_S` or longer, answers all it can: then what it answers
is its rate, however much more its workers said they answer alone (a burst takes their cores for
the gateway and the callers). What waits is kept to what that rate answers in `ADMIT_SHARE` of
`predict_wait_s`. With no worker's word, nothing is refused: there is nothing to estimate from."""

import logging
import math
import time
from collections import deque

from gateway.background import every
from gateway.metrics import Metrics
from shared.contracts.errors import ServiceUnavailable
from shared.contracts.serving import ServingWorker
from shared.contracts.stages import ROUTES, TRAIN
from shared.fleet import serving_workers
from shared.jobstore import AsyncJobStore
from shared.settings import Settings

log = logging.getLogger("gateway.admission")

REFRESH_S = 0.25
FLEET_REFRESH_S = 5.0
RATE_HALF_LIFE_S = 2.0
PEAK_WINDOW_S = 60.0
# Workers time their form alone at load; a fleet sharing cores answers less than their sum.
ANNOUNCED_SHARE = 0.5
BUSY_S = 2.0
SATURATED_S = 5.0
ANSWERING_S = 3.0  # answers came this lately: the fleet is not paused
# What waits is kept to what the fleet answers in this share of predict_wait_s: the rest is for
# the estimate's error and the last batch's own forward pass, so that what is taken is answered
# within predict_wait_s (200), not at its edge (202).
ADMIT_SHARE = 0.8
SHED_LOG_S = 10.0
# A fleet answering next to nothing would otherwise have clients told to come back in days.
MAX_RETRY_AFTER_S = 60


class Overloaded(ServiceUnavailable, code="overloaded"):
    """Details carry `retry_after_s`."""

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.details.get("retry_after_s", 1))}


class PredictAdmission:
    def __init__(self, store: AsyncJobStore, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.pending = 0
        self.observed_per_s = 0.0
        self.announced_per_s = 0.0
        self._answered: int | None = None
        self._rates: deque[tuple[float, float]] = deque()
        self._read_at = time.monotonic()
        self._fleet_at = -math.inf
        self._busy_since: float | None = None
        self._answered_at = -math.inf
        self._told_at = -math.inf
        self._refused = 0
        self.background = every(REFRESH_S, self.refresh, "admission estimate not refreshed", log)

    @property
    def rate(self) -> float:
        """Texts per second the fleet can answer, as far as can be told; 0 when it cannot (no
        worker has said what it answers)."""
        if self.announced_per_s <= 0:
            return 0.0
        if self.saturated:
            return self.observed_per_s
        recent_peak = max((rate for _, rate in self._rates), default=0.0)
        return max(self.observed_per_s, recent_peak, self.announced_per_s)

    @property
    def saturated(self) -> bool:
        busy_since = self._busy_since
        return busy_since is not None and time.monotonic() - busy_since >= SATURATED_S

    def admit(self, texts: int) -> None:
        """Count a prediction in, or refuse it (Overloaded) when it would wait too long."""
        wait_s = self.settings.gateway.predict_wait_s
        rate = self.rate
        if self.settings.gateway.shed_predictions and rate > 0:
            excess = self.pending + texts - rate * wait_s * ADMIT_SHARE
            if excess > 0:
                self.metrics.shed.labels("predict").inc()
                retry_after = min(MAX_RETRY_AFTER_S, max(1, math.ceil(excess / rate)))
                refusal = Overloaded(
                    f"the predict fleet is busy: {self.pending} texts wait, answered at about "
                    f"{rate:.0f} texts/s, more than it answers in {wait_s:g}s; try again in "
                    f"{retry_after}s",
                    details={"retry_after_s": retry_after, "pending_texts": self.pending},
                )
                self._tell(refusal)
                raise refusal
        self.pending += texts

    def _tell(self, refusal: Overloaded) -> None:
        """One warning per `SHED_LOG_S` while shedding, with how many were refused since the
        last: an overload is not also a flood of log lines."""
        self._refused += 1
        now = time.monotonic()
        if now - self._told_at >= SHED_LOG_S:
            log.warning("%s; %d refused since the last warning", refusal.message, self._refused)
            self._told_at, self._refused = now, 0

    def start(self) -> None:
        self.background.start()

    async def stop(self) -> None:
        await self.background.stop()

    async def refresh(self) -> None:
        load = await self.store.predict_load()
        now = time.monotonic()
        if self._answered is not None and now > self._read_at:
            instant = max(0, load.answered - self._answered) / (now - self._read_at)
            kept = 0.5 ** ((now - self._read_at) / RATE_HALF_LIFE_S)
            self.observed_per_s = kept * self.observed_per_s + (1 - kept) * instant
            self._rates.append((now, self.observed_per_s))
            while self._rates and self._rates[0][0] < now - PEAK_WINDOW_S:
                self._rates.popleft()
            if load.answered > self._answered:
                self._answered_at = now
            answering = now - self._answered_at <= ANSWERING_S
            busy = answering and load.pending > self.observed_per_s * BUSY_S
            if not busy:
                self._busy_since = None
            elif self._busy_since is None:
                self._busy_since = now
        self._answered, self._read_at, self.pending = load.answered, now, load.pending
        if now - self._fleet_at >= FLEET_REFRESH_S:
            self._fleet_at = now
            workers = await serving_workers(self.store.redis, self.settings)
            self.announced_per_s = sum(capacity(worker) for worker in workers)
        self.metrics.predict_pending.set(self.pending)
        self.metrics.predict_rate.set(self.rate)


def capacity(worker: ServingWorker) -> float:
    """What a worker answers per second: as measured on its requests while busy, else a share of
    what it timed alone at load."""
    if worker.serving_texts_per_s is not None:
        return worker.serving_texts_per_s
    return worker.texts_per_s.get(worker.form, 0.0) * ANNOUNCED_SHARE


async def admit_training(store: AsyncJobStore, settings: Settings, metrics: Metrics) -> None:
    """Refuse a train or pipeline job while `train_queue_max` trainings wait for a worker."""
    limit = settings.gateway.train_queue_max
    waiting = int(await store.redis.llen(ROUTES[TRAIN]))
    if waiting >= limit:
        metrics.shed.labels("jobs").inc()
        log.warning("a training job refused: %d trainings wait (at most %d)", waiting, limit)
        raise Overloaded(
            f"{waiting} trainings already wait for a train worker (at most {limit}); try again "
            "once one has started",
            details={"retry_after_s": 60, "waiting": waiting},
        )
