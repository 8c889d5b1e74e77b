"""Settings in groups: every AGNEWS_* name works as it did, in the environment and in code."""

import pytest
from pydantic import SecretStr, ValidationError

from shared.contracts.jobs import Job, JobType, PipelineParams, TrainParams, new_job_id
from shared.contracts.stages import (
    EVALUATE,
    INGEST,
    PREDICT,
    PROMOTE,
    ROUTES,
    TRAIN,
    chain,
    first_task,
    next_task,
)
from shared.settings import Settings
from shared.settings_reference import markdown
from testkit.archives import ROOT


def test_each_variable_sets_its_field_in_its_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGNEWS_REDIS_URL", "redis://elsewhere:6380/2")
    monkeypatch.setenv("AGNEWS_TRUSTED_HOSTS", "a.example, b.example")
    monkeypatch.setenv("AGNEWS_SERVE_BLEND", "false")
    monkeypatch.setenv("AGNEWS_SERVING_FORM", "int8")
    monkeypatch.setenv("AGNEWS_SERVING_FORWARD_BATCH", "4")
    monkeypatch.setenv("AGNEWS_BACKLOG_GROUPS", '{"predict": "group-p"}')
    monkeypatch.setenv("AGNEWS_API_KEYS", "plain-key")
    monkeypatch.setenv("agnews_bucket", "lower-case-name")
    settings = Settings()
    assert settings.redis.url == "redis://elsewhere:6380/2"
    assert settings.gateway.trusted_hosts == ["a.example", "b.example"]
    assert settings.serving.blend is False
    assert settings.serving.form == "torch-int8"
    assert settings.serving.worker_forward_batch == 4
    assert settings.backlog.groups == {"predict": "group-p"}
    assert [key.name for key in settings.access.api_keys] == ["key1"]
    assert settings.storage.bucket == "lower-case-name"


def test_every_flat_name_is_one_field_and_the_flat_view_round_trips() -> None:
    names = Settings.flat_names()
    assert len(set(names.values())) == len(names)
    assert names["redis_url"] == ("redis", "url")
    assert names["job_ttl_s"] == ("jobs", "ttl_s")
    settings = Settings(redis_url="redis://x:1/0", s3_secret_access_key="hidden")
    assert Settings.model_validate(settings.flat()) == settings
    assert isinstance(settings.flat()["s3_secret_access_key"], SecretStr)


def test_a_copy_changes_settings_by_their_flat_names_and_validates_them() -> None:
    settings = Settings()
    changed = settings.replace(serving_form="fp32", predict_wait_s=0.5)
    assert changed.serving.form == "torch-fp32"
    assert changed.gateway.predict_wait_s == 0.5
    assert settings.gateway.predict_wait_s == 10.0
    with pytest.raises(ValidationError):
        settings.replace(sqs_batch_size=11)
    with pytest.raises(ValidationError):
        settings.replace(no_such_setting=1)
    with pytest.raises(TypeError, match="replace"):
        settings.model_copy(update={"redis_url": "redis://x:1/0"})


def test_the_settings_reference_is_generated_from_the_settings() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == markdown()
    for flat in Settings.flat_names():
        assert f"`AGNEWS_{flat.upper()}`" in markdown()


def job(type_: JobType, **params: object) -> Job:
    kinds = {JobType.train: TrainParams, JobType.pipeline: PipelineParams}
    made = kinds[type_].model_validate({"dataset": "s3://agnews/incoming/a.zip", **params})
    return Job(id=new_job_id(), type=type_, params=made)


def test_each_job_type_declares_its_chain_of_tasks_once() -> None:
    assert chain(job(JobType.pipeline)) == (INGEST, TRAIN, EVALUATE, PROMOTE)
    assert chain(job(JobType.train)) == (INGEST, TRAIN, EVALUATE)
    assert chain(job(JobType.train, promote=True)) == (INGEST, TRAIN, EVALUATE, PROMOTE)
    assert next_task(job(JobType.pipeline), EVALUATE) == PROMOTE
    assert next_task(job(JobType.train), EVALUATE) is None
    assert first_task(JobType.predict) == PREDICT
    assert ROUTES[TRAIN] == "train"
    assert {ROUTES[task] for task in (INGEST, EVALUATE, PROMOTE)} == {"evaluate"}
