"""The model a predict worker serves: loaded once per process, swapped when production changes.

A watcher thread reads models/production.json every `model_poll_s` and loads a new version beside
the one serving; the swap is one reference assignment. A batch takes `current()` once and keeps
that model to its end, so no batch is split or dropped, and every answer names its version.
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.predictor import Predictor
from pipeline.serving import load_serving
from shared.errors import AgNewsError, ServiceUnavailable
from shared.registry import ModelRegistry
from shared.settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[str, Settings, Path], Predictor]


class ServingModel:
    def __init__(self, settings: Settings, load: Loader = load_serving) -> None:
        self.settings = settings
        self.registry = ModelRegistry.from_settings(settings)
        self._load = load
        self._predictor: Predictor | None = None
        self._problem: AgNewsError | None = None
        self._failed_at: dict[str, float] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> "ServingModel":
        """Load production, and then watch for a new one, in the background."""
        with self._refresh_lock:
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="model-watcher", daemon=True
                )
                self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()

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
        """One look at production: a new version is loaded and swapped in; a failure keeps the
        model that serves and is retried after `model_retry_s`."""
        with self._refresh_lock:
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
            failed_at = self._failed_at.get(version)
            if failed_at is not None and time.monotonic() - failed_at < self.settings.model_retry_s:
                return
            try:
                predictor = self._load(version, self.settings, self.settings.data_dir / "models")
            except Exception as exc:
                log.exception("model %s could not be loaded; the serving model stays", version)
                self._failed_at[version] = time.monotonic()
                self._problem = (
                    exc
                    if isinstance(exc, AgNewsError)
                    else ServiceUnavailable(f"model {version} could not be loaded: {exc}")
                )
                return
            self._predictor = predictor
            self._problem = None
            self._failed_at.pop(version, None)
            log.info(
                "now serving model %s in %s (was %s)",
                version,
                predictor.form,
                serving.version if serving else "none",
            )

    def _watch(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self.settings.model_poll_s):
                return
