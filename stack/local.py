"""The services of the local stack, built from one Settings object."""

import json
import os
import secrets
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from botocore.exceptions import ClientError
from pydantic import SecretStr
from pydantic_core import to_jsonable_python

from shared.redis_clients import server_arguments
from shared.settings import Settings
from shared.storage import WEBHOOK_PATH, s3_client
from stack.logfiles import LogLimits
from stack.processes import (
    RestartPolicy,
    Service,
    Supervisor,
    executable,
    http_ok,
    log_says,
    redis_ok,
)

LOCAL_JANITOR_INTERVAL_S = 3600.0
LOCAL_ENV = {
    "AGNEWS_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
    "AGNEWS_S3_ACCESS_KEY_ID": "agnews",
    "AGNEWS_S3_SECRET_ACCESS_KEY": "agnews-local-secret",
    "AGNEWS_DATA_DIR": ".agnews",
}


def local_settings() -> Settings:
    """Settings with the local stack's embedded defaults under whatever the environment sets."""
    for name, value in LOCAL_ENV.items():
        os.environ.setdefault(name, value)
    return Settings()


def _port(url: str, default: int) -> int:
    return urlparse(url).port or default


def redis_service(settings: Settings) -> Service:
    directory = (settings.run.data_dir / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return Service(
        name="redis",
        argv=[
            executable("redis-server"),
            "--port",
            str(_port(settings.redis.url, 6379)),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            *server_arguments(),
        ],
        ready=redis_ok(settings.redis.url),
    )


@dataclass(frozen=True)
class Webhook:
    """SeaweedFS's `notification.webhook`: how its filer delivers events to the listener.

    A delivery not answered 2xx is retried for about three minutes, so an upload made while the
    listener restarts still starts its pipeline.
    """

    endpoint: str
    bearer_token: str
    event_types: tuple[str, ...] = ("create", "update")
    timeout_seconds: int = 5
    max_retries: int = 10
    backoff_seconds: int = 1
    max_backoff_seconds: int = 30
    workers: int = 2
    buffer_size: int = 10_000

    @classmethod
    def to_listener(cls, settings: Settings) -> "Webhook":
        if settings.listener.token is None:
            raise ValueError("the local stack's webhook needs a listener_token")
        return cls(
            endpoint=f"http://127.0.0.1:{settings.listener.port}{WEBHOOK_PATH}",
            bearer_token=settings.listener.token.get_secret_value(),
        )

    def toml(self) -> str:
        # JSON strings, integers and arrays are TOML values too.
        values = [f"{name} = {json.dumps(value)}" for name, value in asdict(self).items()]
        return "\n".join(["[notification.webhook]", "enabled = true", *values, ""])


def s3_service(settings: Settings) -> Service:
    """SeaweedFS: a real, persistent S3 API on loopback."""
    if settings.storage.endpoint_url is None:
        raise ValueError("the local stack needs AGNEWS_S3_ENDPOINT_URL")
    directory = (settings.run.data_dir / "s3").resolve()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    # weed reads ./notification.toml: its filer posts every object written to the listener.
    (directory / "notification.toml").write_text(Webhook.to_listener(settings).toml())
    port = _port(settings.storage.endpoint_url, 8333)
    # Every port it opens is named: s3, then master, volume and filer, each http then grpc.
    return Service(
        name="s3",
        argv=[
            executable("weed"),
            "server",
            f"-dir={directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={port}",
            f"-s3.port.grpc={port + 1}",
            f"-master.port={port + 2}",
            f"-master.port.grpc={port + 3}",
            f"-volume.port={port + 4}",
            f"-volume.port.grpc={port + 5}",
            f"-filer.port={port + 6}",
            f"-filer.port.grpc={port + 7}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=1024",
        ],
        ready=http_ok(f"{settings.storage.endpoint_url}/"),
        env=_s3_admin_env(settings),
        cwd=directory,
        # On SIGTERM its filer waits 15 s for gRPC streams that never end (its own S3 API's
        # subscription); what it has stored is on disk already, as when compose kills it.
        stop_timeout_s=3.0,
    )


def _s3_admin_env(settings: Settings) -> dict[str, str]:
    """weed takes AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from its environment as its admin's
    keys: they must be the stack's, not whatever the calling shell has."""
    if not (settings.storage.access_key_id and settings.storage.secret_access_key):
        return {}
    return {
        "AWS_ACCESS_KEY_ID": settings.storage.access_key_id,
        "AWS_SECRET_ACCESS_KEY": settings.storage.secret_access_key.get_secret_value(),
    }


def listener_service(settings: Settings) -> Service:
    """Turns the S3 store's events into pipeline jobs; it starts first, to miss none."""
    return Service(
        name="listener",
        argv=[sys.executable, "-m", "workers.listener"],
        ready=http_ok(f"http://127.0.0.1:{settings.listener.port}/healthz"),
    )


def worker_service(
    settings: Settings, queue: str, concurrency: int = 1, instance: int = 1
) -> Service:
    """One worker process on a queue; instance 2, 3, ... are more beside the first."""
    name = f"worker-{queue}" if instance == 1 else f"worker-{queue}-{instance}"
    log = (settings.run.data_dir / "logs" / f"{name}.log").resolve()
    node = queue if instance == 1 else f"{queue}{instance}"
    return Service(
        name=name,
        argv=[
            sys.executable,
            "-m",
            "workers",
            queue,
            "--concurrency",
            str(concurrency),
            "-n",
            f"{node}@%h",
        ],
        ready=log_says(log, " ready."),
        start_timeout_s=120,
    )


def gateway_service(settings: Settings, port: int) -> Service:
    return Service(
        name="gateway",
        argv=[sys.executable, "-m", "gateway"],
        ready=http_ok(f"http://127.0.0.1:{port}/healthz"),
        env={"AGNEWS_HTTP_PORT": str(port)},
    )


def ensure_bucket(settings: Settings) -> None:
    client = s3_client(settings.storage)
    try:
        client.head_bucket(Bucket=settings.storage.bucket)
    except ClientError:
        client.create_bucket(Bucket=settings.storage.bucket)


def start_stack(
    settings: Settings,
    *,
    queues: tuple[str, ...] = ("predict", "train", "evaluate"),
    gateway_port: int = 8080,
    predict_workers: int = 1,
) -> Supervisor:
    settings = with_listener_token(settings)
    if "hf_offline" not in settings.training.model_fields_set:
        # The local stack, like the machines it is built on, reaches no model hub by default.
        settings = settings.replace(hf_offline=True)
    if "janitor_interval_s" not in settings.listener.model_fields_set:
        # Its store has no lifecycle rules: the listener keeps the bucket bounded instead.
        settings = settings.replace(janitor_interval_s=LOCAL_JANITOR_INTERVAL_S)
    log_dir = (settings.run.data_dir / "logs").resolve()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.update({f"AGNEWS_{k.upper()}": v for k, v in _settings_env(settings).items()})
    limits = LogLimits(settings.stack.log_max_bytes, settings.stack.log_backups)
    supervisor = Supervisor(log_dir, env, restart_policy(settings), limits)
    try:
        supervisor.start(redis_service(settings))
        # The listener is ready before the store writes anything, so it misses no event.
        supervisor.start_together([listener_service(settings), s3_service(settings)])
        ensure_bucket(settings)
        supervisor.start_together(
            [
                *(
                    worker_service(settings, queue, instance=instance)
                    for queue in queues
                    for instance in range(1, (predict_workers if queue == "predict" else 1) + 1)
                ),
                gateway_service(settings, gateway_port),
            ]
        )
    except BaseException:
        supervisor.stop()
        raise
    return supervisor


def restart_policy(settings: Settings) -> RestartPolicy:
    return RestartPolicy(
        max_restarts=settings.stack.restart_max,
        window_s=settings.stack.restart_window_s,
        backoff_s=settings.stack.restart_backoff_s,
        backoff_max_s=settings.stack.restart_backoff_max_s,
    )


def with_listener_token(settings: Settings) -> Settings:
    """The settings, with a fresh webhook token unless one is set."""
    if settings.listener.token is not None:
        return settings
    return settings.replace(listener_token=SecretStr(secrets.token_urlsafe(32)))


def _settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the environment variable a child process reads it from."""
    return {name: _env_value(value) for name, value in settings.flat().items() if value is not None}


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    if isinstance(value, list | dict):
        return json.dumps(to_jsonable_python(value))
    return str(value)
