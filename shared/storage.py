"""The S3 client factory: one place that knows endpoints, credentials and addressing."""

import re
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from shared.contracts.errors import InvalidRequest
from shared.settings import StorageSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

# Every dataset archive's name: an upload under the incoming prefix, and its copy under datasets/.
ARCHIVE_NAME = "archive.zip"
BATCHES_DIR = "batches/"
# Presigned upload tickets put their archive under incoming/tickets/{random}/archive.zip: one
# key per ticket, and one pipeline per key however often the ticket is used (the listener).
TICKETS_DIR = "tickets/"
_TICKET = re.compile(r"[0-9a-f]{32}/" + re.escape(ARCHIVE_NAME))


def ticket_key(storage: StorageSettings) -> str:
    return f"{storage.incoming_prefix}{TICKETS_DIR}{secrets.token_hex(16)}/{ARCHIVE_NAME}"


def batch_input_key(storage: StorageSettings, suffix: str) -> str:
    """Where an uploaded batch input lands: under incoming/ (its janitor clears it), in no
    archive.zip (no pipeline starts)."""
    return f"{storage.incoming_prefix}{BATCHES_DIR}{secrets.token_hex(16)}/input{suffix}"


def is_ticket_key(key: str, storage: StorageSettings) -> bool:
    prefix = f"{storage.incoming_prefix}{TICKETS_DIR}"
    return key.startswith(prefix) and _TICKET.fullmatch(key.removeprefix(prefix)) is not None


# Where the S3 store's (SeaweedFS filer's) webhook posts its events on the listener.
WEBHOOK_PATH = "/seaweedfs"

# What S3 and S3-compatible stores answer for a key that is not there, or not in any bucket.
_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})


def client_options(storage: StorageSettings, *, public: bool = False) -> dict[str, Any]:
    """Keyword arguments for a boto3 or aiobotocore client of any AWS service."""
    endpoint = storage.public_endpoint_url if public else None
    endpoint = endpoint or storage.endpoint_url
    options: dict[str, Any] = {"region_name": storage.region}
    if endpoint:
        options["endpoint_url"] = endpoint
    if storage.access_key_id and storage.secret_access_key:
        options["aws_access_key_id"] = storage.access_key_id
        options["aws_secret_access_key"] = storage.secret_access_key.get_secret_value()
    return options


def s3_client(
    storage: StorageSettings, *, public: bool = False, overrides: Config | None = None
) -> S3Client:
    """`overrides` replaces parts of the default config (short timeouts for probes)."""
    # Path-style addressing: S3-compatible stores on loopback have no per-bucket host names.
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if storage.endpoint_url else "auto"},
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    if overrides is not None:
        config = config.merge(overrides)
    return boto3.client("s3", config=config, **client_options(storage, public=public))


def parse_s3_url(url: str, storage: StorageSettings) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`, or of a bare key in the configured bucket."""
    if "://" not in url:
        return storage.bucket, url.lstrip("/")
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise InvalidRequest(f"{url!r} is not an s3://bucket/key URL", details={"url": url})
    return parsed.netloc, parsed.path.lstrip("/")


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    """Whether an S3 error means that the object (or its bucket) does not exist."""
    return error_code(exc) in _MISSING


def transient_s3_error(exc: BaseException) -> bool:
    """An S3 error worth trying again: the store unreachable or timing out, a 5xx, throttling;
    never a missing key or a refused request."""
    if isinstance(exc, BotoCoreError):
        return True
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout"}
    return False


# S3 away for a while (a restart, a network blip): an idempotent write is tried again with a
# doubling backoff for about 45 s, then its error is raised.
s3_retry = retry(
    retry=retry_if_exception(transient_s3_error),
    stop=stop_after_delay(45),
    wait=wait_exponential(multiplier=0.5, max=10),
    reraise=True,
)
