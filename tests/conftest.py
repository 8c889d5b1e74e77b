import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.settings import Settings
from shared.storage import s3_client
from testkit.servers import mlflow_server, moto_server, redis_server

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One MLflow tracking server for the session's tests that use one."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture
def settings(redis_url: str, s3_endpoint: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own Redis database keys and its own bucket."""
    bucket = f"test-{os.urandom(4).hex()}"
    config = Settings(
        redis_url=redis_url,
        key_prefix=f"t{os.urandom(4).hex()}",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        bucket=bucket,
        data_dir=tmp_path / "data",
        serving_timing_s=0.01,
    )
    s3_client(config.storage).create_bucket(Bucket=bucket)
    return config


@pytest.fixture
def redis_client(settings: Settings) -> Iterator["redis.Redis[str]"]:
    client: redis.Redis[str] = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    yield client
    client.close()
