"""The stacks created in ministack, which emulates CloudFormation and applies S3 notifications to
SQS: an upload reaches the project's listener and becomes a pipeline job; the fleet's groups
scale on the exporter's metrics; deploy/rollout.py moves every group to a new image tag.

network.yaml is not created here: ministack has no NAT gateway nor Elastic IP (cfn-lint checks it,
in test_deploy_templates.py). ci.yaml is created with an existing OIDC provider: ministack has no
AWS::IAM::OIDCProvider.
"""

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from deploy.backlog_exporter import BACKLOG_PER_INSTANCE, UNSERVED_BACKLOG
from shared.contracts.stages import INGEST, QUEUES
from shared.settings import Settings
from shared.storage import s3_client
from tests.deploy_support import REGION, ROOT, TEMPLATES, ministack_server, run
from tests.trigger_support import drop_tasks, pipeline_jobs, sent_tasks
from workers.listener.sqs import SqsListener
from workers.listener.trigger import PipelineTrigger

ORGANIZATION = "0b6f5a4e-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
PROJECT = "7d8e9f0a-1b2c-4d3e-9f4a-5b6c7d8e9f0a"
GPU_IMAGE_PARAMETER = "/agnews-test/gpu-image"
FIRST_TAG = "0123456789abcdef0123456789abcdef01234567"
CERTIFICATE = f"arn:aws:acm:{REGION}:000000000000:certificate/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


@dataclass
class Cloud:
    endpoint: str
    outputs: dict[str, dict[str, str]]
    network: dict[str, str] | None = None

    def client(self, service: str) -> Any:
        factory: Any = boto3.client
        return factory(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )


def _start(cloud: Cloud, stack: str, template: str, **parameters: str) -> None:
    cloud.client("cloudformation").create_stack(
        StackName=stack,
        TemplateBody=(TEMPLATES / template).read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )


def _create(cloud: Cloud, stack: str, template: str, **parameters: str) -> dict[str, str]:
    cloudformation = cloud.client("cloudformation")
    _start(cloud, stack, template, **parameters)
    for _ in range(600):
        [state] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        if not state["StackStatus"].endswith("_IN_PROGRESS"):
            break
        time.sleep(0.05)
    failures = [
        f"{event['LogicalResourceId']}: {event.get('ResourceStatusReason')}"
        for event in cloudformation.describe_stack_events(StackName=stack)["StackEvents"]
        if event["ResourceStatus"].endswith("_FAILED")
    ]
    assert state["StackStatus"] == "CREATE_COMPLETE", failures
    return {output["OutputKey"]: output["OutputValue"] for output in state["Outputs"]}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """data, ci, platform and fleet, created in that order as deploy/README.md does."""
    with ministack_server(tmp_path_factory.mktemp("ministack")) as endpoint:
        cloud = Cloud(endpoint, {})
        ec2 = cloud.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(
                VpcId=vpc, CidrBlock=f"10.40.{16 * index}.0/20", AvailabilityZone=f"{REGION}{zone}"
            )["Subnet"]["SubnetId"]
            for index, zone in enumerate("abab")
        ]
        # Public parameters under /aws/ cannot be written; the GPU image comes from one of ours.
        cloud.client("ssm").put_parameter(
            Name=GPU_IMAGE_PARAMETER, Value="ami-0123456789abcdef0", Type="String"
        )
        cloud.outputs["data"] = _create(cloud, "agnews-data", "data.yaml")
        cloud.outputs["ci"] = _create(
            cloud,
            "agnews-ci",
            "ci.yaml",
            CircleCiOrganizationId=ORGANIZATION,
            CircleCiProjectId=PROJECT,
            ExistingOidcProviderArn=(
                f"arn:aws:iam::000000000000:oidc-provider/oidc.circleci.com/org/{ORGANIZATION}"
            ),
        )
        cloud.network = {
            "VpcId": vpc,
            "PublicSubnetIds": ",".join(subnets[:2]),
            "PrivateSubnetIds": ",".join(subnets[2:]),
        }
        cloud.outputs["platform"] = _create(
            cloud, "agnews-platform", "platform.yaml", CertificateArn=CERTIFICATE, **cloud.network
        )
        cloud.outputs["fleet"] = _create(
            cloud,
            "agnews-fleet",
            "fleet.yaml",
            ImageTag=FIRST_TAG,
            GpuImageId=GPU_IMAGE_PARAMETER,
            PredictBacklogTarget="25",
        )
        yield cloud


