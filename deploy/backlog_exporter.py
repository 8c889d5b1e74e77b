"""`python -m deploy.backlog_exporter`: each queue's backlog per instance, to CloudWatch.

Each worker group on EC2 tracks `BacklogPerInstance` of its queue with a target-tracking policy:
the tasks waiting in the queue and those delivered to a worker and not yet acknowledged (a
training holds its message until it ends), over the group's instances in service. Target tracking
scales in proportion to the instances there are, so it cannot start from none: `UnservedBacklog`,
the tasks of a queue whose group wants no instance, raises an alarm that wakes the group.
`Backlog` is the tasks alone, for dashboards. `settings.backlog.groups` maps each queue to its
group. `ModelDrift` is how many of production's signals drifted from its holdout at the gateways'
last check (gateway.monitor), which the fleet's drift alarm watches. The exporter runs beside
every gateway; its copies publish the same values.
"""

import json
import logging
import signal
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import boto3
import redis
from botocore.exceptions import BotoCoreError, ClientError
from kombu.transport.redis import Channel

from shared.logs import configure_logging
from shared.monitoring import MonitorKeys
from shared.redis_clients import sync_client
from shared.settings import Settings, get_settings
from shared.storage import client_options

log = logging.getLogger(__name__)

BACKLOG = "Backlog"
BACKLOG_PER_INSTANCE = "BacklogPerInstance"
UNSERVED_BACKLOG = "UnservedBacklog"
MODEL_DRIFT = "ModelDrift"

# What a failed round meets; the next round tries again.
ROUND_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    BotoCoreError,
    ClientError,
    OSError,
)


@dataclass(frozen=True)
class Capacity:
    desired: int
    in_service: int


@dataclass(frozen=True)
class Backlog:
    queue: str
    group: str
    tasks: int
    capacity: Capacity

    @property
    def per_instance(self) -> float:
        """Tasks per instance in service; all of them while there is none."""
        return self.tasks / max(self.capacity.in_service, 1)

    @property
    def unserved(self) -> int:
        """The tasks, while the group wants no instance to serve them."""
        return self.tasks if self.capacity.desired == 0 else 0

    def dimensions(self) -> list[dict[str, str]]:
        return [
            {"Name": "Queue", "Value": self.queue},
            {"Name": "AutoScalingGroupName", "Value": self.group},
        ]

    def metric_data(self) -> list[dict[str, Any]]:
        values = {
            BACKLOG: self.tasks,
            BACKLOG_PER_INSTANCE: self.per_instance,
            UNSERVED_BACKLOG: self.unserved,
        }
        return [
            {"MetricName": name, "Dimensions": self.dimensions(), "Value": value, "Unit": "Count"}
            for name, value in values.items()
        ]


def queue_backlogs(client: Any, queues: Iterable[str]) -> dict[str, int]:
    """Tasks waiting in each queue plus those delivered and not yet acknowledged.

    Read as kombu's Redis transport keeps them (shared.tasks.queue_depths reads the same lists):
    a list per queue, and a hash of the delivered messages, each as [message, exchange, routing
    key]. A plain client fails fast while Redis is away; the next round tries again.
    """
    backlog = {queue: int(client.llen(queue)) for queue in queues}
    for raw in client.hvals(Channel.unacked_key):
        routing_key = json.loads(raw)[-1]
        if routing_key in backlog:
            backlog[routing_key] += 1
    return backlog


def group_capacities(autoscaling: Any, groups: Iterable[str]) -> dict[str, Capacity]:
    names = list(groups)
    capacities = dict.fromkeys(names, Capacity(0, 0))
    pages = autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
        AutoScalingGroupNames=names
    )
    for page in pages:
        for group in page["AutoScalingGroups"]:
            in_service = sum(
                instance["LifecycleState"] == "InService" for instance in group["Instances"]
            )
            capacities[group["AutoScalingGroupName"]] = Capacity(
                int(group["DesiredCapacity"]), in_service
            )
    return capacities


class BacklogExporter:
    def __init__(self, settings: Settings, broker: Any, autoscaling: Any, cloudwatch: Any) -> None:
        if not settings.backlog.groups:
            raise ValueError("the backlog exporter needs backlog_groups (queue -> group name)")
        self.settings = settings
        self.groups: Mapping[str, str] = settings.backlog.groups
        self.broker = broker
        self.autoscaling = autoscaling
        self.cloudwatch = cloudwatch

    @classmethod
    def from_settings(cls, settings: Settings) -> "BacklogExporter":
        options = client_options(settings.storage)
        return cls(
            settings,
            sync_client(settings.redis),
            boto3.client("autoscaling", **options),
            boto3.client("cloudwatch", **options),
        )

    def measure(self) -> list[Backlog]:
        tasks = queue_backlogs(self.broker, self.groups)
        capacities = group_capacities(self.autoscaling, self.groups.values())
        return [
            Backlog(queue, group, tasks[queue], capacities[group])
            for queue, group in self.groups.items()
        ]

    def drifted_signals(self) -> int:
        """0 also when no gateway has checked lately (the count expires)."""
        value = self.broker.get(MonitorKeys(self.settings.redis.key_prefix).drifted)
        return int(value) if value is not None else 0

    def publish_once(self) -> list[Backlog]:
        backlogs = self.measure()
        data = [datum for backlog in backlogs for datum in backlog.metric_data()]
        data.append({"MetricName": MODEL_DRIFT, "Value": self.drifted_signals(), "Unit": "Count"})
        self.cloudwatch.put_metric_data(
            Namespace=self.settings.backlog.metrics_namespace, MetricData=data
        )
        for backlog in backlogs:
            log.debug("%s: %d tasks, %s", backlog.queue, backlog.tasks, backlog.capacity)
        return backlogs

    def run(self, stop: threading.Event) -> None:
        """Publish every backlog_interval_s until `stop` is set; a failed round is logged."""
        log.info(
            "publishing the backlog of %s to %s every %ss",
            ", ".join(f"{queue} ({group})" for queue, group in self.groups.items()),
            self.settings.backlog.metrics_namespace,
            self.settings.backlog.interval_s,
        )
        while True:
            try:
                self.publish_once()
            except ROUND_ERRORS as exc:
                log.warning("backlog not published: %s: %s", type(exc).__name__, exc)
            if stop.wait(self.settings.backlog.interval_s):
                return


def main() -> None:
    settings = get_settings()
    configure_logging(settings.run, "backlog-exporter")
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopping)
    BacklogExporter.from_settings(settings).run(stop)


if __name__ == "__main__":
    main()
