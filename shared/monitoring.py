"""Serving counts kept in Redis, so that every predict worker on every host adds to one tally.

Each worker counts its answers in memory and adds them to Redis every `monitor.flush_s`, one
pipeline for all of them: per version, a running total (what /metrics exports) and one hash per
minute (the live window that drift is scored on, kept `monitor.window_minutes`). A worker killed
between two flushes loses at most that interval's counts, never an answer.

A challenger's answers on the sampled texts go to their own hash per (challenger, production)
pair, never to the version's totals (those count answers sent), with the strongest
disagreements in a sorted set trimmed to `DISAGREEMENTS_KEPT`.

Answers less sure than `monitor.review_confidence` are kept for people to review (GET
/v1/feedback/review): per version, a sorted set of the newest `monitor.review_keep` texts (their
first REVIEW_TEXT_CHARS characters), scored by when each was last answered; a worker holds at
most as many per version between two flushes.

Bounds: the minute hashes expire after the window; a version's total, its review sample and a
challenge's figures expire `monitor.keep_s` after their last write, and the versions index is
trimmed to the same age.
"""

import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis

from shared.contracts.feedback import REVIEW_TEXT_CHARS, UncertainAnswer
from shared.contracts.monitor import (
    DISAGREEMENT_CHARS,
    FORWARD_SECONDS_EDGES,
    Disagreement,
    Profile,
    bucket,
    top_score,
)
from shared.contracts.results import Prediction
from shared.settings import MonitorSettings

# Forward passes by how many texts they carry: the label each size falls under.
PASS_SIZES: tuple[tuple[float, str], ...] = (
    (1, "1"), (4, "2-4"), (16, "5-16"), (64, "17-64"), (math.inf, "65+"),
)  # fmt: skip
LABEL, CONFIDENCE, MARGIN, TOKENS = "label:", "confidence:", "margin:", "tokens:"
PROFILE = "profile:"
DISAGREEMENTS_KEPT = 20
# A version's uncertain answers since the last flush, oldest first: {text: (label, confidence,
# when answered in epoch seconds)}.
Uncertain = dict[str, tuple[str, float, float]]


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

    def challenge(self, challenger: str, production: str) -> str:
        """Hash: the challenger's figures on the texts it scored beside `production`."""
        return f"{self.prefix}:challenge:{challenger}:{production}"

    def disagreements(self, challenger: str, production: str) -> str:
        """Sorted set: Disagreement records, scored by their strength."""
        return f"{self.prefix}:disagree:{challenger}:{production}"

    def uncertain(self, version: str) -> str:
        """Sorted set: the version's uncertain answers (`uncertain_member`: JSON of the text, label
        and confidence), scored by when each was last answered (epoch seconds)."""
        return f"{self.prefix}:uncertain:{version}"

    @property
    def feedback_pending(self) -> str:
        """Set: the keys of the texts given feedback since feedback last started a pipeline by
        itself (at most `feedback_retrain_after`)."""
        return f"{self.prefix}:feedback:pending"

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


def profile_of(hashes: Iterable[Mapping[str, str]], prefix: str = "") -> Profile:
    """The sum of profiles as `profile_fields` wrote them (each field name after `prefix`)."""
    profile = Profile()
    histograms = {CONFIDENCE: profile.confidence, MARGIN: profile.margin, TOKENS: profile.tokens}
    for fields in hashes:
        for full_name, value in fields.items():
            if not full_name.startswith(prefix):
                continue
            name, count = full_name.removeprefix(prefix), int(float(value))
            kind, _, index = name.partition(":")
            if name == "n":
                profile.n += count
            elif name == "truncated":
                profile.truncated += count
            elif name.startswith(LABEL):
                label = name.removeprefix(LABEL)
                profile.labels[label] = profile.labels.get(label, 0) + count
            elif (
                (counts := histograms.get(f"{kind}:"))
                and index.isdigit()
                and int(index) < len(counts)
            ):
                counts[int(index)] += count
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

    def merge(self, other: "ForwardTally") -> None:
        self.passes += other.passes
        self.texts += other.texts
        self.seconds += other.seconds
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


@dataclass
class VersionTally:
    profile: Profile = field(default_factory=Profile)
    forward: dict[tuple[str, str], ForwardTally] = field(default_factory=dict)

    def merge(self, other: "VersionTally") -> None:
        self.profile = self.profile.merge(other.profile)
        for key, forward in other.forward.items():
            self.forward.setdefault(key, ForwardTally()).merge(forward)