@pytest.fixture
def listening(cloud: Cloud, settings: Settings) -> Iterator[Settings]:
    """The test's Redis settings, pointed at the data stack's bucket and queue."""
    data = cloud.outputs["data"]
    yield settings.replace(
        s3_endpoint_url=cloud.endpoint,
        s3_access_key_id="test",
        bucket=data["BucketName"],
        incoming_prefix=data["IncomingPrefix"],
        sqs_queue_url=data["QueueUrl"],
        sqs_wait_time_s=1,
    )
    drop_tasks(settings, {job.id for job in pipeline_jobs(settings)})


def _drain(settings: Settings) -> int:
    """Poll the queue until a poll receives nothing; the messages received."""

    async def polls() -> int:
        received = 0
        async with SqsListener(settings, PipelineTrigger.from_settings(settings)) as sqs:
            for _ in range(20):
                poll = await sqs.poll_once()
                assert poll.deleted == poll.received
                if not poll.received:
                    return received
                received += poll.received
        raise AssertionError("the queue never ran dry")

    return asyncio.run(polls())


def test_an_upload_to_the_bucket_becomes_one_pipeline_job(listening: Settings) -> None:
    settings = listening
    s3 = s3_client(settings.storage)
    s3.put_object(
        Bucket=settings.storage.bucket, Key="incoming/mine/archive.zip", Body=b"PK\x05\x06"
    )
    # Filtered out by the bucket's notification: other prefixes, other names.
    s3.put_object(Bucket=settings.storage.bucket, Key="models/v1/archive.zip", Body=b"PK\x05\x06")
    s3.put_object(Bucket=settings.storage.bucket, Key="incoming/mine/readme.txt", Body=b"hello")

    # The notification configuration's test event, and the one upload.
    assert _drain(settings) == 2
    [job] = pipeline_jobs(settings)
    assert job.params.dataset == f"s3://{settings.storage.bucket}/incoming/mine/archive.zip"
    assert job.params.source.key == "incoming/mine/archive.zip"
    assert job.params.source.version_id  # the bucket is versioned
    assert sent_tasks(settings, job.id) == [INGEST]


