"""One Settings object in groups; each component is given the group it reads.

Every field keeps the flat name the environment knows: `AGNEWS_REDIS_URL` sets `settings.redis.url`,
and `Settings(redis_url=...)` does the same in code. docs/settings.md lists them all
(`python -m shared.settings --markdown` writes it); docs/decisions.md says why the defaults are
what they are.
"""

import ipaddress
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
from shared.contracts.monitor import Signal
from shared.contracts.serving import Form, serving_form_name
from shared.contracts.training import (
    DISTILLATIONS,
    PACKAGED_BASE_MODEL,
    PROFILES,
    Distillation,
    ProfileName,
    TrainConfig,
)
from shared.hub import pinned_entry

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

    url: str = Field("redis://127.0.0.1:6379/0", alias="redis_url", description="the server")
    key_prefix: str = Field("agnews", description="prefix of every key the system writes")
    timeout_s: float = Field(5.0, gt=0, alias="redis_timeout_s", description="socket timeout")
    retries: int = Field(
        6,
        ge=0,
        alias="redis_retries",
        description="tries of a command whose connection was lost, with a doubling backoff "
        "(0.1 s up to 2 s, about 5 s in all): a Redis restart costs no request",
    )
    health_check_s: int = Field(
        10,
        ge=0,
        alias="redis_health_check_s",
        description="a connection idle this long is checked before use",
    )
    max_connections: int = Field(
        64, ge=1, alias="redis_max_connections", description="the gateway's pool; more wait"
    )


class StorageSettings(Group):
    title = "S3 or any S3-compatible store"

    endpoint_url: str | None = Field(
        None, alias="s3_endpoint_url", description="unset: AWS (the local stack: its store)"
    )
    public_endpoint_url: str | None = Field(
        None,
        alias="s3_public_endpoint_url",
        description="the endpoint browsers reach for presigned uploads, where it differs",
    )
    region: str = Field("us-east-1", alias="s3_region", description="the region of the bucket")
    access_key_id: str | None = Field(
        None, alias="s3_access_key_id", description="unset: the credentials boto3 finds"
    )
    secret_access_key: SecretStr | None = Field(None, alias="s3_secret_access_key")
    bucket: str = Field("agnews", description="archives, datasets, models and checkpoints")
    incoming_prefix: str = Field("incoming/", description="an archive.zip here starts a pipeline")
    datasets_prefix: str = Field("datasets/", description="accepted datasets, by sha256")
    models_prefix: str = Field("models/", description="registered versions and production.json")
    checkpoints_prefix: str = Field("checkpoints/", description="training checkpoints, by job")
    holdout_prefix: str = Field("holdout/", description="the pinned promotion holdout")
    predictions_prefix: str = Field("predictions/", description="batch jobs' output files, by job")
    feedback_prefix: str = Field(
        "feedback/",
        description="users' corrections and confirmations, one object per cleaned text per day "
        "(training data: no lifecycle rule deletes them)",
    )


class JobSettings(Group):
    title = "Jobs and their event streams"

    ttl_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        alias="job_ttl_s",
        description="an ended train, evaluate or pipeline job and its events are kept this long",
    )
    event_stream_maxlen: int = Field(
        2_000, ge=1, description="events kept per job, the newest (about)"
    )
    predict_ttl_s: int = Field(
        600,
        ge=1,
        alias="predict_job_ttl_s",
        description="a predict job lives this long from its creation; answered, it keeps its "
        "answer and lets go of its texts",
    )
    answers_maxlen: int = Field(
        2_000,
        ge=100,
        alias="predict_answers_maxlen",
        description="predict answers the gateways' shared stream keeps (about); waiting "
        "requests are woken by it",
    )
    index_sweep: int = Field(
        500,
        ge=1,
        alias="job_index_sweep",
        description="index entries the reaper checks per round for jobs that have expired",
    )


