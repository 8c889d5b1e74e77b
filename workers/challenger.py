"""A challenger scored on live traffic: a share of the texts production answered, read again by the
challenger after their answers were written, in a thread of its own.

Production never waits on it beyond one challenger pass: both take `forward_lock` for a forward
pass, and the challenger reads at most its forward batch at a time. Sampled texts wait in a
bounded queue; when the challenger falls behind, what does not fit is skipped (and counted), never
queued without bound. A challenger that failed to load, or whose pass raises, counts its sampled
texts as failed; production's answers are already sent.
"""

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from pipeline.predictor import Predictor, answers
from shared.contracts.results import Prediction
from shared.monitoring import ServingTally

log = logging.getLogger(__name__)

_WARN_EVERY_S = 60.0


class Sampled(NamedTuple):
    production: str
    text: str
    answer: Prediction


class ChallengerScorer:
    def __init__(
        self,
        tally: ServingTally,
        forward_lock: threading.Lock,
        max_waiting: int,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.tally = tally
        self.forward_lock = forward_lock
        self.max_waiting = max_waiting
        self.draw = draw
        self.version: str | None = None
        self.share = 0.0
        self.skipped = 0
        self._predictor: Predictor | None = None
        self._waiting: deque[Sampled] = deque()
        self._ready = threading.Condition()
        self._warned_at = -_WARN_EVERY_S

    @property
    def predictor(self) -> Predictor | None:
        return self._predictor

    def name(self, version: str | None, share: float, predictor: Predictor | None) -> None:
        """Score `version` on `share` of the answers (its predictor None: it failed to load);
        None stops scoring and drops what waits."""
        with self._ready:
            if version != self.version:
                self._waiting.clear()
            self.version, self.share, self._predictor = version, share, predictor

    def offer(self, production: str, texts: Sequence[str], answered: Sequence[Prediction]) -> None:
        """Production's answers, already sent: each text joins the sample with the share's
        chance."""
        if self.version is None:
            return
        chosen = [
            Sampled(production, text, answer)
            for text, answer in zip(texts, answered, strict=True)
            if self.draw() < self.share
        ]
        if not chosen:
            return
        with self._ready:
            room = max(0, self.max_waiting - len(self._waiting))
            self._waiting.extend(chosen[:room])
            skipped = len(chosen) - min(room, len(chosen))
            self.skipped += skipped
            self._ready.notify()
        if skipped:
            self._warn(
                "challenger %s behind: %d sampled texts skipped so far", self.version, self.skipped
            )

    def run(self, stop: threading.Event) -> None:
        """Score what waits until `stop` is set."""
        while not stop.is_set():
            self.step(timeout_s=0.2)

    def step(self, timeout_s: float = 0.0) -> bool:
        """Score one pass of what waits (up to the challenger's forward batch); False if none."""
        with self._ready:
            if not self._waiting:
                self._ready.wait(timeout_s)
            if not self._waiting:
                return False
            version, predictor = self.version, self._predictor
            take = predictor.batch_size if predictor is not None else len(self._waiting)
            batch = [self._waiting.popleft() for _ in range(min(take, len(self._waiting)))]
        if version is None:
            return True
        for production, group in _by_production(batch).items():
            self._score(version, predictor, production, group)
        return True

    def _score(
        self, version: str, predictor: Predictor | None, production: str, group: list[Sampled]
    ) -> None:
        if predictor is None:
            self.tally.add_challenge_failure(version, production, len(group))
            return
        texts = [sampled.text for sampled in group]
        try:
            encoded = predictor.encode(texts)
            with self.forward_lock:
                began = time.perf_counter()
                transformer = predictor.forward(encoded.ids)
                seconds = time.perf_counter() - began
            theirs = answers(predictor.blend(transformer, texts), encoded.truncated)
        except Exception as exc:
            self.tally.add_challenge_failure(version, production, len(group))
            self._warn("challenger %s failed on %d texts: %s", version, len(group), exc)
            return
        self.tally.add_challenge(
            version,
            production,
            texts,
            ([sampled.answer for sampled in group], theirs),
            [len(ids) for ids in encoded.ids],
            seconds,
        )

    def _warn(self, message: str, *args: object) -> None:
        if time.monotonic() - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = time.monotonic()
            log.warning(message, *args)


def _by_production(batch: list[Sampled]) -> dict[str, list[Sampled]]:
    groups: dict[str, list[Sampled]] = {}
    for sampled in batch:
        groups.setdefault(sampled.production, []).append(sampled)
    return groups