def test_the_event_queue_has_its_dead_letter_queue(cloud: Cloud) -> None:
    sqs = cloud.client("sqs")
    data = cloud.outputs["data"]
    attributes = sqs.get_queue_attributes(QueueUrl=data["QueueUrl"], AttributeNames=["All"])
    redrive = json.loads(attributes["Attributes"]["RedrivePolicy"])
    dead_letters = sqs.get_queue_attributes(
        QueueUrl=data["DeadLetterQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    assert redrive["deadLetterTargetArn"] == dead_letters
    assert int(redrive["maxReceiveCount"]) == 5


def test_the_bucket_blocks_public_access_and_keeps_versions(cloud: Cloud) -> None:
    s3 = cloud.client("s3")
    bucket = cloud.outputs["data"]["BucketName"]
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    assert len(block) == 4
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"


def _groups(cloud: Cloud) -> dict[str, dict[str, Any]]:
    pages = cloud.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    return {group["AutoScalingGroupName"]: group for group in pages}


def _user_data(cloud: Cloud, group: dict[str, Any]) -> str:
    launch = group["LaunchTemplate"]
    [version] = cloud.client("ec2").describe_launch_template_versions(
        LaunchTemplateId=launch["LaunchTemplateId"], Versions=[launch["Version"]]
    )["LaunchTemplateVersions"]
    return base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()


def test_each_queue_has_a_group_scaling_on_its_backlog(cloud: Cloud) -> None:
    groups = _groups(cloud)
    fleet = cloud.outputs["fleet"]
    names = {queue: fleet[f"{queue.capitalize()}GroupName"] for queue in QUEUES}
    assert set(groups) == {*names.values(), fleet["GatewayGroupName"]}
    policies = cloud.client("autoscaling").describe_policies()["ScalingPolicies"]
    alarms = cloud.client("cloudwatch").describe_alarms()["MetricAlarms"]
    for queue, name in names.items():
        [tracking] = [
            policy
            for policy in policies
            if policy["AutoScalingGroupName"] == name
            and policy["PolicyType"] == "TargetTrackingScaling"
        ]
        metric = tracking["TargetTrackingConfiguration"]["CustomizedMetricSpecification"]
        assert metric["MetricName"] == BACKLOG_PER_INSTANCE
        assert {"Name": "Queue", "Value": queue} in metric["Dimensions"]
        assert {"Name": "AutoScalingGroupName", "Value": name} in metric["Dimensions"]
        [wake] = [
            alarm
            for alarm in alarms
            if alarm["MetricName"] == UNSERVED_BACKLOG
            and {"Name": "AutoScalingGroupName", "Value": name} in alarm["Dimensions"]
        ]
        [policy] = [p for p in policies if p["PolicyARN"] in wake["AlarmActions"]]
        assert policy["AutoScalingGroupName"] == name
        hooks = {hook["LifecycleHookName"] for hook in groups[name].get("LifecycleHooks", [])}
        assert hooks <= {"drain"}
    for group in groups.values():
        assert f":{FIRST_TAG}" in _user_data(cloud, group)


def test_rollout_moves_every_group_to_the_new_tag(cloud: Cloud, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": cloud.endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    rollout = [sys.executable, str(ROOT / "deploy" / "rollout.py")]
    before = {name: group["LaunchTemplate"]["Version"] for name, group in _groups(cloud).items()}

    result = run(
        *rollout, "second", "--wait", "gateway", "predict", "evaluate", "--poll", "0.1", env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr

    refreshes = cloud.client("autoscaling")
    for name, group in _groups(cloud).items():
        assert int(group["LaunchTemplate"]["Version"]) == int(before[name]) + 1
        user_data = _user_data(cloud, group)
        assert ":second" in user_data
        assert f":{FIRST_TAG}" not in user_data
        [refresh, *_] = refreshes.describe_instance_refreshes(AutoScalingGroupName=name)[
            "InstanceRefreshes"
        ]
        assert refresh["Status"] == "Successful"
    [fleet] = cloud.client("cloudformation").describe_stacks(StackName="agnews-fleet")["Stacks"]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in fleet["Parameters"]}
    assert parameters["ImageTag"] == "second"
    assert parameters["PredictBacklogTarget"] == "25"  # every other value is kept

    # The same command rolls back; a tag already running changes nothing but refreshes.
    again = run(*rollout, "second", "--poll", "0.1", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already runs second" in again.stdout


def test_the_load_balancer_serves_https_and_refuses_internal_paths(cloud: Cloud) -> None:
    elb = cloud.client("elbv2")
    [balancer] = [
        balancer
        for balancer in elb.describe_load_balancers()["LoadBalancers"]
        if cloud.outputs["platform"]["Url"] == f"https://{balancer['DNSName']}"
    ]
    assert balancer["Scheme"] == "internet-facing"
    listeners = {
        listener["Protocol"]: listener
        for listener in elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])[
            "Listeners"
        ]
    }
    assert set(listeners) == {"HTTP", "HTTPS"}
    assert [cert["CertificateArn"] for cert in listeners["HTTPS"]["Certificates"]] == [CERTIFICATE]
    [redirect] = listeners["HTTP"]["DefaultActions"]
    assert redirect["Type"] == "redirect"
    rules = elb.describe_rules(ListenerArn=listeners["HTTPS"]["ListenerArn"])["Rules"]
    [refusal] = [rule for rule in rules if not rule["IsDefault"]]
    [condition] = refusal["Conditions"]
    assert "/metrics" in condition["Values"]
    assert "/readyz" in condition["Values"]
    assert refusal["Actions"][0]["FixedResponseConfig"]["StatusCode"] == "403"
    assert cloud.outputs["platform"]["Url"].startswith("https://")


def test_plain_http_needs_its_opt_out_and_stays_inside_the_network(cloud: Cloud) -> None:
    assert cloud.network is not None
    with pytest.raises(ClientError, match="PlainHttpOnPrivateNetwork=true"):
        _start(cloud, "agnews-cleartext", "platform.yaml", **cloud.network)
    plain = _create(
        cloud,
        "agnews-cleartext",
        "platform.yaml",
        NamePrefix="cleartext",
        PlainHttpOnPrivateNetwork="true",
        **cloud.network,
    )
    assert plain["Url"].startswith("http://")
    elb = cloud.client("elbv2")
    schemes = {
        balancer["DNSName"]: balancer["Scheme"]
        for balancer in elb.describe_load_balancers()["LoadBalancers"]
    }
    assert schemes[plain["Url"].removeprefix("http://")] == "internal"


def test_the_session_secret_is_generated_into_secrets_manager(cloud: Cloud) -> None:
    arn = cloud.outputs["platform"]["SessionSecretArn"]
    value = cloud.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    assert len(value) >= 64
    [fleet] = [
        group
        for name, group in _groups(cloud).items()
        if name == cloud.outputs["fleet"]["GatewayGroupName"]
    ]
    user_data = _user_data(cloud, fleet)
    assert f"--secret-id {arn} " in user_data
    assert value not in user_data
