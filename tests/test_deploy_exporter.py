"""The queue-backlog exporter against a Redis broker of its own and moto's Auto Scaling and
CloudWatch: what the fleet's target-tracking policies read."""

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from celery import Celery

from deploy.backlog_exporter import (
    BACKLOG,
    BACKLOG_PER_INSTANCE,
    MODEL_DRIFT,
    UNSERVED_BACKLOG,
    Backlog,
    BacklogExporter,
    Capacity,
)
from shared.broker import make_celery
from shared.contracts.stages import EVALUATE, PREDICT, TRAIN
from shared.monitoring import MonitorKeys
from shared.redis_clients import sync_client
from shared.settings import Settings
from shared.storage import client_options
from testkit.servers import free_port, redis_server

GROUPS = {"predict": "fleet-predict", "evaluate": "fleet-evaluate", "train": "fleet-train"}


@pytest.fixture
def exporter_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A broker of its own (the suite's Redis carries other tests' queues) and groups in moto:
    two predict instances, none for evaluate and train."""
    aws = client_options(settings.storage)
    ec2: Any = boto3.client("ec2", **aws)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    autoscaling: Any = boto3.client("autoscaling", **aws)
    suffix = settings.redis.key_prefix
    autoscaling.create_launch_configuration(
        LaunchConfigurationName=f"lc-{suffix}", ImageId=image, InstanceType="t3.micro"
    )
    groups = {queue: f"{name}-{suffix}" for queue, name in GROUPS.items()}
    for queue, group in groups.items():
        capacity = 2 if queue == "predict" else 0
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=group,
            LaunchConfigurationName=f"lc-{suffix}",
            AvailabilityZones=[f"{settings.storage.region}a"],
            MinSize=0,
            MaxSize=4,
            DesiredCapacity=capacity,
        )
    with redis_server(tmp_path / "broker") as broker:
        yield settings.replace(
            redis_url=broker,
            backlog_groups=groups,
            metrics_namespace=f"AGNEWS-{suffix}",
            backlog_interval_s=0.05,
        )
    for group in groups.values():
        autoscaling.delete_auto_scaling_group(AutoScalingGroupName=group, ForceDelete=True)


def published(settings: Settings, metric: str, queue: str | None) -> float:
    cloudwatch: Any = boto3.client("cloudwatch", **client_options(settings.storage))
    now = datetime.now(UTC)
    dimensions = (
        []
        if queue is None
        else Backlog(queue, settings.backlog.groups[queue], 0, Capacity(0, 0)).dimensions()
    )
    result = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": settings.backlog.metrics_namespace,
                        "MetricName": metric,
                        "Dimensions": dimensions,
                    },
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
        ],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=1),
    )["MetricDataResults"][0]
    [value] = result["Values"]
    return float(value)


def send(app: Celery, task: str, count: int) -> None:
    for index in range(count):
        app.send_task(task, args=[f"job-{index}"])


def test_waiting_and_unacknowledged_tasks_are_published_per_instance(
    exporter_settings: Settings,
) -> None:
    settings = exporter_settings
    app = make_celery(settings)
    send(app, PREDICT, 3)
    # The gateways' last drift check found one of production's signals drifted.
    sync_client(settings.redis).set(MonitorKeys(settings.redis.key_prefix).drifted, 1, ex=60)
    send(app, TRAIN, 2)
    with app.connection_for_write() as connection:
        # A worker took one training and holds it unacknowledged, as a late-ack task does.
        queue = connection.SimpleQueue("train")
        in_hand = queue.get(block=True, timeout=5)

        backlogs = BacklogExporter.from_settings(settings).publish_once()

        in_hand.requeue()
        queue.close()

    assert {b.queue: (b.tasks, b.capacity) for b in backlogs} == {
        "predict": (3, Capacity(desired=2, in_service=2)),
        "evaluate": (0, Capacity(desired=0, in_service=0)),
        "train": (2, Capacity(desired=0, in_service=0)),
    }
    assert published(settings, BACKLOG, "predict") == 3
    assert published(settings, BACKLOG_PER_INSTANCE, "predict") == 1.5
    assert published(settings, UNSERVED_BACKLOG, "predict") == 0
    # No instance wanted: per instance is the whole backlog, and the group's wake alarm sees it.
    assert published(settings, BACKLOG, "train") == 2
    assert published(settings, BACKLOG_PER_INSTANCE, "train") == 2
    assert published(settings, UNSERVED_BACKLOG, "train") == 2
    assert published(settings, BACKLOG_PER_INSTANCE, "evaluate") == 0
    assert published(settings, UNSERVED_BACKLOG, "evaluate") == 0
    assert published(settings, MODEL_DRIFT, None) == 1


def test_run_publishes_until_stopped_and_outlives_a_broker_outage(
    exporter_settings: Settings,
) -> None:
    away = exporter_settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    stop = threading.Event()
    failing = BacklogExporter.from_settings(away)
    rounds = 0
    measure = failing.measure

    def counted() -> list[Backlog]:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            stop.set()
        return measure()

    failing.measure = counted  # type: ignore[method-assign]
    failing.run(stop)  # returns: the outage is logged, never raised
    assert rounds == 3

    working = BacklogExporter.from_settings(exporter_settings)
    send(make_celery(exporter_settings), EVALUATE, 1)
    stop = threading.Event()
    stop.set()
    working.run(stop)  # one round, then it sees the stop
    assert published(exporter_settings, BACKLOG, "evaluate") == 1


def test_the_exporter_needs_its_groups(settings: Settings) -> None:
    with pytest.raises(ValueError, match="backlog_groups"):
        BacklogExporter.from_settings(settings)