class ReaperSettings(Group):
    title = "No job stuck: heartbeats, redelivery and timeouts"

    heartbeat_interval_s: float = Field(10.0, gt=0, description="a worker beats for its job")
    heartbeat_timeout_s: float = Field(
        60.0, gt=0, description="a running job's task is sent again once its beat is this old"
    )
    max_deliveries: int = Field(
        3, ge=1, description="then the job fails with 'worker lost N times'"
    )
    interval_s: float = Field(
        5.0, gt=0, alias="reaper_interval_s", description="the reaper's round, in the gateway"
    )
    predict_redeliver_s: float = Field(
        20.0, gt=0, description="an unanswered predict job is sent again"
    )
    queued_timeout_s: float = Field(
        24 * 3600.0, gt=0, description="a job no worker took fails, naming its queue"
    )
    predict_job_timeout_s: float = Field(
        300.0, gt=0, description="a predict job not answered by then fails"
    )


class BrokerSettings(Group):
    title = "The Celery broker: redelivery of unacknowledged tasks, per queue"

    train_visibility_timeout_s: int = Field(
        6 * 3600, ge=1, description="a train task held by a vanished worker returns after this"
    )
    evaluate_visibility_timeout_s: int = Field(3600, ge=1, description="the same, evaluate")
    predict_visibility_timeout_s: int = Field(15, ge=1, description="the same, predict")
    restore_interval_s: float = Field(
        2.0, gt=0, description="how often a worker sweeps for messages to restore"
    )
    worker_queue: QueueName | None = Field(
        None, description="the queue this worker consumes (`python -m workers QUEUE` sets it)"
    )

    def visibility_timeout_s(self, queue: str | None) -> int:
        timeouts = {
            "predict": self.predict_visibility_timeout_s,
            "evaluate": self.evaluate_visibility_timeout_s,
        }
        return timeouts.get(queue or "train", self.train_visibility_timeout_s)


class ListenerSettings(Group):
    title = "The S3-event listener"

    sqs_queue_url: str | None = Field(None, description="the bucket's event queue on AWS")
    sqs_wait_time_s: int = Field(20, ge=0, le=20, description="SQS long polling")
    sqs_batch_size: int = Field(10, ge=1, le=10, description="messages per SQS receive")
    host: str = Field("127.0.0.1", alias="listener_host", description="the webhook's address")
    port: int = Field(8090, alias="listener_port", description="the webhook's port")
    token: SecretStr | None = Field(
        None,
        alias="listener_token",
        description="the bearer token the local store's webhook sends (the stack makes one)",
    )
    backoff_max_s: float = Field(
        30.0, gt=0, alias="listener_backoff_max_s", description="longest wait between retries"
    )
    dedupe_ttl_s: int = Field(
        14 * 24 * 3600,
        ge=1,
        alias="trigger_dedupe_ttl_s",
        description="deliveries of one object version are remembered this long (SQS: 14 days)",
    )
    lease_s: float = Field(
        30.0, gt=0, alias="trigger_lease_s", description="a delivery being handled holds it"
    )
    scan_interval_s: float = Field(
        300.0,
        gt=0,
        alias="listener_scan_interval_s",
        description="incoming/ is scanned for archives no pipeline was started for",
    )
    scan_max_age_s: float = Field(
        6 * 24 * 3600.0,
        gt=0,
        alias="listener_scan_max_age_s",
        description="the scan starts pipelines for objects no older than this",
    )
    janitor_interval_s: float | None = Field(
        None,
        gt=0,
        alias="janitor_interval_s",
        description="where the store has no lifecycle rules (the local stack): how often "
        "finished upload tickets, archives past incoming_retention_s, ended jobs' checkpoints "
        "and batch outputs past predictions_retention_s are deleted; unset: never (AWS: the "
        "bucket's rules do it)",
    )
    incoming_retention_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        alias="incoming_retention_s",
        description="an upload under incoming/ is kept this long (its dataset is under datasets/)",
    )
    predictions_retention_s: float = Field(
        30 * 24 * 3600.0,
        gt=0,
        alias="predictions_retention_s",
        description="a batch job's files under predictions/ are kept this long, for its owner "
        "to download (AWS: data.yaml PredictionsDays)",
    )

    @model_validator(mode="after")
    def _uploads_outlive_the_scan(self) -> "ListenerSettings":
        if self.incoming_retention_s <= self.scan_max_age_s:
            raise ValueError(
                "incoming_retention_s must exceed listener_scan_max_age_s: the scan must never "
                "look for uploads the janitor may have deleted"
            )
        return self


