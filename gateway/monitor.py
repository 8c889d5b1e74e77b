"""The model in service, seen: the predict workers' counts (shared.monitoring) exported on /metrics,
and the live window scored for drift against the version's own holdout profile.

Every gateway reads the same fleet-wide totals, so each exports the fleet's figures: aggregate them
across gateways with max(), not sum(). A drift check runs in each gateway every `monitor.check_s`;
a drifted signal's event goes once per `drift_alert_every_s` to the monitor stream, whichever
gateway sees it first.
"""

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import cast

import redis.asyncio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.background import every
from shared.contracts.errors import NoProductionModel
from shared.contracts.labels import LABELS
from shared.contracts.models import ChallengerPointer, ModelInfo
from shared.contracts.monitor import (
    CONFIDENCE_EDGES,
    FORWARD_SECONDS_EDGES,
    MARGIN_EDGES,
    TOKEN_EDGES,
    ChallengeReport,
    Disagreement,
    DriftScore,
    FormFigures,
    LabelAgreement,
    MinuteFigures,
    MonitorEvent,
    MonitorReport,
    Profile,
    drift,
    quantile,
)
from shared.contracts.times import utcnow
from shared.monitoring import LABEL, PROFILE, MonitorKeys, profile_of
from shared.redis_clients import text, text_fields
from shared.registry import ModelRegistry
from shared.settings import Settings

log = logging.getLogger("gateway.monitor")

STREAM_MAXLEN = 1000


