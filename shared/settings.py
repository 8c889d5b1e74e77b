"""One Settings object in groups; each component is given the group it reads.

Every field keeps the flat name the environment knows: `AGNEWS_REDIS_URL` sets `settings.redis.url`,
and `Settings(redis_url=...)` does the same in code. docs/settings.md lists them all
(`python -m shared.settings --markdown` writes it); docs/decisions.md says why the defaults are
what they are.
"""

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared.contracts.keys import ApiKey, parse_api_keys
from shared.contracts.serving import Form, serving_form_name
from shared.contracts.training import PACKAGED_BASE_MODEL, PROFILES, ProfileName, TrainConfig

ENV_PREFIX = "AGNEWS_"
QueueName = Literal["predict", "train", "evaluate"]


def _comma_separated(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Group(BaseModel):
    """Settings that one part of the system reads; each field's alias is its flat name."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True)

    title: ClassVar[str]

    @classmethod
    def flat_names(cls) -> dict[str, str]:
        """{flat name: field name}."""
        return {info.alias or name: name for name, info in cls.model_fields.items()}


class RedisSettings(Group):
    title = "Redis: job store, event streams and the Celery broker"

    url: str = Field(default="redis://127.0.0.1:6379/0", alias="redis_url")
    key_prefix: str = Field(default="agnews", description="prefix of every key the system owns")
    timeout_s: float = Field(default=5.0, gt=0, alias="redis_timeout_s")
    retries: int = Field(
        default=6,
        ge=0,
        alias="redis_retries",
        description="tries of a command that lost its connection, backing off 0.1 s up to 2 s",
    )
    health_check_s: int = Field(
        default=10, ge=0, alias="redis_health_check_s", description="idle connections are checked"
    )
    max_connections: int = Field(default=64, ge=1, alias="redis_max_connections")


class StorageSettings(Group):
    title = "S3 or any S3-compatible store"

    endpoint_url: str | None = Field(default=None, alias="s3_endpoint_url")
    public_endpoint_url: str | None = Field(
        default=None,
        alias="s3_public_endpoint_url",
        description="the endpoint browsers reach for presigned uploads, where it differs",
    )
    region: str = Field(default="us-east-1", alias="s3_region")
    access_key_id: str | None = Field(default=None, alias="s3_access_key_id")
    secret_access_key: SecretStr | None = Field(default=None, alias="s3_secret_access_key")
    bucket: str = "agnews"
    incoming_prefix: str = Field(default="incoming/", description="uploads here start pipelines")
    datasets_prefix: str = "datasets/"
    models_prefix: str = "models/"
    checkpoints_prefix: str = "checkpoints/"
    holdout_prefix: str = Field(default="holdout/", description="the pinned promotion holdout")


class JobSettings(Group):
    title = "Jobs and their event streams"

    ttl_s: int = Field(
        default=7 * 24 * 3600, ge=1, alias="job_ttl_s", description="an ended job is kept this long"
    )
    event_stream_maxlen: int = Field(default=10_000, ge=1)


class ReaperSettings(Group):
    title = "No job stuck: heartbeats, redelivery and timeouts"

    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_timeout_s: float = Field(
        default=60.0, gt=0, description="a running job's task is sent again past this"
    )
    max_deliveries: int = Field(default=3, ge=1, description="then the job fails: worker lost")
    interval_s: float = Field(default=5.0, gt=0, alias="reaper_interval_s")
    predict_redeliver_s: float = Field(default=20.0, gt=0)
    queued_timeout_s: float = Field(default=24 * 3600.0, gt=0)
    predict_job_timeout_s: float = Field(default=300.0, gt=0)


class BrokerSettings(Group):
    title = "The Celery broker: acknowledgement and redelivery per queue"

    train_visibility_timeout_s: int = Field(default=6 * 3600, ge=1)
    evaluate_visibility_timeout_s: int = Field(default=3600, ge=1)
    predict_visibility_timeout_s: int = Field(default=15, ge=1)
    restore_interval_s: float = Field(default=2.0, gt=0)
    worker_queue: QueueName | None = Field(
        default=None, description="the queue this worker consumes (`python -m workers QUEUE`)"
    )

    def visibility_timeout_s(self, queue: str | None) -> int:
        timeouts = {
            "predict": self.predict_visibility_timeout_s,
            "evaluate": self.evaluate_visibility_timeout_s,
        }
        return timeouts.get(queue or "train", self.train_visibility_timeout_s)


class ListenerSettings(Group):
    title = "The S3-event listener"

    sqs_queue_url: str | None = Field(default=None, description="the bucket's event queue on AWS")
    sqs_wait_time_s: int = Field(default=20, ge=0, le=20)
    sqs_batch_size: int = Field(default=10, ge=1, le=10)
    host: str = Field(default="127.0.0.1", alias="listener_host")
    port: int = Field(default=8090, alias="listener_port")
    token: SecretStr | None = Field(
        default=None,
        alias="listener_token",
        description="the bearer token the local store's webhook sends (the stack makes one)",
    )
    backoff_max_s: float = Field(default=30.0, gt=0, alias="listener_backoff_max_s")
    dedupe_ttl_s: int = Field(
        default=14 * 24 * 3600,
        ge=1,
        alias="trigger_dedupe_ttl_s",
        description="deliveries of one object version are remembered this long",
    )
    lease_s: float = Field(default=30.0, gt=0, alias="trigger_lease_s")
    scan_interval_s: float = Field(default=300.0, gt=0, alias="listener_scan_interval_s")
    scan_max_age_s: float = Field(default=6 * 24 * 3600.0, gt=0, alias="listener_scan_max_age_s")


class BacklogSettings(Group):
    title = "The queue-backlog exporter (AWS)"

    metrics_namespace: str = "AGNEWS"
    groups: dict[str, str] = Field(
        default_factory=dict,
        alias="backlog_groups",
        description="a queue's Auto Scaling group, by queue (JSON)",
    )
    interval_s: float = Field(default=60.0, gt=0, alias="backlog_interval_s")

    @field_validator("groups", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value


class GatewaySettings(Group):
    title = "The gateway's HTTP server"

    host: str = Field(default="127.0.0.1", alias="http_host")
    port: int = Field(default=8080, alias="http_port")
    shutdown_grace_s: int = Field(default=5, ge=0, alias="http_shutdown_grace_s")
    frontend_dir: Path = Path(__file__).resolve().parent.parent / "frontend"
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    predict_wait_s: float = Field(
        default=10.0, ge=0, description="POST /v1/predict waits this long, then answers 202"
    )
    predict_jobs_per_message: int = Field(default=8, ge=1)
    presign_expiry_s: int = Field(default=900, ge=1)
    cors_origins: list[str] = Field(
        default_factory=list, description="other origins allowed to call the API from a browser"
    )
    trusted_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description="Host headers answered; `*`: any",
    )
    probe_timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("cors_origins", "trusted_hosts", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _comma_separated(value)


class LimitSettings(Group):
    title = "What one request or upload may hold"

    max_body_bytes: int = Field(default=1_000_000, ge=1)
    max_texts: int = Field(default=256, ge=1)
    max_text_chars: int = Field(default=20_000, ge=1)
    upload_max_bytes: int = Field(default=1024**3, ge=1)


class AccessSettings(Group):
    title = "Keys, sessions and rate limits"

    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="JSON list of {name, sha256, scopes}; empty: open on loopback only",
    )
    allow_open: bool = False
    session_secret: SecretStr | None = None
    session_ttl_s: int = Field(default=12 * 3600, ge=60)
    cookie_secure: bool = False
    rate_predict_per_s: float = Field(default=500.0, gt=0)
    rate_predict_burst: int = Field(default=1000, ge=1)
    rate_jobs_per_s: float = Field(default=0.5, gt=0)
    rate_jobs_burst: int = Field(default=20, ge=1)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        return parse_api_keys(value)


class ArchiveSettings(Group):
    title = "Dataset archives: what is unpacked and the rules a dataset must pass"

    max_uncompressed_bytes: int = Field(
        default=2 * 1024**3, ge=1, alias="archive_max_uncompressed_bytes"
    )
    max_ratio: float = Field(default=200.0, gt=0, alias="archive_max_ratio")
    max_members: int = Field(default=100, ge=1, alias="archive_max_members")
    max_bad_rows: int = Field(default=10, ge=0)
    max_bad_row_fraction: float = Field(default=0.001, ge=0, le=1)
    min_train_rows: int = Field(default=100, ge=1)
    min_class_rows: int = Field(default=10, ge=1)
    max_class_imbalance: float = Field(default=3.0, ge=1)
    report_max_problems: int = Field(default=100, ge=1)
    ingest_memory_budget_bytes: int = Field(default=512 * 1024**2, gt=0)
    max_test_in_train_fraction: float = Field(default=0.5, gt=0, le=1)
    holdout_key: str | None = Field(
        default=None, description="the promotion holdout's CSV; unset: the first dataset's test"
    )
    holdout_max_overlap_fraction: float = Field(default=0.01, ge=0, le=1)


class TrainingSettings(Group):
    title = "Training"

    base_model: str = PACKAGED_BASE_MODEL
    profile: ProfileName = Field(default="quick", alias="training_profile")
    pipeline_max_steps: int | None = Field(default=None, ge=1)
    seed: int = 42
    torch_threads: int = Field(default=0, ge=0, description="0: one per CPU core")
    base_model_allowlist: list[str] = Field(default_factory=list)
    hf_offline: bool = Field(default=False, description="never reach the Hugging Face hub")
    progress_interval_s: float = Field(default=2.0, ge=0)
    checkpoint_every_steps: int = Field(default=500, ge=1)
    checkpoint_interval_s: float = Field(default=300.0, gt=0)

    @field_validator("base_model_allowlist", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _comma_separated(value)


class ServingSettings(Group):
    title = "Serving: predict workers and inference"

    threads: int = Field(default=1, ge=1, alias="predict_threads")
    max_batch: int = Field(default=64, ge=1, alias="predict_max_batch")
    max_wait_ms: float = Field(default=2.0, ge=0, alias="predict_max_wait_ms")
    prefetch: int = Field(default=128, ge=1, alias="predict_prefetch")
    forward_batch: int = Field(
        default=8, ge=1, description="texts per forward call outside predict workers"
    )
    worker_forward_batch: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        default="auto", alias="serving_forward_batch"
    )
    form: Literal["auto"] | Form = Field(default="auto", alias="serving_form")
    max_accuracy_drop_pts: float = Field(default=0.3, ge=0, alias="serving_max_accuracy_drop_pts")
    timing_s: float = Field(default=3.0, gt=0, alias="serving_timing_s")
    sample_texts: int = Field(default=32, ge=1, alias="serving_sample_texts")
    model_poll_s: float = Field(default=2.0, gt=0)
    model_retry_s: float = Field(default=60.0, gt=0)
    first_load_wait_s: float = Field(default=120.0, gt=0, alias="predict_first_load_wait_s")
    blend: bool = Field(default=True, alias="serve_blend")

    @field_validator("form", mode="before")
    @classmethod
    def _form(cls, value: object) -> object:
        return serving_form_name(value) if isinstance(value, str) else value


class StackSettings(Group):
    title = "The local supervisor (`make up`)"

    restart_max: int = Field(default=5, ge=1)
    restart_window_s: float = Field(default=60.0, gt=0)
    restart_backoff_s: float = Field(default=1.0, ge=0)
    restart_backoff_max_s: float = Field(default=30.0, ge=0)


class TrackingSettings(Group):
    title = "Experiment tracking (MLflow, optional)"

    uri: str | None = Field(default=None, alias="mlflow_tracking_uri")
    experiment: str = Field(default="agnews", alias="mlflow_experiment")
    probe_timeout_s: float = Field(default=5.0, gt=0, alias="mlflow_probe_timeout_s")


class ClientSettings(Group):
    title = "The terminal client (`agnews`)"

    gateway_url: str = "http://127.0.0.1:8080"
    api_key: str | None = None


class RunSettings(Group):
    title = "Every process"

    data_dir: Path = Field(default=Path(".agnews"), description="local state, caches and logs")
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, else JSON lines"
    )


class _FlatEnvironment(PydanticBaseSettingsSource):
    """AGNEWS_<FLAT NAME> variables, by flat name (case-insensitive, as pydantic-settings)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {name.upper(): value for name, value in os.environ.items()}
        return {
            flat: environ[f"{ENV_PREFIX}{flat.upper()}"]
            for flat in Settings.flat_names()
            if f"{ENV_PREFIX}{flat.upper()}" in environ
        }


class Settings(BaseSettings):
    """Every knob of the system, in groups; each is overridable by its AGNEWS_ variable."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    redis: RedisSettings = RedisSettings()
    storage: StorageSettings = StorageSettings()
    jobs: JobSettings = JobSettings()
    reaper: ReaperSettings = ReaperSettings()
    broker: BrokerSettings = BrokerSettings()
    listener: ListenerSettings = ListenerSettings()
    backlog: BacklogSettings = BacklogSettings()
    gateway: GatewaySettings = GatewaySettings()
    limits: LimitSettings = LimitSettings()
    access: AccessSettings = AccessSettings()
    archive: ArchiveSettings = ArchiveSettings()
    training: TrainingSettings = TrainingSettings()
    serving: ServingSettings = ServingSettings()
    stack: StackSettings = StackSettings()
    tracking: TrackingSettings = TrackingSettings()
    client: ClientSettings = ClientSettings()
    run: RunSettings = RunSettings()

    @classmethod
    def groups(cls) -> dict[str, type[Group]]:
        return {
            name: info.annotation
            for name, info in cls.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, Group)
        }

    @classmethod
    def flat_names(cls) -> dict[str, tuple[str, str]]:
        """{flat name: (group, field)} for every setting."""
        return {
            flat: (group, name)
            for group, model in cls.groups().items()
            for flat, name in model.flat_names().items()
        }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvironment(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _grouped(cls, data: Any) -> Any:
        """Flat names (from the environment or in code) go to their groups."""
        if not isinstance(data, dict):
            return data
        names = cls.flat_names()
        grouped: dict[str, Any] = {}
        for key, value in data.items():
            if key in names:
                group, _ = names[key]
                current = grouped.setdefault(group, {})
                if not isinstance(current, dict):
                    raise ValueError(f"{key} given beside a whole {group} group")
                current[key] = value
            elif key in grouped:
                raise ValueError(f"{key} given beside its group's fields")
            else:
                grouped[key] = value
        return grouped

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (secrets as SecretStr)."""
        return {
            flat: getattr(getattr(self, group), name)
            for flat, (group, name) in self.flat_names().items()
        }

    def replace(self, **changes: Any) -> "Settings":
        """A copy with settings changed by flat name, validated like the environment's."""
        return Settings.model_validate({**self.flat(), **changes})

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """As pydantic's, for whole groups only: a setting changes through `replace`."""
        strays = set(update or {}) - set(self.groups())
        if strays:
            raise TypeError(f"model_copy updates groups; change {sorted(strays)} with replace()")
        return super().model_copy(update=update, deep=deep)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def config_for(
    training: TrainingSettings,
    profile: str | None = None,
    *,
    base_model: str | None = None,
    max_steps: int | None = None,
) -> TrainConfig:
    """A profile's training config, on the configured base model and seed."""
    return PROFILES[profile or training.profile].model_copy(
        update={
            "base_model": base_model or training.base_model,
            "seed": training.seed,
            "max_steps": max_steps,
        }
    )
