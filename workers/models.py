"""The model a predict worker serves: loaded once per process, swapped when production changes.

A watcher thread reads models/production.json every `model_poll_s` and loads a new version beside
the one serving; the swap is one reference assignment. It reads models/challenger.json as often,
and loads the challenger named there for `ChallengerScorer`, which reads a share of the answered
texts again in a thread of its own. A batch takes `current()` once and keeps
that model to its end, so no batch is split or dropped, and every answer names its version. A
starting worker waits for the watcher's first look (`first_look`) before it takes any request,
so it holds none while its first model loads.
"""

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from pipeline.predictor import Predictor
from pipeline.serving import load_serving
from shared.contracts.errors import AgNewsError, ServiceUnavailable
from shared.contracts.models import ChallengerPointer
from shared.contracts.serving import ServingWorker
from shared.fleet import announce, worker_name
from shared.monitoring import ServingTally
from shared.redis_clients import sync_client
from shared.registry import ModelRegistry
from shared.settings import Settings
from workers.challenger import ChallengerScorer

log = logging.getLogger(__name__)

Loader = Callable[[str, Settings, Path], Predictor]
_STOP_CHECK_S = 0.2


class ServingPace:
    """Texts per second the model answers while it works (its busy time only), over the recent
    batches: what this worker can answer, however much it is asked."""

    def __init__(self, half_life_s: float = 30.0) -> None:
        self.half_life_s = half_life_s
        self.texts = 0.0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, texts: int, seconds: float) -> None:
        with self._lock:
            kept = 0.5 ** (seconds / self.half_life_s)
            self.texts = kept * self.texts + texts
            self.seconds = kept * self.seconds + seconds

    @property
    def texts_per_s(self) -> float | None:
        return round(self.texts / self.seconds, 1) if self.seconds > 0 else None