@dataclass
class ChallengeTally:
    """A challenger's answers beside production's on the same sampled texts."""

    scored: int = 0
    agreed: int = 0
    failed: int = 0
    passes: int = 0
    seconds: float = 0.0
    by_label: dict[str, tuple[int, int]] = field(default_factory=dict)
    profile: Profile = field(default_factory=Profile)
    disagreements: list[Disagreement] = field(default_factory=list)

    def add(
        self,
        texts: Sequence[str],
        production: Sequence[Prediction],
        challenger: Sequence[Prediction],
        tokens: Sequence[int],
        seconds: float,
    ) -> None:
        self.passes += 1
        self.seconds += seconds
        for text, ours, theirs, length in zip(texts, production, challenger, tokens, strict=True):
            agreed = ours.label == theirs.label
            scored, agreeing = self.by_label.get(ours.label, (0, 0))
            self.by_label[ours.label] = (scored + 1, agreeing + agreed)
            self.scored += 1
            self.agreed += agreed
            self.profile.add(theirs.label, theirs.scores.values(), length, theirs.truncated)
            if not agreed:
                self.disagreements.append(_disagreement(text, ours, theirs))
        self.disagreements = strongest(self.disagreements)

    def merge(self, other: "ChallengeTally") -> None:
        self.scored += other.scored
        self.agreed += other.agreed
        self.failed += other.failed
        self.passes += other.passes
        self.seconds += other.seconds
        for label, (scored, agreed) in other.by_label.items():
            mine = self.by_label.get(label, (0, 0))
            self.by_label[label] = (mine[0] + scored, mine[1] + agreed)
        self.profile = self.profile.merge(other.profile)
        self.disagreements = strongest(self.disagreements + other.disagreements)

    def fields(self) -> dict[str, float]:
        fields: dict[str, float] = {
            "scored": self.scored,
            "agreed": self.agreed,
            "failed": self.failed,
            "passes": self.passes,
            "seconds": self.seconds,
        }
        for label, (scored, agreed) in self.by_label.items():
            fields[f"scored:{label}"] = scored
            fields[f"agreed:{label}"] = agreed
        for name, count in profile_fields(self.profile).items():
            fields[f"{PROFILE}{name}"] = count
        return {name: value for name, value in fields.items() if value}


def strongest(disagreements: list[Disagreement]) -> list[Disagreement]:
    """The strongest DISAGREEMENTS_KEPT, one per text."""
    by_text = {d.text: d for d in sorted(disagreements, key=lambda d: d.strength)}
    return sorted(by_text.values(), key=lambda d: d.strength, reverse=True)[:DISAGREEMENTS_KEPT]


def _disagreement(text: str, ours: Prediction, theirs: Prediction) -> Disagreement:
    ours_top, theirs_top = top_score(ours.scores.values()), top_score(theirs.scores.values())
    return Disagreement(
        text=text[:DISAGREEMENT_CHARS],
        production_label=ours.label,
        production_confidence=round(ours_top, 4),
        challenger_label=theirs.label,
        challenger_confidence=round(theirs_top, 4),
        strength=round(min(ours_top, theirs_top), 4),
    )


