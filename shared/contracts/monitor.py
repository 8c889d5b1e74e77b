"""What a model's answers look like, as counts: on its holdout at registration and on live traffic
while it serves, and how far apart the two are (population stability index per signal)."""

import math
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, Field

# Upper bounds of each histogram's buckets; the last bucket takes everything above.
CONFIDENCE_EDGES: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
MARGIN_EDGES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TOKEN_EDGES: tuple[float, ...] = (16, 24, 32, 40, 48, 64, 96, 128, math.inf)
FORWARD_SECONDS_EDGES: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf,
)  # fmt: skip

DISAGREEMENT_CHARS = 300

Signal = Literal["labels", "confidence", "margin", "tokens"]
SIGNALS: tuple[Signal, ...] = ("labels", "confidence", "margin", "tokens")
# Where a bucket holds nothing on one side, PSI's logarithm needs a floor.
PSI_FLOOR = 1e-4


def bucket(value: float, edges: tuple[float, ...]) -> int:
    """The index of the first bucket whose upper bound holds `value`."""
    for index, edge in enumerate(edges):
        if value <= edge:
            return index
    return len(edges) - 1


class Profile(BaseModel):
    """Counts over a set of answered texts: the label mix, the top score (confidence), the margin
    between the top two scores, and the texts' length in tokens."""

    n: int = 0
    labels: dict[str, int] = Field(default_factory=dict)
    confidence: list[int] = Field(default_factory=lambda: [0] * len(CONFIDENCE_EDGES))
    margin: list[int] = Field(default_factory=lambda: [0] * len(MARGIN_EDGES))
    tokens: list[int] = Field(default_factory=lambda: [0] * len(TOKEN_EDGES))
    truncated: int = 0

    def add(self, label: str, scores: Iterable[float], tokens: int, truncated: bool) -> None:
        top, second = _top_two(scores)
        self.n += 1
        self.labels[label] = self.labels.get(label, 0) + 1
        self.confidence[bucket(top, CONFIDENCE_EDGES)] += 1
        self.margin[bucket(top - second, MARGIN_EDGES)] += 1
        self.tokens[bucket(tokens, TOKEN_EDGES)] += 1
        self.truncated += truncated

    def merge(self, other: "Profile") -> "Profile":
        labels = dict(self.labels)
        for label, count in other.labels.items():
            labels[label] = labels.get(label, 0) + count
        return Profile(
            n=self.n + other.n,
            labels=labels,
            confidence=_sum(self.confidence, other.confidence),
            margin=_sum(self.margin, other.margin),
            tokens=_sum(self.tokens, other.tokens),
            truncated=self.truncated + other.truncated,
        )

    def counts(self, signal: Signal, labels: Iterable[str]) -> list[int]:
        if signal == "labels":
            return [self.labels.get(label, 0) for label in labels]
        histogram: list[int] = getattr(self, signal)
        return histogram


class DriftScore(BaseModel):
    signal: Signal
    psi: float | None = Field(description="population stability index; None: too few texts")
    threshold: float
    drifted: bool


class FormFigures(BaseModel):
    form: str
    texts_per_pass: str = Field(description="the passes' size class, in texts")
    passes: int
    texts: int
    mean_seconds: float
    p50_seconds: float | None = Field(None, description="from the histogram's buckets")
    p99_seconds: float | None = Field(None, description="from the histogram's buckets")


class MinuteFigures(BaseModel):
    """One minute of the live window."""

    minute: str = Field(description="its start, ISO 8601 UTC")
    n: int
    labels: dict[str, int]


class LabelAgreement(BaseModel):
    label: str = Field(description="production's label")
    scored: int
    agreed: int
    rate: float | None


class Disagreement(BaseModel):
    """A text the two models labelled differently, for a person to judge."""

    text: str = Field(description="its first DISAGREEMENT_CHARS characters")
    production_label: str
    production_confidence: float
    challenger_label: str
    challenger_confidence: float
    strength: float = Field(description="how sure both were: the lower of the two confidences")


class ChallengeReport(BaseModel):
    """The challenger's answers on the sampled live texts, against production's on the same."""

    challenger: str
    production: str
    share: float
    named_at: str
    scored: int = Field(description="sampled texts the challenger answered")
    agreed: int
    agreement: float | None = Field(description="agreed over scored; None before any")
    by_label: list[LabelAgreement]
    profile: Profile = Field(description="the challenger's own answers on the sampled texts")
    passes: int
    mean_seconds: float | None = Field(description="the challenger's mean forward pass")
    failed: int = Field(description="sampled texts it could not answer (load or forward errors)")
    disagreements: list[Disagreement] = Field(description="the strongest, strongest first")


class MonitorReport(BaseModel):
    version: str
    window_minutes: int
    live: Profile = Field(description="what the fleet answered in the window")
    reference: Profile | None = Field(description="what the version answered on its holdout")
    drift: list[DriftScore]
    forward: list[FormFigures] = Field(description="forward passes since the version served")
    total_texts: int = Field(description="texts answered since the version served")
    timeline: list[MinuteFigures] = Field(
        default_factory=list, description="the window minute by minute, oldest first"
    )
    challenge: ChallengeReport | None = Field(
        None, description="the challenger scored beside this version, or this version as one"
    )


class MonitorEvent(BaseModel):
    version: str
    signal: str
    psi: float
    threshold: float
    window_texts: int
    at: str


def quantile(buckets: list[int], edges: tuple[float, ...], q: float) -> float | None:
    """The q-quantile of a histogram, interpolated within its bucket (the last, open bucket
    reads as its lower bound); None for an empty histogram."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    running = 0
    for index, count in enumerate(buckets):
        if count and running + count >= rank:
            lower = edges[index - 1] if index else 0.0
            upper = edges[index]
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - running) / count
        running += count
    return edges[-2] if math.isinf(edges[-1]) else edges[-1]


def stability_index(expected: list[int], actual: list[int]) -> float:
    """PSI: the sum over buckets of (a - e) * ln(a / e), on shares floored at PSI_FLOOR."""
    expected_total, actual_total = sum(expected), sum(actual)
    if not expected_total or not actual_total:
        return 0.0
    index = 0.0
    for e_count, a_count in zip(expected, actual, strict=True):
        e = max(e_count / expected_total, PSI_FLOOR)
        a = max(a_count / actual_total, PSI_FLOOR)
        index += (a - e) * math.log(a / e)
    return index


def drift(
    reference: Profile,
    live: Profile,
    labels: Iterable[str],
    thresholds: Mapping[Signal, float],
    min_texts: int,
) -> list[DriftScore]:
    """Each signal's PSI of the live window against the reference, once it holds `min_texts`."""
    names = list(labels)
    scores = []
    for signal in SIGNALS:
        psi = None
        if live.n >= min_texts and reference.n > 0:
            psi = round(
                stability_index(reference.counts(signal, names), live.counts(signal, names)), 4
            )
        threshold = thresholds[signal]
        scores.append(
            DriftScore(
                signal=signal,
                psi=psi,
                threshold=threshold,
                drifted=psi is not None and psi > threshold,
            )
        )
    return scores


def top_score(scores: Iterable[float]) -> float:
    return _top_two(scores)[0]


def _top_two(scores: Iterable[float]) -> tuple[float, float]:
    top = second = 0.0
    for score in scores:
        if score > top:
            top, second = score, top
        elif score > second:
            second = score
    return top, second


def _sum(left: list[int], right: list[int]) -> list[int]:
    return [a + b for a, b in zip(left, right, strict=True)]
