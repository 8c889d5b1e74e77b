"""Reads nobody could bound before: listing jobs and models is rate limited per caller, and the
registry reads each version's manifest once (a manifest never changes once written)."""

from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.registry import publish
from shared.registry import ModelRegistry
from shared.settings import Settings
from testkit.gateway import serve
from testkit.models import copy_as_new_version, tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def test_reads_of_jobs_and_models_are_rate_limited_per_caller(settings: Settings) -> None:
    config = settings.replace(rate_reads_burst=3, rate_reads_per_s=0.01)
    with serve(config) as running, httpx.Client(base_url=running.url) as http:
        paths = ["/v1/jobs", "/v1/models", "/v1/jobs?type=pipeline"]
        assert [http.get(path).status_code for path in paths] == [200, 200, 200]
        refused = http.get("/v1/models/production")
        assert refused.status_code == 429
        assert refused.json()["error"]["details"]["limit"] == "read"
        assert int(refused.headers["retry-after"]) >= 1
        assert http.get("/healthz").status_code == 200  # not a read of jobs or models


def test_the_registry_reads_each_manifest_once_and_sees_new_versions_at_once(
    settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    reads: list[str] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key", "").endswith("manifest.json"):
            reads.append(params["Key"])

    registry.s3.meta.events.register("provide-client-params.s3.GetObject", count)
    first = publish(registry, model_dir)
    reads.clear()  # publishing looks for the manifest it is about to write
    assert [info.version for info in registry.versions()] == [first.version]
    assert [info.version for info in registry.versions()] == [first.version]
    assert len(reads) == 1

    second = copy_as_new_version(model_dir, tmp_path / "second")
    publish(registry, tmp_path / "second")
    reads.clear()
    assert [info.version for info in registry.versions()] == [second.version, first.version]
    assert reads == [registry.key(second.version, "manifest.json")]
