"""What the endpoints share: settings, job store, event hub, Celery, S3, registry, metrics."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from botocore.config import Config
from celery import Celery
from starlette.requests import Request

from gateway.admission import PredictAdmission
from gateway.answers import PredictAnswers
from gateway.cookies import SessionSigner
from gateway.epochs import SessionEpochs
from gateway.hub import EventHub, HubTuning
from gateway.keyring import Keyring
from gateway.metrics import Metrics, QueueProbe
from gateway.monitor import Monitor
from gateway.ratelimit import RateLimits
from gateway.sending import PredictSender
from shared.broker import make_celery, predict_message, send_call
from shared.contracts.jobs import TaskCall
from shared.contracts.stages import PREDICT, ROUTES
from shared.jobstore import AsyncJobStore, JobStore, Message
from shared.model_mirror import mirrored
from shared.reaper import Reaper
from shared.redis_clients import async_client, async_pooled_client
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = object


@dataclass
class Services:
    settings: Settings
    store: AsyncJobStore
    hub: EventHub
    answers: PredictAnswers
    admission: PredictAdmission
    celery: Celery
    s3: S3Client
    s3_public: S3Client
    s3_probe: S3Client
    registry: ModelRegistry
    metrics: Metrics
    queues: QueueProbe
    keyring: Keyring
    sessions: SessionSigner
    limits: RateLimits
    reaper: Reaper
    predicts: PredictSender
    epochs: SessionEpochs
    monitor: Monitor

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        """Builds every client without connecting: the gateway starts while Redis or S3 are down."""
        store = AsyncJobStore(
            async_pooled_client(settings.redis), settings.redis.key_prefix, settings.jobs
        )
        tuning = HubTuning()
        reader = async_client(
            settings.redis,
            socket_timeout_s=tuning.block_ms / 1000 + settings.redis.timeout_s,
            max_connections=tuning.readers + 2,
        )
        celery = gateway_celery(settings)
        s3 = s3_client(settings.storage)
        probe = Config(
            connect_timeout=settings.gateway.probe_timeout_s,
            read_timeout=settings.gateway.probe_timeout_s,
            retries={"max_attempts": 1, "mode": "standard"},
        )
        metrics = Metrics()
        registry = mirrored(ModelRegistry(s3, settings.storage), settings.tracking)
        monitor = Monitor(store.redis, registry, settings)
        monitor.register(metrics.registry)
        return cls(
            settings=settings,
            store=store,
            admission=PredictAdmission(store, settings, metrics),
            hub=EventHub(reader, store, tuning),
            answers=PredictAnswers(reader, store, tuning),
            celery=celery,
            s3=s3,
            s3_public=s3_client(settings.storage, public=True),
            s3_probe=s3_client(settings.storage, overrides=probe),
            registry=registry,
            metrics=metrics,
            queues=QueueProbe(celery, settings.gateway.probe_timeout_s),
            keyring=Keyring(settings.access.api_keys),
            sessions=SessionSigner.from_settings(settings.access),
            limits=RateLimits(settings.access),
            reaper=_reaper(settings, celery),
            predicts=PredictSender(
                store,
                lambda job_ids: Message(ROUTES[PREDICT], predict_message(celery, job_ids)),
                settings.gateway.predict_jobs_per_message,
            ),
            epochs=SessionEpochs(
                store.redis, settings.redis.key_prefix, settings.access.session_epoch_cache_s
            ),
            monitor=monitor,
        )

    async def close(self) -> None:
        await self.hub.stop()
        await self.answers.stop()
        await self.admission.stop()
        await self.monitor.stop()
        await self.store.redis.aclose()
        await self.hub.client.aclose()


def gateway_celery(settings: Settings) -> Celery:
    """A sender whose every try fails fast while the broker is down, rather than retrying for
    seconds in a thread (jobs.send_first_task waits between tries without one)."""
    celery = make_celery(settings, name="agnews-gateway")
    options = {**celery.conf.broker_transport_options, "max_retries": 0}
    celery.conf.broker_transport_options = options
    return celery


def _reaper(settings: Settings, celery: Celery) -> Reaper:
    """The reaper runs in a thread of its own, with a synchronous client of its own."""

    def send(job_id: str, call: TaskCall) -> None:
        send_call(celery, job_id, call)

    return Reaper(JobStore.from_settings(settings), send, settings.reaper)


def services(request: Request) -> Services:
    return cast(Services, request.app.state.services)