class Monitor:
    """Reads the fleet's serving counts; scores drift; exports both."""

    def __init__(self, client: redis.asyncio.Redis, registry: ModelRegistry, settings: Settings):
        self.client = client
        self.registry = registry
        self.settings = settings
        self.keys = MonitorKeys(settings.redis.key_prefix)
        self.collector = ServingCollector()
        self._references: dict[str, Profile | None] = {}
        self.background = every(settings.monitor.check_s, self.check, "drift not checked", log)

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.collector)

    async def totals(self) -> dict[str, dict[str, str]]:
        since = time.time() - self.settings.monitor.keep_s
        found = await self.client.zrangebyscore(self.keys.versions, since, "+inf")
        versions = [text(cast(bytes | str, version)) for version in found]
        pipe = self.client.pipeline(transaction=False)
        for version in versions:
            pipe.hgetall(self.keys.total(version))
        hashes = await pipe.execute()
        return {
            version: text_fields(fields)
            for version, fields in zip(versions, hashes, strict=True)
            if fields
        }

    async def minutes(self, version: str) -> list[tuple[int, Profile]]:
        """The window's minutes, oldest first: each minute's start (epoch seconds), its profile."""
        keys = self.keys.window(version, time.time(), self.settings.monitor.window_minutes)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        hashes = await pipe.execute()
        minutes = [
            (int(key.rsplit(":", 1)[1]) * 60, profile_of([text_fields(fields)]))
            for key, fields in zip(keys, hashes, strict=True)
        ]
        return minutes[::-1]

    async def window(self, version: str) -> Profile:
        window = Profile()
        for _, profile in await self.minutes(version):
            window = window.merge(profile)
        return window

    async def challenge(self, production: str) -> ChallengeReport | None:
        """The challenger's figures beside `production`, when one is named."""
        pointer = await asyncio.to_thread(self.registry.challenger)
        if pointer is None:
            return None
        return await self.challenge_report(pointer, production)

    async def challenge_report(
        self, pointer: ChallengerPointer, production: str
    ) -> ChallengeReport:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.challenge(pointer.version, production))
        pipe.zrevrange(self.keys.disagreements(pointer.version, production), 0, -1)
        fields_read, kept = await pipe.execute()
        return challenge_report(
            pointer, production, text_fields(fields_read), [text(d) for d in kept]
        )

    async def reference(self, version: str) -> Profile | None:
        """The version's holdout profile, from its manifest (read once: versions never change)."""
        if version not in self._references:
            info: ModelInfo = await asyncio.to_thread(self.registry.get, version)
            self._references[version] = info.metrics.profile
        return self._references[version]

    async def report(self, version: str) -> MonitorReport:
        reference = await self.reference(version)  # NotFound for a version never registered
        minutes = await self.minutes(version)
        live = Profile()
        for _, profile in minutes:
            live = live.merge(profile)
        totals = (await self.totals()).get(version, {})
        return MonitorReport(
            version=version,
            window_minutes=self.settings.monitor.window_minutes,
            live=live,
            reference=reference,
            drift=self._scores(reference, live),
            forward=forward_figures(totals),
            total_texts=int(totals.get("n", 0)),
            timeline=[
                MinuteFigures(
                    minute=datetime.fromtimestamp(start, UTC).isoformat(),
                    n=profile.n,
                    labels=profile.labels,
                )
                for start, profile in minutes
            ],
            challenge=await self._challenge_of(version),
        )

    async def _challenge_of(self, version: str) -> ChallengeReport | None:
        """Beside production: its challenger's figures; for the challenger: its own."""
        pointer, production = await asyncio.gather(
            asyncio.to_thread(self.registry.challenger),
            asyncio.to_thread(self.registry.production),
        )
        if pointer is None or production is None:
            return None
        if version not in (pointer.version, production.version):
            return None
        return await self.challenge_report(pointer, production.version)

    def _scores(self, reference: Profile | None, live: Profile) -> list[DriftScore]:
        monitor = self.settings.monitor
        return drift(reference or Profile(), live, LABELS, monitor.thresholds(), monitor.min_texts)

    async def refresh(self) -> None:
        """For /metrics: the fleet's totals, and the challenger's."""
        try:
            self.collector.totals = await self.totals()
            production = await asyncio.to_thread(self.registry.production)
            self.collector.challenge = (
                None if production is None else await self.challenge(production.version)
            )
        except Exception as exc:
            log.warning("serving counts unavailable: %s", str(exc) or type(exc).__name__)

    async def check(self) -> list[DriftScore]:
        """Score production's live window; a drifted signal emits its event (once a while)."""
        try:
            version = await asyncio.to_thread(self.registry.production_version)
        except NoProductionModel:
            return []
        reference = await self.reference(version)
        live = await self.window(version)
        scores = self._scores(reference, live)
        self.collector.drift = {(version, score.signal): score for score in scores}
        drifted = sum(score.drifted for score in scores)
        await self.client.set(
            self.keys.drifted, drifted, ex=max(60, round(4 * self.settings.monitor.check_s))
        )
        for score in scores:
            if score.drifted and score.psi is not None:
                await self._alert(version, score, live.n)
        return scores

    async def _alert(self, version: str, score: DriftScore, texts: int) -> None:
        key = f"{self.keys.prefix}:alerted:{version}:{score.signal}"
        every = self.settings.monitor.alert_every_s
        if not await self.client.set(key, "1", nx=True, ex=every):
            return
        assert score.psi is not None
        event = MonitorEvent(
            version=version,
            signal=score.signal,
            psi=score.psi,
            threshold=score.threshold,
            window_texts=texts,
            at=utcnow().isoformat(),
        )
        await self.client.xadd(
            self.keys.events,
            {"type": "drift", "data": event.model_dump_json()},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
        log.warning(
            "%s drifted on %s: PSI %.3f over %.3f in the last %d texts",
            version,
            score.signal,
            score.psi,
            score.threshold,
            texts,
            extra={"version": version},
        )

    def start(self) -> None:
        self.background.start()

    async def stop(self) -> None:
        await self.background.stop()


class ServingCollector(Collector):
    """The fleet's serving counts as Prometheus metrics, from the last snapshot read."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, str]] = {}
        self.drift: dict[tuple[str, str], DriftScore] = {}
        self.challenge: ChallengeReport | None = None

    def collect(self) -> Iterator[Metric]:
        predictions = CounterMetricFamily(
            "agnews_predictions",
            "Texts answered, by model version and label",
            labels=["version", "label"],
        )
        truncated = CounterMetricFamily(
            "agnews_predict_texts_truncated",
            "Texts cut to the model's length, by model version",
            labels=["version"],
        )
        histograms = {
            name: HistogramMetricFamily(f"agnews_prediction_{name}", doc, labels=["version"])
            for name, doc in (
                ("confidence", "The top score of each answer"),
                ("margin", "The top score less the second"),
                ("tokens", "Each text's length in tokens"),
            )
        }
        forward = HistogramMetricFamily(
            "agnews_predict_forward_seconds",
            "Forward passes by model version, form and how many texts each carried",
            labels=["version", "form", "texts"],
        )
        passes = CounterMetricFamily(
            "agnews_predict_forward_texts",
            "Texts through forward passes, by model version and form (over passes: texts per pass)",
            labels=["version", "form"],
        )
        for version, fields in self.totals.items():
            for name, count in fields.items():
                if name.startswith(LABEL):
                    predictions.add_metric([version, name.removeprefix(LABEL)], float(count))
            truncated.add_metric([version], float(fields.get("truncated", 0)))
            for name, edges in (
                ("confidence", CONFIDENCE_EDGES),
                ("margin", MARGIN_EDGES),
                ("tokens", TOKEN_EDGES),
            ):
                histograms[name].add_metric(
                    [version], _cumulative(fields, f"{name}:", edges), sum_value=None
                )
            for figures in forward_figures(fields):
                head = f"forward:{figures.form}:{figures.texts_per_pass}:"
                forward.add_metric(
                    [version, figures.form, figures.texts_per_pass],
                    _cumulative(fields, head, FORWARD_SECONDS_EDGES),
                    sum_value=float(fields.get(f"{head}seconds", 0.0)),
                )
            for form, texts in _texts_by_form(fields).items():
                passes.add_metric([version, form], texts)
        yield predictions
        yield truncated
        yield from histograms.values()
        yield forward
        yield passes
        drift_score = GaugeMetricFamily(
            "agnews_drift_score",
            "Population stability index of production's live window against its holdout",
            labels=["version", "signal"],
        )
        drifted = GaugeMetricFamily(
            "agnews_drift_exceeded",
            "1 where a signal's drift score is above its threshold",
            labels=["version", "signal"],
        )
        for (version, signal), score in self.drift.items():
            if score.psi is not None:
                drift_score.add_metric([version, signal], score.psi)
            drifted.add_metric([version, signal], float(score.drifted))
        yield drift_score
        yield drifted
        yield from challenge_metrics(self.challenge)


def challenge_metrics(report: ChallengeReport | None) -> Iterator[Metric]:
    labels = ["challenger", "production"]
    scored = CounterMetricFamily(
        "agnews_challenger_texts",
        "Sampled texts the challenger answered after production",
        labels=labels,
    )
    agreed = CounterMetricFamily(
        "agnews_challenger_agreed_texts",
        "Of those, the ones it labelled as production did",
        labels=labels,
    )
    failed = CounterMetricFamily(
        "agnews_challenger_failed_texts",
        "Sampled texts the challenger could not answer",
        labels=labels,
    )
    seconds = CounterMetricFamily(
        "agnews_challenger_forward_seconds",
        "Time in the challenger's forward passes",
        labels=labels,
    )
    if report is not None:
        pair = [report.challenger, report.production]
        scored.add_metric(pair, report.scored)
        agreed.add_metric(pair, report.agreed)
        failed.add_metric(pair, report.failed)
        seconds.add_metric(pair, (report.mean_seconds or 0.0) * report.passes)
    yield from (scored, agreed, failed, seconds)


def challenge_report(
    pointer: ChallengerPointer, production: str, fields: Mapping[str, str], kept: list[str]
) -> ChallengeReport:
    scored, agreed = int(fields.get("scored", 0)), int(fields.get("agreed", 0))
    passes, seconds = int(fields.get("passes", 0)), float(fields.get("seconds", 0.0))
    by_label = []
    for label in LABELS:
        label_scored = int(fields.get(f"scored:{label}", 0))
        label_agreed = int(fields.get(f"agreed:{label}", 0))
        by_label.append(
            LabelAgreement(
                label=label,
                scored=label_scored,
                agreed=label_agreed,
                rate=round(label_agreed / label_scored, 4) if label_scored else None,
            )
        )
    return ChallengeReport(
        challenger=pointer.version,
        production=production,
        share=pointer.share,
        named_at=pointer.named_at.isoformat(),
        scored=scored,
        agreed=agreed,
        agreement=round(agreed / scored, 4) if scored else None,
        by_label=by_label,
        profile=profile_of([fields], PROFILE),
        passes=passes,
        mean_seconds=round(seconds / passes, 6) if passes else None,
        failed=int(fields.get("failed", 0)),
        disagreements=[Disagreement.model_validate_json(record) for record in kept],
    )


def forward_figures(fields: Mapping[str, str]) -> list[FormFigures]:
    figures = []
    for name, value in fields.items():
        if name.startswith("forward:") and name.endswith(":passes"):
            _, form, size, _ = name.split(":")
            head = f"forward:{form}:{size}:"
            count = int(value)
            seconds = float(fields.get(f"{head}seconds", 0.0))
            buckets = [
                int(fields.get(f"{head}{index}", 0)) for index in range(len(FORWARD_SECONDS_EDGES))
            ]
            p50, p99 = (quantile(buckets, FORWARD_SECONDS_EDGES, q) for q in (0.5, 0.99))
            figures.append(
                FormFigures(
                    form=form,
                    texts_per_pass=size,
                    passes=count,
                    texts=int(fields.get(f"{head}texts", 0)),
                    mean_seconds=round(seconds / count, 6) if count else 0.0,
                    p50_seconds=None if p50 is None else round(p50, 6),
                    p99_seconds=None if p99 is None else round(p99, 6),
                )
            )
    return sorted(figures, key=lambda f: (f.form, f.texts_per_pass))


def _texts_by_form(fields: Mapping[str, str]) -> dict[str, float]:
    texts: dict[str, float] = {}
    for figures in forward_figures(fields):
        texts[figures.form] = texts.get(figures.form, 0.0) + figures.texts
    return texts


def _cumulative(
    fields: Mapping[str, str], prefix: str, edges: tuple[float, ...]
) -> list[tuple[str, float]]:
    running = 0.0
    buckets = []
    for index, edge in enumerate(edges):
        running += float(fields.get(f"{prefix}{index}", 0))
        buckets.append(("+Inf" if edge == float("inf") else str(edge), running))
    if buckets[-1][0] != "+Inf":
        buckets.append(("+Inf", running))
    return buckets
