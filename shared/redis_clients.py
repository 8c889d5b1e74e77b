"""Every Redis client is made here, so that each role rides out a Redis restart the same way:
commands that lost their connection are tried again with a doubling backoff, idle connections are
checked before use, and no call waits on a dead socket past the timeout."""

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from shared.settings import RedisSettings

_RETRIED = [redis.ConnectionError, redis.TimeoutError]

# What every Redis server of the system is configured with: the local stack's, the tests', and
# the AWS parameter group (deploy/cloudformation/platform.yaml). A job's hash with fields up to
# 1 KiB (a prediction's answer) stays a listpack, half the memory of a hash table.
SERVER_CONFIG = {"hash-max-listpack-value": "1024", "maxmemory-policy": "noeviction"}


def server_arguments() -> list[str]:
    """SERVER_CONFIG as redis-server's command-line options."""
    return [part for name, value in SERVER_CONFIG.items() for part in (f"--{name}", value)]


def backoff() -> ExponentialWithJitterBackoff:
    """The wait between tries while Redis is away: doubling from 0.1 s up to 2 s, jittered."""
    return ExponentialWithJitterBackoff(base=0.1, cap=2.0)


def _options(settings: RedisSettings, socket_timeout_s: float | None) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "retry_on_error": _RETRIED,
        "health_check_interval": settings.health_check_s,
        "socket_timeout": socket_timeout_s or settings.timeout_s,
        "socket_connect_timeout": settings.timeout_s,
    }


def sync_client(settings: RedisSettings, *, socket_timeout_s: float | None = None) -> redis.Redis:
    """A client for threads and synchronous processes (workers, the listener, the reaper)."""
    return redis.Redis.from_url(
        settings.url,
        retry=Retry(backoff(), settings.retries),
        **_options(settings, socket_timeout_s),
    )


def async_client(
    settings: RedisSettings,
    *,
    socket_timeout_s: float | None = None,
    max_connections: int | None = None,
) -> redis.asyncio.Redis:
    """A client for an event loop; `socket_timeout_s` above the timeout for blocking reads."""
    return redis.asyncio.Redis.from_url(
        settings.url,
        retry=redis.asyncio.retry.Retry(backoff(), settings.retries),
        max_connections=max_connections,
        **_options(settings, socket_timeout_s),
    )


def async_pooled_client(settings: RedisSettings) -> redis.asyncio.Redis:
    """An event loop's client whose requests beyond `max_connections` wait for a connection
    (at most the timeout) rather than fail."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.timeout_s,
        retry=redis.asyncio.retry.Retry(backoff(), settings.retries),
        **_options(settings, None),
    )
    return redis.asyncio.Redis.from_pool(pool)


def text(value: bytes | str) -> str:
    """A reply from a client without decode_responses, as text."""
    return value.decode() if isinstance(value, bytes) else value


def text_fields(fields: dict[Any, Any]) -> dict[str, str]:
    """A hash read without decode_responses, as text."""
    return {text(name): text(value) for name, value in fields.items()}