class BacklogSettings(Group):
    title = "The queue-backlog exporter (AWS)"

    metrics_namespace: str = Field("AGNEWS", description="CloudWatch namespace")
    groups: dict[str, str] = Field(
        default_factory=dict,
        alias="backlog_groups",
        description="each queue's Auto Scaling group, as JSON: {queue: group}",
    )
    interval_s: float = Field(60.0, gt=0, alias="backlog_interval_s", description="its round")

    @field_validator("groups", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value


class GatewaySettings(Group):
    title = "The gateway"

    host: str = Field(
        "127.0.0.1",
        alias="http_host",
        description="where it listens; another address needs keys or AGNEWS_ALLOW_OPEN",
    )
    port: int = Field(8080, alias="http_port", description="its port")
    shutdown_grace_s: int = Field(
        5, ge=0, alias="http_shutdown_grace_s", description="requests in flight get this long"
    )
    keep_alive_s: int = Field(
        130,
        ge=1,
        alias="http_keep_alive_s",
        description="an idle client connection is kept this long; above the load balancer's "
        "idle timeout (120 s), so that it never sends on a connection the gateway is closing",
    )
    frontend_dir: Path = Field(
        Path(__file__).resolve().parent.parent / "frontend", description="the web app's files"
    )
    sse_heartbeat_s: float = Field(15.0, gt=0, description="an idle event stream's heartbeat")
    predict_wait_s: float = Field(
        10.0, ge=0, description="POST /v1/predict waits this long, then answers 202 with the job"
    )
    predict_jobs_per_message: int = Field(
        8, ge=1, description="most predict jobs named in one queue message"
    )
    shed_predictions: bool = Field(
        True,
        description="refuse a prediction at once (503, Retry-After) when the fleet could not "
        "answer it within predict_wait_s",
    )
    train_queue_max: int = Field(
        10, ge=1, description="train and pipeline jobs get 503 while this many trainings wait"
    )
    presign_expiry_s: int = Field(900, ge=1, description="an upload ticket's lifetime")
    cors_origins: list[str] = Field(
        default_factory=list, description="other origins allowed to call the API from a browser"
    )
    trusted_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description="Host headers answered (others: 400); `*`: any",
    )
    probe_timeout_s: float = Field(2.0, gt=0, description="/readyz's probes of Redis and S3")
    forwarded_allow_ips: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="addresses or networks of the proxies whose X-Forwarded-Proto and "
        "X-Forwarded-For are believed (fleet.yaml: the VPC's)",
    )
    internal_cidrs: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
        ],
        description="client networks that may read /metrics and /readyz (others: 403; "
        "fleet.yaml: the VPC's)",
    )
    hsts_max_age_s: int = Field(
        365 * 86400, ge=0, description="Strict-Transport-Security on https responses; 0: none"
    )

    @field_validator("forwarded_allow_ips", "internal_cidrs", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return _comma_separated(value)

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        return cls._ip_networks("AGNEWS_FORWARDED_ALLOW_IPS", value)

    @field_validator("internal_cidrs")
    @classmethod
    def _internal(cls, value: list[str]) -> list[str]:
        return cls._ip_networks("AGNEWS_INTERNAL_CIDRS", value)

    @staticmethod
    def _ip_networks(name: str, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{name}: {network!r} is not an IP address or network") from None
        return value

    @field_validator("cors_origins", "trusted_hosts", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _comma_separated(value)


class LimitSettings(Group):
    title = "What one request or upload may hold"

    max_body_bytes: int = Field(1_000_000, ge=1, description="larger request bodies: 413")
    max_texts: int = Field(256, ge=1, description="texts in one predict request")
    max_text_chars: int = Field(
        20_000, ge=1, description="a text's length, in requests and in datasets"
    )
    upload_max_bytes: int = Field(1024**3, ge=1, description="an archive's size")


class AccessSettings(Group):
    title = "Keys, sessions and rate limits"

    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="JSON list of {name, sha256, scopes}, or plain comma-separated keys (each an "
        "admin key); empty: open, on loopback only",
    )
    allow_open: bool = Field(False, description="serve with no keys beyond loopback anyway")
    session_secret: SecretStr | None = Field(
        None,
        description="session cookies' HMAC key; unset: one per process (sessions end when it "
        "restarts), and every gateway of a fleet needs the same one",
    )
    session_ttl_s: int = Field(12 * 3600, ge=60, description="a session cookie's lifetime")
    cookie_secure: bool = Field(False, description="mark the cookie Secure even over http")
    rate_predict_per_s: float = Field(
        500.0, gt=0, description="POST /v1/predict per key (per address when open), steady"
    )
    rate_predict_burst: int = Field(1000, ge=1, description="... and in a burst")
    rate_jobs_per_s: float = Field(0.5, gt=0, description="POST /v1/jobs per key, steady")
    rate_jobs_burst: int = Field(20, ge=1, description="... and in a burst")
    rate_reads_per_s: float = Field(
        20.0, gt=0, description="reads of jobs and models (GET /v1/jobs, /v1/models...), steady"
    )
    rate_reads_burst: int = Field(100, ge=1, description="... and in a burst")
    rate_feedback_per_s: float = Field(
        5.0, gt=0, description="POST /v1/feedback per key (each writes an S3 object), steady"
    )
    rate_feedback_burst: int = Field(50, ge=1, description="... and in a burst")
    allow_plain_keys: bool = Field(
        False,
        description="serve plain comma-separated AGNEWS_API_KEYS (each an admin key) anyway; "
        "otherwise the gateway refuses to start with them",
    )
    session_epoch_cache_s: float = Field(
        5.0,
        ge=0,
        description="how long a gateway keeps a key's session epoch: `python -m gateway.keys "
        "revoke NAME` ends its sessions within this",
    )
    max_streams_per_key: int = Field(
        20,
        ge=1,
        description="event streams (GET /v1/jobs/{id}/events) one key, or one address when open, "
        "holds open at once in each gateway process; more: 429",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        return parse_api_keys(value)


class ArchiveSettings(Group):
    title = "Dataset archives: what is unpacked, and the rules a dataset must pass"

    max_uncompressed_bytes: int = Field(
        2 * 1024**3, ge=1, alias="archive_max_uncompressed_bytes", description="unpacked, at most"
    )
    max_ratio: float = Field(
        200.0, gt=0, alias="archive_max_ratio", description="compression ratio, at most"
    )
    max_members: int = Field(100, ge=1, alias="archive_max_members", description="files in it")
    max_bad_rows: int = Field(10, ge=0, description="malformed rows tolerated ...")
    max_bad_row_fraction: float = Field(0.001, ge=0, le=1, description="... or this share")
    min_train_rows: int = Field(100, ge=1, description="usable rows train.csv must hold")
    min_class_rows: int = Field(10, ge=1, description="rows each class must have")
    max_class_imbalance: float = Field(3.0, ge=1, description="largest class over smallest")
    report_max_problems: int = Field(100, ge=1, description="problems a report lists")
    ingest_memory_budget_bytes: int = Field(
        512 * 1024**2, gt=0, description="what ingesting one archive may hold; larger: refused"
    )
    max_test_in_train_fraction: float = Field(
        0.5, gt=0, le=1, description="a test.csv this much inside its train.csv is refused"
    )
    holdout_key: str | None = Field(
        None,
        description="the promotion holdout, a CSV in the bucket; unset: the first accepted "
        "dataset's test.csv",
    )
    holdout_max_overlap_fraction: float = Field(
        0.01, ge=0, le=1, description="a train.csv holding more of the holdout is refused"
    )


class TrainingSettings(Group):
    title = "Training"

    base_model: str = Field(
        PACKAGED_BASE_MODEL, description="the packaged all-MiniLM-L6-v2, a hub id or a folder"
    )
    profile: ProfileName = Field(
        "quick", alias="training_profile", description="quick, full or distil (docs/training.md)"
    )
    teacher_model: str = Field(
        "all-mpnet-base-v2",
        description="a distil run's teacher: a folder, or one under {data_dir}/base-models/ "
        "(`agnews models fetch-base mpnet` installs all-mpnet-base-v2 there)",
    )
    pipeline_max_steps: int | None = Field(
        None, ge=1, description="the step limit of a pipeline job that names none"
    )
    seed: int = Field(42, description="of splits, batches and heads")
    torch_threads: int = Field(0, ge=0, description="in training and evaluation; 0: one per core")
    base_model_allowlist: list[str] = Field(
        default_factory=list,
        description="base models API jobs may name besides the packaged one and folders under "
        "the data directory: hub models pinned to a commit (`org/model@<40-hex commit>`) or "
        "absolute folder paths",
    )
    hf_offline: bool = Field(
        False, description="never reach the Hugging Face hub (`make up`: true)"
    )
    progress_interval_s: float = Field(2.0, ge=0, description="progress events, at most this often")
    checkpoint_every_steps: int = Field(500, ge=1, description="a checkpoint every N steps ...")
    checkpoint_interval_s: float = Field(300.0, gt=0, description="... and this often at least")

    @field_validator("base_model_allowlist", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _comma_separated(value)

    @field_validator("base_model_allowlist")
    @classmethod
    def _pinned(cls, value: list[str]) -> list[str]:
        return [pinned_entry(entry) for entry in value]


class ServingSettings(Group):
    title = "Serving: predict workers and inference"

    threads: int = Field(
        1, ge=1, alias="predict_threads", description="torch threads per predict worker process"
    )
    max_batch: int = Field(
        64, ge=1, alias="predict_max_batch", description="messages in one forward pass, at most"
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        alias="predict_max_wait_ms",
        description="waiting requests go this soon after the model comes free",
    )
    prefetch: int = Field(
        128, ge=1, alias="predict_prefetch", description="requests a worker holds unacknowledged"
    )
    forward_batch: int = Field(
        8, ge=1, description="texts per forward call outside predict workers"
    )
    worker_forward_batch: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto",
        alias="serving_forward_batch",
        description="texts per forward call in a predict worker; auto: timed at load",
    )
    form: Literal["auto"] | Form = Field(
        "auto",
        alias="serving_form",
        description="auto: the fastest allowed form, timed at load; or one form's name",
    )
    max_accuracy_drop_pts: float = Field(
        0.3,
        ge=0,
        alias="serving_max_accuracy_drop_pts",
        description="a form may serve this far below torch fp32 on the test rows",
    )
    timing_s: float = Field(
        3.0, gt=0, alias="serving_timing_s", description="a worker times the forms this long"
    )
    sample_texts: int = Field(
        32, ge=1, alias="serving_sample_texts", description="test texts kept for the timing"
    )
    model_poll_s: float = Field(2.0, gt=0, description="how often workers look for a new model")
    model_cache_versions: int = Field(
        3, ge=1, description="versions a worker keeps on disk, the one it serves among them"
    )
    model_retry_s: float = Field(60.0, gt=0, description="a model that failed to load, again")
    first_load_wait_s: float = Field(
        120.0,
        gt=0,
        alias="predict_first_load_wait_s",
        description="a starting worker takes requests once its model loads, or after this",
    )
    blend: bool = Field(
        True, alias="serve_blend", description="blend the linear member in, where there is one"
    )

    @field_validator("form", mode="before")
    @classmethod
    def _form(cls, value: object) -> object:
        return serving_form_name(value) if isinstance(value, str) else value


class MonitorSettings(Group):
    title = "Monitoring: what the served model answers, and drift against its holdout"

    enabled: bool = Field(
        True, alias="monitor_enabled", description="predict workers count what they answer"
    )
    flush_s: float = Field(
        5.0, gt=0, alias="monitor_flush_s", description="a worker adds its counts to Redis so often"
    )
    window_minutes: int = Field(
        60, ge=1, alias="monitor_window_minutes", description="the live window drift is scored on"
    )
    keep_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        alias="monitor_keep_s",
        description="a version's running totals are kept this long after its last answer",
    )
    min_texts: int = Field(
        500, ge=1, alias="monitor_min_texts", description="a window scores drift from this many"
    )
    check_s: float = Field(
        30.0, gt=0, alias="monitor_check_s", description="the gateway scores drift so often"
    )
    labels_psi: float = Field(
        0.2, gt=0, alias="drift_labels_psi", description="the label mix drifted above this PSI"
    )
    confidence_psi: float = Field(
        0.2, gt=0, alias="drift_confidence_psi", description="the top score's, above this"
    )
    margin_psi: float = Field(
        0.2, gt=0, alias="drift_margin_psi", description="the top two's margin's, above this"
    )
    tokens_psi: float = Field(
        0.2, gt=0, alias="drift_tokens_psi", description="the texts' length's, above this"
    )
    alert_every_s: int = Field(
        3600,
        ge=1,
        alias="drift_alert_every_s",
        description="a signal that stays drifted emits its monitor event again after this long",
    )
    challenger_queue_texts: int = Field(
        512,
        ge=1,
        description="sampled texts waiting for a worker's challenger, at most; more are skipped",
    )
    review_confidence: float = Field(
        0.6,
        gt=0,
        le=1,
        alias="review_confidence",
        description="an answer whose top score is below this joins its version's review sample "
        "(GET /v1/feedback/review)",
    )
    review_keep: int = Field(
        200,
        ge=0,
        alias="review_keep",
        description="the newest uncertain answers kept per version for review (each text's "
        "first 1,000 characters); 0: none",
    )
    feedback_retrain_after: int | None = Field(
        None,
        ge=1,
        alias="feedback_retrain_after",
        description="start a with_feedback pipeline by itself once this many texts have been "
        "given feedback since the last one it started; unset: never",
    )

    def thresholds(self) -> dict[Signal, float]:
        return {
            "labels": self.labels_psi,
            "confidence": self.confidence_psi,
            "margin": self.margin_psi,
            "tokens": self.tokens_psi,
        }


class BatchSettings(Group):
    title = "Batch prediction jobs: a file of texts through the predict fleet"

    chunk_texts: int = Field(
        32, ge=1, le=256, alias="batch_chunk_texts", description="texts per predict job it sends"
    )
    in_flight: int = Field(
        4,
        ge=1,
        alias="batch_in_flight",
        description="its predict jobs waiting or in a worker at once: interactive requests queue "
        "behind no more than this",
    )
    max_bytes: int = Field(
        64 * 1024**2, ge=1024, alias="batch_max_bytes", description="an input file, at most"
    )
    max_rows: int = Field(
        1_000_000, ge=1, alias="batch_max_rows", description="rows of an input file, at most"
    )
    chunk_timeout_s: float = Field(
        120.0,
        gt=0,
        alias="batch_chunk_timeout_s",
        description="a chunk unanswered this long is sent again (its first answer wins)",
    )


class StackSettings(Group):
    title = "The local supervisor (`make up`)"

    restart_max: int = Field(5, ge=1, description="exits within the window before it gives up")
    restart_window_s: float = Field(60.0, gt=0, description="the window")
    restart_backoff_s: float = Field(1.0, ge=0, description="first wait before a restart")
    restart_backoff_max_s: float = Field(30.0, ge=0, description="longest wait")
    log_max_bytes: int = Field(
        10 * 1024**2, ge=1024, description="a process's log rolls over at this size ..."
    )
    log_backups: int = Field(3, ge=0, description="... keeping this many older files")


class TrackingSettings(Group):
    title = "Experiment tracking (MLflow, optional)"

    uri: str | None = Field(
        None,
        alias="mlflow_tracking_uri",
        description="each registered model becomes a run there (and, on an HTTP server, a model "
        "version in its registry)",
    )
    experiment: str = Field("agnews", alias="mlflow_experiment", description="of those runs")
    registered_model: str = Field(
        "agnews",
        alias="mlflow_registered_model",
        description="the MLflow registered model the registry is mirrored to: each version a "
        "model version, `production` and `challenger` its aliases",
    )
    probe_timeout_s: float = Field(
        5.0,
        gt=0,
        alias="mlflow_probe_timeout_s",
        description="a tracking server slower to answer is skipped with a warning",
    )


class ClientSettings(Group):
    title = "The terminal client (`agnews`)"

    gateway_url: str = Field("http://127.0.0.1:8080", description="the gateway it talks to")
    api_key: str | None = Field(None, description="the key it sends")


class RunSettings(Group):
    title = "Every process"

    data_dir: Path = Field(Path(".agnews"), description="local state: data, caches and logs")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable lines on a terminal, else JSON lines"
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
    monitor: MonitorSettings = MonitorSettings()
    batch: BatchSettings = BatchSettings()
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

    @model_validator(mode="after")
    def _predict_jobs_end_before_they_expire(self) -> "Settings":
        if self.reaper.predict_job_timeout_s >= self.jobs.predict_ttl_s:
            raise ValueError(
                "predict_job_timeout_s must be below predict_job_ttl_s: a predict job no worker "
                "answered must fail before its record expires"
            )
        return self

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


def distillation_for(training: TrainingSettings, profile: str | None) -> Distillation | None:
    """How a profile distils, if it does: `distil`'s teacher, budget and phases."""
    return DISTILLATIONS.get(profile or training.profile)


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