class ServingTally:
    """A predict worker's counts since its last flush; safe to share between threads."""

    def __init__(self, settings: MonitorSettings, prefix: str) -> None:
        self.settings = settings
        self.keys = MonitorKeys(prefix)
        self._lock = threading.Lock()
        self._pending: dict[str, VersionTally] = {}
        self._challenges: dict[tuple[str, str], ChallengeTally] = {}
        self._uncertain: dict[str, Uncertain] = {}
        self._flushed_at = time.monotonic()

    def add(
        self,
        version: str,
        form: str,
        predictions: Sequence[Prediction],
        tokens: Sequence[int],
        seconds: float,
        texts: Sequence[str] = (),
    ) -> None:
        """One forward pass's answers: how long it took, and each text's answer and length;
        given the `texts`, those answered less surely than `review_confidence` join the
        version's review sample."""
        if not self.settings.enabled or not predictions:
            return
        with self._lock:
            if texts and self.settings.review_keep:
                kept = self._uncertain.setdefault(version, {})
                _keep_uncertain(kept, texts, predictions, self.settings, time.time())
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

    def add_challenge(
        self,
        challenger: str,
        production: str,
        texts: Sequence[str],
        answers: tuple[Sequence[Prediction], Sequence[Prediction]],
        tokens: Sequence[int],
        seconds: float,
    ) -> None:
        """The challenger's answers (second) to sampled texts production answered (first)."""
        if not self.settings.enabled or not texts:
            return
        with self._lock:
            tally = self._challenges.setdefault((challenger, production), ChallengeTally())
            tally.add(texts, answers[0], answers[1], tokens, seconds)

    def add_challenge_failure(self, challenger: str, production: str, texts: int) -> None:
        if not self.settings.enabled:
            return
        with self._lock:
            self._challenges.setdefault((challenger, production), ChallengeTally()).failed += texts

    def due(self) -> bool:
        return time.monotonic() - self._flushed_at >= self.settings.flush_s

    def flush(self, client: redis.Redis, now: float | None = None) -> None:
        """Add what was counted to Redis; on failure the counts stay for the next flush."""
        with self._lock:
            pending, self._pending = self._pending, {}
            challenges, self._challenges = self._challenges, {}
            uncertain, self._uncertain = self._uncertain, {}
            self._flushed_at = time.monotonic()
        if not pending and not challenges:
            return
        at = time.time() if now is None else now
        try:
            _write(client, self.keys, self.settings, pending, challenges, at, uncertain)
        except redis.RedisError:
            with self._lock:
                for version, tally in pending.items():
                    self._pending.setdefault(version, VersionTally()).merge(tally)
                for pair, challenge in challenges.items():
                    self._challenges.setdefault(pair, ChallengeTally()).merge(challenge)
                for version, kept in uncertain.items():
                    newer = self._uncertain.setdefault(version, {})
                    self._uncertain[version] = _bounded(
                        {**kept, **newer}, self.settings.review_keep
                    )
            raise


def _write(
    client: redis.Redis,
    keys: MonitorKeys,
    settings: MonitorSettings,
    pending: Mapping[str, VersionTally],
    challenges: Mapping[tuple[str, str], ChallengeTally],
    now: float,
    uncertain: Mapping[str, Uncertain] | None = None,
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
    for (challenger, production), challenge in challenges.items():
        figures = keys.challenge(challenger, production)
        for name, value in challenge.fields().items():
            if isinstance(value, float):
                pipe.hincrbyfloat(figures, name, value)
            else:
                pipe.hincrby(figures, name, value)
        pipe.expire(figures, settings.keep_s)
        if challenge.disagreements:
            kept = keys.disagreements(challenger, production)
            pipe.zadd(kept, {d.model_dump_json(): d.strength for d in challenge.disagreements})
            pipe.zremrangebyrank(kept, 0, -DISAGREEMENTS_KEPT - 1)
            pipe.expire(kept, settings.keep_s)
    for version, sampled in (uncertain or {}).items():
        sample = keys.uncertain(version)
        members = {
            uncertain_member(text, label, confidence): at
            for text, (label, confidence, at) in sampled.items()
        }
        if not members:
            continue
        pipe.zadd(sample, members)
        pipe.zremrangebyrank(sample, 0, -settings.review_keep - 1)
        pipe.expire(sample, settings.keep_s)
    pipe.zremrangebyscore(keys.versions, "-inf", now - settings.keep_s)
    pipe.execute()


def uncertain_member(text: str, label: str, confidence: float) -> str:
    """A review sample's member: one per text and answer, however often it is answered."""
    return json.dumps({"text": text, "label": label, "confidence": confidence}, sort_keys=True)


def uncertain_answer(member: str, at: float) -> UncertainAnswer:
    return UncertainAnswer.model_validate({**json.loads(member), "at": at})


def _keep_uncertain(
    kept: Uncertain,
    texts: Sequence[str],
    predictions: Sequence[Prediction],
    settings: MonitorSettings,
    now: float,
) -> None:
    for text, prediction in zip(texts, predictions, strict=True):
        confidence = top_score(prediction.scores.values())
        if confidence >= settings.review_confidence:
            continue
        shown = text[:REVIEW_TEXT_CHARS]
        kept.pop(shown, None)
        kept[shown] = (prediction.label, round(confidence, 4), now)
        if len(kept) > settings.review_keep:
            del kept[next(iter(kept))]


def _bounded(kept: Uncertain, keep: int) -> Uncertain:
    """The newest `keep`, oldest first."""
    newest = sorted(kept.items(), key=lambda item: item[1][2])[-keep:] if keep else []
    return dict(newest)
