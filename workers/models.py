"""The model a predict worker serves: loaded once per process, replaced when production changes."""

import threading
import time

from pipeline.predictor import Predictor, load_production
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client


class ServingModel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(s3_client(settings), settings)
        self._predictor: Predictor | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def current(self) -> Predictor:
        """The production model, checking the registry at most every model_poll_s seconds."""
        with self._lock:
            now = time.monotonic()
            if self._predictor is None or now - self._checked_at >= self.settings.model_poll_s:
                self._checked_at = now
                pointer = self.registry.production()
                if (
                    self._predictor is None
                    or pointer is None
                    or pointer.version != self._predictor.version
                ):
                    self._predictor = load_production(
                        self.settings, self.settings.data_dir / "models"
                    )
            return self._predictor