class ServingModel:
    def __init__(self, settings: Settings, load: Loader = load_serving) -> None:
        self.settings = settings
        self.registry = ModelRegistry.from_settings(settings.storage)
        self._load = load
        self._predictor: Predictor | None = None
        self._problem: AgNewsError | None = None
        self._failed_at: dict[str, float] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._scorer: threading.Thread | None = None
        self._redis: redis.Redis | None = None
        self._announced_at = -math.inf
        self._looked = threading.Event()
        self.pace = ServingPace()
        self.tally = ServingTally(settings.monitor, settings.redis.key_prefix)
        self.forward_lock = threading.Lock()
        self.challenger = ChallengerScorer(
            self.tally, self.forward_lock, settings.monitor.challenger_queue_texts
        )

    def start(self) -> "ServingModel":
        """Load production, and then watch for a new one, in the background."""
        with self._refresh_lock:
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="model-watcher", daemon=True
                )
                self._watcher.start()
                self._scorer = threading.Thread(
                    target=self.challenger.run, args=(self._stop,), name="challenger", daemon=True
                )
                self._scorer.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._watcher, self._scorer):
            if thread is not None:
                thread.join()
        if self._redis is not None:
            self._redis.close()

    def first_look(self, timeout_s: float, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Wait until the watcher has looked at production once: its model loaded, or found
        missing or broken. False if timeout_s passed first or `stopping` turned true."""
        deadline = time.monotonic() + timeout_s
        while not stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._looked.wait(min(left, _STOP_CHECK_S)):
                return True
        return False

    def current(self) -> Predictor:
        """The serving model; with none yet, production is looked up (and loaded) right now."""
        predictor = self._predictor
        if predictor is None:
            self.refresh()
            predictor = self._predictor
        if predictor is None:
            raise self._problem or ServiceUnavailable("the model is still loading")
        return predictor

    def refresh(self) -> None:
        """One look at production and the challenger: a new version is loaded and swapped in; a
        failure keeps the model that serves and is retried after `model_retry_s`."""
        with self._refresh_lock:
            self._refresh_production()
            self._refresh_challenger()

    def _refresh_production(self) -> None:
        try:
            version = self.registry.production_version()
        except AgNewsError as exc:
            self._problem = exc
            return
        except Exception as exc:
            log.warning("could not read the production pointer: %s", exc)
            self._problem = ServiceUnavailable(f"the model registry is unreachable: {exc}")
            return
        serving = self._predictor
        if serving is not None and serving.version == version:
            return
        if self._failed_lately(version):
            return
        try:
            predictor = self._promoted_challenger(version) or self._load(
                version, self.settings, self.settings.run.data_dir / "models"
            )
        except Exception as exc:
            log.exception(
                "model %s could not be loaded; the serving model stays",
                version,
                extra={"version": version},
            )
            self._failed_at[version] = time.monotonic()
            self._problem = (
                exc
                if isinstance(exc, AgNewsError)
                else ServiceUnavailable(f"model {version} could not be loaded: {exc}")
            )
            return
        self._predictor = predictor
        self._announced_at = -math.inf
        self._problem = None
        self._failed_at.pop(version, None)
        log.info(
            "now serving model %s in %s, %d texts per forward call (was %s)",
            version,
            predictor.form,
            predictor.batch_size,
            serving.version if serving else "none",
            extra={"version": version},
        )

    def _promoted_challenger(self, version: str) -> Predictor | None:
        """The challenger's model, already loaded, where it is the version promoted."""
        return self.challenger.predictor if self.challenger.version == version else None

    def _refresh_challenger(self) -> None:
        try:
            pointer = self.registry.challenger()
        except Exception as exc:
            log.warning("could not read the challenger pointer: %s", exc)
            return
        serving = self._predictor
        scorer = self.challenger
        if pointer is None or serving is None or pointer.version == serving.version:
            if scorer.version is not None:
                log.info("challenger %s no longer scored", scorer.version)
                scorer.name(None, 0.0, None)
            return
        if pointer.version == scorer.version and scorer.predictor is not None:
            scorer.name(pointer.version, pointer.share, scorer.predictor)
            return
        if pointer.version == scorer.version and self._failed_lately(pointer.version):
            return
        scorer.name(pointer.version, pointer.share, self._load_challenger(pointer))

    def _load_challenger(self, pointer: ChallengerPointer) -> Predictor | None:
        version = pointer.version
        try:
            predictor = self._load(version, self.settings, self.settings.run.data_dir / "models")
        except Exception:
            log.exception(
                "challenger %s could not be loaded; production serves on, the sampled texts "
                "count as failed",
                version,
                extra={"version": version},
            )
            self._failed_at[version] = time.monotonic()
            return None
        self._failed_at.pop(version, None)
        log.info(
            "now scoring challenger %s in %s on %.0f%% of answered texts",
            version,
            predictor.form,
            pointer.share * 100,
            extra={"version": version},
        )
        return predictor

    def _failed_lately(self, version: str) -> bool:
        failed_at = self._failed_at.get(version)
        retry_s = self.settings.serving.model_retry_s
        return failed_at is not None and time.monotonic() - failed_at < retry_s

    def announce(self) -> None:
        """Tell the gateway's /metrics what this worker serves: on a new model, and every
        heartbeat_interval_s after (a failure is logged; the next poll tries again)."""
        predictor = self._predictor
        since = time.monotonic() - self._announced_at
        if predictor is None or since < self.settings.reaper.heartbeat_interval_s:
            return
        worker = ServingWorker(
            worker=worker_name(),
            version=predictor.version,
            form=predictor.form,
            texts_per_s=predictor.timings,
            forward_batch=predictor.batch_size,
            texts_per_s_by_batch=predictor.batch_timings,
            serving_texts_per_s=self.pace.texts_per_s,
        )
        try:
            if self._redis is None:
                self._redis = sync_client(self.settings.redis)
            announce(self._redis, self.settings, worker)
        except redis.RedisError as exc:
            log.warning("could not announce the serving model: %s", exc)
            return
        self._announced_at = time.monotonic()

    def flush_tally(self, *, now: bool = False) -> None:
        """Add this worker's serving counts to the fleet's, when due (a failure is logged; the
        counts wait for the next flush)."""
        if not (now or self.tally.due()):
            return
        try:
            if self._redis is None:
                self._redis = sync_client(self.settings.redis)
            self.tally.flush(self._redis)
        except redis.RedisError as exc:
            log.warning("could not add the serving counts: %s", exc)

    def _watch(self) -> None:
        wait_s = min(self.settings.serving.model_poll_s, self.settings.monitor.flush_s)
        while True:
            self.refresh()
            self._looked.set()
            self.announce()
            self.flush_tally()
            if self._stop.wait(wait_s):
                self.flush_tally(now=True)
                return
