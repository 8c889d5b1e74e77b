"""Serving counts kept in Redis, so that every predict worker on every host adds to one tally.

Each worker counts its answers in memory and adds them to Redis every `monitor.flush_s`, one
pipeline for all of them: per version, a running total (what /metrics exports) and one hash per
minute (the live window that drift is scored on, kept `monitor.window_minutes`). A worker killed
between two flushes loses at most that interval's counts, never an answer.

Bounds: the minute hashes expire after the window; a version's total expires `monitor.keep_s`
after its last answer, and the versions index is trimmed to the same age.
"""

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis

from shared.contracts.monitor import FORWARD_SECONDS_EDGES, Profile, bucket
from shared.contracts.results import Prediction
from shared.settings import MonitorSettings

# Forward passes by how many texts they carry: the label each size falls under.
PASS_SIZES: tuple[tuple[float, str], ...] = (
    (1, "1"), (4, "2-4"), (16, "5-16"), (64, "17-64"), (math.inf, "65+"),
)  # fmt: skip
LABEL, CONFIDENCE, MARGIN, TOKENS = "label:", "confidence:", "margin:", "tokens:"


def pass_size(texts: int) -> str:
    return next(name for limit, name in PASS_SIZES if texts <= limit)


class MonitorKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}:monitor"

    @property
    def versions(self) -> str:
        """Sorted set: each version that answered, scored by when it last did (epoch seconds)."""
        return f"{self.prefix}:versions"

    @property
    def drifted(self) -> str:
        """How many of production's signals drifted at the last check (expires if none runs)."""
        return f"{self.prefix}:drifted"

    @property
    def events(self) -> str:
        """The monitor stream: one entry per drift alert."""
        return f"{self.prefix}:events"

    def total(self, version: str) -> str:
        return f"{self.prefix}:total:{version}"

    def minute(self, version: str, minute: int) -> str:
        return f"{self.prefix}:minute:{version}:{minute}"

    def window(self, version: str, now: float, minutes: int) -> list[str]:
        """The minute hashes of the last `minutes`, this one included."""
        current = int(now // 60)
        return [self.minute(version, current - back) for back in range(minutes)]


def profile_fields(profile: Profile) -> dict[str, int]:
    fields = {"n": profile.n, "truncated": profile.truncated}
    fields |= {f"{LABEL}{label}": count for label, count in profile.labels.items()}
    for prefix, counts in (
        (CONFIDENCE, profile.confidence),
        (MARGIN, profile.margin),
        (TOKENS, profile.tokens),
    ):
        fields |= {f"{prefix}{index}": count for index, count in enumerate(counts) if count}
    return {name: count for name, count in fields.items() if count}


def profile_of(hashes: Iterable[Mapping[str, str]]) -> Profile:
    """The sum of profiles as `profile_fields` wrote them."""
    profile = Profile()
    for fields in hashes:
        for name, value in fields.items():
            count = int(float(value))
            if name == "n":
                profile.n += count
            elif name == "truncated":
                profile.truncated += count
            elif name.startswith(LABEL):
                label = name.removeprefix(LABEL)
                profile.labels[label] = profile.labels.get(label, 0) + count
            else:
                for prefix, counts in (
                    (CONFIDENCE, profile.confidence),
                    (MARGIN, profile.margin),
                    (TOKENS, profile.tokens),
                ):
                    if name.startswith(prefix) and int(name.removeprefix(prefix)) < len(counts):
                        counts[int(name.removeprefix(prefix))] += count
    return profile


@dataclass
class ForwardTally:
    """Forward passes of one form and pass size: their count, texts, seconds and histogram."""

    passes: int = 0
    texts: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(FORWARD_SECONDS_EDGES))

    def fields(self, form: str, size: str) -> dict[str, float]:
        head = f"forward:{form}:{size}:"
        counts = {f"{head}{index}": count for index, count in enumerate(self.buckets) if count}
        return {
            f"{head}passes": self.passes,
            f"{head}texts": self.texts,
            f"{head}seconds": self.seconds,
            **counts,
        }


@dataclass
class VersionTally:
    profile: Profile = field(default_factory=Profile)
    forward: dict[tuple[str, str], ForwardTally] = field(default_factory=dict)


class ServingTally:
    """A predict worker's counts since its last flush; safe to share between threads."""

    def __init__(self, settings: MonitorSettings, prefix: str) -> None:
        self.settings = settings
        self.keys = MonitorKeys(prefix)
        self._lock = threading.Lock()
        self._pending: dict[str, VersionTally] = {}
        self._flushed_at = time.monotonic()

    def add(
        self,
        version: str,
        form: str,
        predictions: Sequence[Prediction],
        tokens: Sequence[int],
        seconds: float,
    ) -> None:
        """One forward pass's answers: how long it took, and each text's answer and length."""
        if not self.settings.enabled or not predictions:
            return
        with self._lock:
            tally = self._pending.setdefault(version, VersionTally())
            for prediction, length in zip(predictions, tokens, strict=True):
                tally.profile.add(
                    prediction.label, prediction.scores.values(), length, prediction.truncated
                )
            forward = tally.forward.setdefault((form, pass_size(len(predictions))), ForwardTally())
            forward.passes += 1
            forward.texts += len(predictions)
            forward.seconds += seconds
            forward.buckets[bucket(seconds, FORWARD_SECONDS_EDGES)] += 1

    def due(self) -> bool:
        return time.monotonic() - self._flushed_at >= self.settings.flush_s

    def flush(self, client: redis.Redis, now: float | None = None) -> None:
        """Add what was counted to Redis; on failure the counts stay for the next flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed_at = time.monotonic()
        if not pending:
            return
        at = time.time() if now is None else now
        try:
            _write(client, self.keys, self.settings, pending, at)
        except redis.RedisError:
            with self._lock:
                for version, tally in pending.items():
                    self._merge_back(version, tally)
            raise

    def _merge_back(self, version: str, tally: VersionTally) -> None:
        current = self._pending.setdefault(version, VersionTally())
        current.profile = current.profile.merge(tally.profile)
        for key, forward in tally.forward.items():
            mine = current.forward.setdefault(key, ForwardTally())
            mine.passes += forward.passes
            mine.texts += forward.texts
            mine.seconds += forward.seconds
            mine.buckets = [a + b for a, b in zip(mine.buckets, forward.buckets, strict=True)]


def _write(
    client: redis.Redis,
    keys: MonitorKeys,
    settings: MonitorSettings,
    pending: Mapping[str, VersionTally],
    now: float,
) -> None:
    window_s = settings.window_minutes * 60 + 120
    pipe = client.pipeline(transaction=False)
    for version, tally in pending.items():
        counts = profile_fields(tally.profile)
        minute = keys.minute(version, int(now // 60))
        total = keys.total(version)
        for name, count in counts.items():
            pipe.hincrby(minute, name, count)
            pipe.hincrby(total, name, count)
        for (form, size), forward in tally.forward.items():
            for name, value in forward.fields(form, size).items():
                if isinstance(value, float):
                    pipe.hincrbyfloat(total, name, value)
                else:
                    pipe.hincrby(total, name, value)
        pipe.expire(minute, window_s)
        pipe.expire(total, settings.keep_s)
        pipe.zadd(keys.versions, {version: now})
    pipe.zremrangebyscore(keys.versions, "-inf", now - settings.keep_s)
    pipe.execute()
