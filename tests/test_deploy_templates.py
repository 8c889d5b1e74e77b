"""The CloudFormation templates: cfn-lint, and the rules the deployment promises, read from them."""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.backlog_exporter import (
    BACKLOG_PER_INSTANCE,
    MODEL_DRIFT,
    UNSERVED_BACKLOG,
    Backlog,
    Capacity,
)
from deploy.capacity import (
    BYTES_PER_PREDICTION,
    NODE_GIB,
    fleet_maximum,
    redis_bytes,
    smallest_node,
)
from shared.contracts.stages import QUEUES
from shared.redis_clients import SERVER_CONFIG
from shared.settings import Settings
from tests.deploy_support import TEMPLATES, resources, run, template, tool

NAMES = sorted(path.name for path in TEMPLATES.glob("*.yaml"))

# Actions that take no resource-level permission: "*" is the only resource they accept.
RESOURCELESS = {
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeInstanceRefreshes",
    "autoscaling:DescribeLifecycleHooks",
    "autoscaling:DescribePolicies",
    "autoscaling:DescribeScalingActivities",
    "cloudwatch:PutMetricData",
    "ec2:DescribeImages",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeLaunchTemplates",
    "ecr:GetAuthorizationToken",
}
WORKER_GROUPS = {f"{queue.capitalize()}Group": queue for queue in QUEUES}


def test_the_templates_are_those_the_guide_deploys() -> None:
    assert NAMES == ["ci.yaml", "data.yaml", "fleet.yaml", "network.yaml", "platform.yaml"]


@pytest.mark.parametrize("name", NAMES)
def test_cfn_lint_passes(name: str) -> None:
    result = run(tool("cfn-lint"), str(TEMPLATES / name))
    assert result.returncode == 0, result.stdout + result.stderr


def _statements(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every statement of every IAM policy in a template, with where it is."""
    for name, resource in document["Resources"].items():
        properties = resource.get("Properties", {})
        policies = [properties.get("PolicyDocument"), properties.get("AssumeRolePolicyDocument")]
        policies += [policy["PolicyDocument"] for policy in properties.get("Policies", [])]
        for policy in policies:
            if policy is None:
                continue
            if "Fn::Sub" in policy:  # a JSON string, its placeholders inside JSON strings
                body = policy["Fn::Sub"]
                policy = json.loads(body[0] if isinstance(body, list) else body)
            for statement in policy["Statement"]:
                yield name, statement


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


ALL_STATEMENTS = [
    (name, resource, statement)
    for name in NAMES
    for resource, statement in _statements(template(name))
]


def test_the_templates_have_policies_to_check() -> None:
    kinds = {resource for _, resource, _ in ALL_STATEMENTS}
    assert {"CircleCiRole", "GatewayRole", "PredictRole", "TrainRole", "EventQueuePolicy"} <= kinds


@pytest.mark.parametrize(("name", "resource", "statement"), ALL_STATEMENTS)
def test_no_statement_allows_a_wildcard_action(
    name: str, resource: str, statement: dict[str, Any]
) -> None:
    actions = _listed(statement.get("Action", []))
    assert "NotAction" not in statement
    if statement["Effect"] == "Allow":
        assert all("*" not in action for action in actions), (name, resource, actions)
    else:
        # The bucket policy's deny of anything over plain HTTP is the one wildcard there is.
        assert (resource, actions) == ("BucketPolicy", ["s3:*"])
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize(("name", "resource", "statement"), ALL_STATEMENTS)
def test_only_resourceless_actions_take_every_resource(
    name: str, resource: str, statement: dict[str, Any]
) -> None:
    if statement["Effect"] != "Allow" or statement.get("Resource") != "*":
        return
    assert set(_listed(statement["Action"])) <= RESOURCELESS, (name, resource)
    if "cloudwatch:PutMetricData" in _listed(statement["Action"]):
        assert "cloudwatch:namespace" in statement["Condition"]["StringEquals"]


def test_no_role_has_a_managed_policy_of_aws() -> None:
    """No AdministratorAccess, nor any other AWS-managed policy: each role's rights are written
    here."""
    for name in NAMES:
        for role in resources(template(name), "AWS::IAM::Role").values():
            for arn in role["Properties"].get("ManagedPolicyArns", []):
                assert arn == {"Ref": "FleetCommonPolicy"}
    text = "\n".join((TEMPLATES / name).read_text() for name in NAMES)
    assert "AdministratorAccess" not in text
    assert "arn:aws:iam::aws:policy" not in text


def test_redis_admits_the_fleet_only() -> None:
    platform = template("platform.yaml")
    [redis] = resources(platform, "AWS::ElastiCache::ReplicationGroup").values()
    [group] = redis["Properties"]["SecurityGroupIds"]
    rules = platform["Resources"][group["Ref"]]["Properties"]["SecurityGroupIngress"]
    assert rules == [
        {
            "Description": "Redis from the fleet",
            "IpProtocol": "tcp",
            "FromPort": 6379,
            "ToPort": 6379,
            "SourceSecurityGroupId": {"Ref": "FleetSecurityGroup"},
        }
    ]
    for name in NAMES:
        assert not resources(template(name), "AWS::EC2::SecurityGroupIngress")
    assert "SecurityGroupIngress" not in platform["Resources"]["FleetSecurityGroup"]["Properties"]
    parameters = platform["Resources"][redis["Properties"]["CacheParameterGroupName"]["Ref"]]
    assert parameters["Properties"]["Properties"] == SERVER_CONFIG
    assert redis["Properties"]["TransitEncryptionEnabled"] is True
    assert redis["Properties"]["AtRestEncryptionEnabled"] is True
    assert platform["Outputs"]["FleetSecurityGroupId"]["Value"] == {"Ref": "FleetSecurityGroup"}
    # Every instance of the fleet carries the group.
    fleet = template("fleet.yaml")
    for launch in resources(fleet, "AWS::EC2::LaunchTemplate").values():
        groups = launch["Properties"]["LaunchTemplateData"]["SecurityGroupIds"]
        imports = [group["Fn::ImportValue"]["Fn::Sub"] for group in groups]
        assert "${PlatformStackName}-FleetSecurityGroupId" in imports


def test_the_bucket_is_private_versioned_encrypted_and_notifies_the_queue() -> None:
    data = template("data.yaml")
    bucket = data["Resources"]["Bucket"]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    [cors] = bucket["CorsConfiguration"]["CorsRules"]
    assert {"PUT", "POST"} <= set(cors["AllowedMethods"])
    [notification] = bucket["NotificationConfiguration"]["QueueConfigurations"]
    assert notification["Queue"] == {"Fn::GetAtt": ["EventQueue", "Arn"]}
    rules = {rule["Name"]: rule["Value"] for rule in notification["Filter"]["S3Key"]["Rules"]}
    assert rules == {"prefix": {"Ref": "IncomingPrefix"}, "suffix": "archive.zip"}
    assert data["Parameters"]["IncomingPrefix"]["Default"] == Settings().storage.incoming_prefix
    redrive = data["Resources"]["EventQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    [allow] = data["Resources"]["EventQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert allow["Principal"] == {"Service": "s3.amazonaws.com"}
    assert "aws:SourceArn" in allow["Condition"]["ArnEquals"]


def test_the_buckets_lifecycle_rules_expire_what_the_local_janitor_clears() -> None:
    """A rule for each prefix the listener's janitor sweeps where the store has none, by default
    over the same span as the janitor's settings; what is kept for good has none."""
    data = template("data.yaml")
    rules = data["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    by_prefix = {rule["Prefix"]: rule for rule in rules if "Prefix" in rule}
    storage, listener = Settings().storage, Settings().listener
    swept = (storage.incoming_prefix, storage.checkpoints_prefix, storage.predictions_prefix)
    assert sorted(by_prefix) == sorted(swept)

    def default_days(prefix: str) -> int:
        rule = by_prefix[prefix]
        assert rule["Status"] == "Enabled"
        parameter = data["Parameters"][rule["ExpirationInDays"]["Ref"]]
        assert parameter["MinValue"] >= 1
        days: int = parameter["Default"]
        return days

    day = 24 * 3600
    assert default_days(storage.incoming_prefix) * day == listener.incoming_retention_s
    assert default_days(storage.predictions_prefix) * day == listener.predictions_retention_s
    assert default_days(storage.predictions_prefix) == 30
    assert default_days(storage.checkpoints_prefix) >= 1
    for kept in (storage.datasets_prefix, storage.models_prefix, storage.holdout_prefix):
        assert not any(kept.startswith(prefix) for prefix in by_prefix), kept


def _group_name(group: dict[str, Any]) -> str:
    name: str = group["Properties"]["AutoScalingGroupName"]["Fn::Sub"]
    return name


def _policies_of(fleet: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [
        policy["Properties"]
        for policy in resources(fleet, "AWS::AutoScaling::ScalingPolicy").values()
        if policy["Properties"]["AutoScalingGroupName"] == {"Ref": group}
    ]


def test_every_worker_group_tracks_its_queues_backlog_per_instance() -> None:
    fleet = template("fleet.yaml")
    groups = resources(fleet, "AWS::AutoScaling::AutoScalingGroup")
    assert set(groups) == {"GatewayGroup", *WORKER_GROUPS}
    for group, queue in WORKER_GROUPS.items():
        [tracking] = [
            policy
            for policy in _policies_of(fleet, group)
            if policy["PolicyType"] == "TargetTrackingScaling"
        ]
        metric = tracking["TargetTrackingConfiguration"]["CustomizedMetricSpecification"]
        assert metric["MetricName"] == BACKLOG_PER_INSTANCE
        assert metric["Statistic"] == "Average"
        expected = Backlog(queue, "GROUP", 0, Capacity(0, 0)).dimensions()
        expected[1]["Value"] = {"Fn::Sub": _group_name(groups[group])}  # type: ignore[assignment]
        assert metric["Dimensions"] == expected
        target = tracking["TargetTrackingConfiguration"]["TargetValue"]
        assert target == {"Ref": f"{queue.capitalize()}BacklogTarget"}


def test_every_worker_group_wakes_from_zero_on_its_unserved_backlog() -> None:
    fleet = template("fleet.yaml")
    groups = resources(fleet, "AWS::AutoScaling::AutoScalingGroup")
    alarms = resources(fleet, "AWS::CloudWatch::Alarm")
    for group, queue in WORKER_GROUPS.items():
        [wake] = [
            name
            for name, policy in resources(fleet, "AWS::AutoScaling::ScalingPolicy").items()
            if policy["Properties"]["AutoScalingGroupName"] == {"Ref": group}
            and policy["Properties"]["PolicyType"] == "StepScaling"
        ]
        [alarm] = [
            a["Properties"]
            for a in alarms.values()
            if {"Ref": wake} in _plain_actions(a["Properties"])
        ]
        assert alarm["MetricName"] == UNSERVED_BACKLOG
        assert alarm["Dimensions"][0] == {"Name": "Queue", "Value": queue}
        assert alarm["Dimensions"][1]["Value"] == {"Fn::Sub": _group_name(groups[group])}


def test_the_gateways_track_cpu_behind_the_load_balancer() -> None:
    fleet = template("fleet.yaml")
    [tracking] = _policies_of(fleet, "GatewayGroup")
    predefined = tracking["TargetTrackingConfiguration"]["PredefinedMetricSpecification"]
    assert predefined["PredefinedMetricType"] == "ASGAverageCPUUtilization"
    gateway = fleet["Resources"]["GatewayGroup"]["Properties"]
    assert gateway["HealthCheckType"] == "ELB"
    assert gateway["TargetGroupARNs"]


def test_train_runs_on_gpus_and_the_other_queues_on_cpus() -> None:
    parameters = template("fleet.yaml")["Parameters"]
    assert parameters["TrainInstanceType"]["Default"].split(".")[0] in {"g5", "g6"}
    for queue in ("Predict", "Evaluate", "Gateway"):
        assert parameters[f"{queue}InstanceType"]["Default"][0] in "cmt"
    user_data = _user_data(template("fleet.yaml"), "TrainTemplate")
    assert "--gpus all" in user_data
    assert "/worker-cuda:${ImageTag}" in user_data


def _user_data(fleet: dict[str, Any], launch_template: str) -> str:
    data = fleet["Resources"][launch_template]["Properties"]["LaunchTemplateData"]
    script: str = data["UserData"]["Fn::Base64"]["Fn::Sub"][0]
    return script


def test_instances_take_settings_and_secrets_from_the_stacks_and_log_to_cloudwatch() -> None:
    fleet = template("fleet.yaml")
    gateway = _user_data(fleet, "GatewayTemplate")
    [groups] = [line for line in gateway.splitlines() if line.startswith("AGNEWS_BACKLOG_GROUPS=")]
    parsed = json.loads(groups.partition("=")[2])
    assert set(parsed) == set(QUEUES)
    assert "aws ssm get-parameter" in gateway
    assert "--with-decryption" in gateway
    for launch_template in resources(fleet, "AWS::EC2::LaunchTemplate"):
        script = _user_data(fleet, launch_template)
        settings = {
            line.partition("=")[0] for line in script.splitlines() if line.startswith("AGNEWS_")
        }
        assert settings <= {f"AGNEWS_{field.upper()}" for field in Settings.flat_names()}
        assert "aws secretsmanager get-secret-value" in script
        assert "--log-driver awslogs" in script
        data = fleet["Resources"][launch_template]["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"


def test_ci_may_update_only_the_fleet_and_push_only_its_repositories() -> None:
    ci = template("ci.yaml")
    repositories = resources(ci, "AWS::ECR::Repository")
    names = {repo["Properties"]["RepositoryName"]["Fn::Sub"] for repo in repositories.values()}
    assert names == {"${NamePrefix}/gateway", "${NamePrefix}/worker", "${NamePrefix}/worker-cuda"}
    for repo in repositories.values():
        assert repo["Properties"]["ImageTagMutability"] == "IMMUTABLE"
    [trust] = [
        statement
        for _, statement in _statements(ci)
        if statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    ]
    # Only this CircleCI organization's project: its OIDC token's audience and subject.
    assert set(trust["Condition"]) == {"StringEquals", "StringLike"}
    [subject] = trust["Condition"]["StringLike"].values()
    assert subject.endswith("/project/${CircleCiProjectId}/user/*")
    stack_actions = [
        statement["Resource"]
        for _, statement in _statements(ci)
        if "cloudformation:UpdateStack" in _listed(statement["Action"])
    ]
    assert stack_actions == [
        {
            "Fn::Sub": "arn:${AWS::Partition}:cloudformation:${AWS::Region}:${AWS::AccountId}"
            ":stack/${FleetStackName}/*"
        }
    ]


def test_redis_holds_what_the_fleet_keeps_at_its_largest() -> None:
    platform, fleet = template("platform.yaml"), template("fleet.yaml")
    largest = int(fleet["Parameters"]["PredictMaxSize"]["Default"])
    need = redis_bytes(fleet_maximum(largest), Settings())
    node = platform["Parameters"]["RedisNodeType"]["Default"]
    assert NODE_GIB[node] >= NODE_GIB[smallest_node(need)], (node, need / 2**30)
    # Predictions kept are what grows with the rate: the rest is a few hundred MB at most.
    assert need > BYTES_PER_PREDICTION * fleet_maximum(largest).predictions_per_s * 600


def _gateway_substitutions(fleet: dict[str, Any]) -> dict[str, Any]:
    data = fleet["Resources"]["GatewayTemplate"]["Properties"]["LaunchTemplateData"]
    substitutions: dict[str, Any] = data["UserData"]["Fn::Base64"]["Fn::Sub"][1]
    return substitutions


def test_the_fleets_session_secret_is_random_in_secrets_manager_not_derived_from_the_keys() -> None:
    platform, fleet = template("platform.yaml"), template("fleet.yaml")
    secret = platform["Resources"]["SessionSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["PasswordLength"] >= 64
    assert platform["Outputs"]["SessionSecretArn"]["Value"] == {"Ref": "SessionSecret"}
    assert platform["Outputs"]["SessionSecretArn"]["Export"]["Name"] == {
        "Fn::Sub": "${AWS::StackName}-SessionSecretArn"
    }
    # Only the gateways' role may read it.
    readers = [
        (name, statement)
        for name, statement in _statements(platform)
        if {"Ref": "SessionSecret"} in _listed(statement.get("Resource", []))
    ]
    assert [statement["Action"] for _, statement in readers] == ["secretsmanager:GetSecretValue"]
    [(holder, _)] = readers
    assert platform["Resources"][holder]["Properties"]["Roles"] == [{"Ref": "GatewayRole"}]

    gateway = _user_data(fleet, "GatewayTemplate")
    assert "sha256sum" not in gateway
    assert "agnews-session" not in gateway
    [read] = [line for line in gateway.splitlines() if line.startswith("session_secret=")]
    assert "aws secretsmanager get-secret-value" in read
    assert "--secret-id ${SessionSecretArn}" in read
    assert "AGNEWS_SESSION_SECRET=$session_secret" in gateway.splitlines()
    assert _gateway_substitutions(fleet)["SessionSecretArn"] == {
        "Fn::ImportValue": {"Fn::Sub": "${PlatformStackName}-SessionSecretArn"}
    }
    for launch_template in set(resources(fleet, "AWS::EC2::LaunchTemplate")) - {"GatewayTemplate"}:
        assert "SessionSecretArn" not in _user_data(fleet, launch_template)


def test_the_load_balancer_needs_a_certificate_unless_told_to_serve_http_privately() -> None:
    platform = template("platform.yaml")
    parameters = platform["Parameters"]
    assert parameters["CertificateArn"]["Default"] == ""
    opt_out = parameters["PlainHttpOnPrivateNetwork"]
    assert opt_out["Default"] == "false"
    assert opt_out["AllowedValues"] == ["false", "true"]
    [rule] = platform["Rules"].values()
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "PlainHttpOnPrivateNetwork"}, "false"]}
    [assertion] = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CertificateArn"}, ""]}]}
    assert "PlainHttpOnPrivateNetwork=true" in assertion["AssertDescription"]
    # Without a certificate the load balancer is internal: plain HTTP never faces the internet.
    balancer = platform["Resources"]["LoadBalancer"]["Properties"]
    assert balancer["Scheme"] == {"Fn::If": ["Https", "internet-facing", "internal"]}
    attributes = {item["Key"]: item["Value"] for item in balancer["LoadBalancerAttributes"]}
    assert attributes["routing.http.xff_header_processing.mode"] == "append"
    http = platform["Resources"]["HttpListener"]["Properties"]["DefaultActions"]["Fn::If"]
    assert http[0] == "Https"
    assert http[1][0]["Type"] == "redirect"
    assert http[1][0]["RedirectConfig"]["Protocol"] == "HTTPS"


def test_the_load_balancer_refuses_metrics_and_readiness() -> None:
    platform = template("platform.yaml")
    [rule] = resources(platform, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
    properties = rule["Properties"]
    assert properties["ListenerArn"] == {
        "Fn::If": ["Https", {"Ref": "HttpsListener"}, {"Ref": "HttpListener"}]
    }
    [condition] = properties["Conditions"]
    assert condition["Field"] == "path-pattern"
    paths = set(condition["PathPatternConfig"]["Values"])
    assert {"/metrics", "/metrics/*", "/readyz", "/readyz/*"} <= paths
    [action] = properties["Actions"]
    assert action["Type"] == "fixed-response"
    assert action["FixedResponseConfig"]["StatusCode"] == "403"
    body = json.loads(action["FixedResponseConfig"]["MessageBody"])
    assert body["error"]["code"] == "forbidden"
    # The target group's health check reaches the gateways directly, on /healthz.
    targets = platform["Resources"]["GatewayTargets"]["Properties"]
    assert targets["HealthCheckPath"] == "/healthz"


def test_gateways_trust_forwarded_headers_and_serve_internal_paths_to_the_vpc_only() -> None:
    gateway = _user_data(template("fleet.yaml"), "GatewayTemplate")
    lines = gateway.splitlines()
    [cidrs] = [line for line in lines if line.startswith("vpc_cidrs=")]
    assert 'network/interfaces/macs/$mac/vpc-ipv4-cidr-blocks"' in cidrs
    assert "AGNEWS_FORWARDED_ALLOW_IPS=$vpc_cidrs" in lines
    assert "AGNEWS_INTERNAL_CIDRS=$vpc_cidrs" in lines
    assert 'test -n "$vpc_cidrs"' in gateway  # no empty list: the gateway would trust no one


def test_gateways_keep_an_idle_connection_longer_than_the_load_balancer_does() -> None:
    # Otherwise the balancer may send a request on a connection the gateway is closing: a 502.
    [balancer] = resources(
        template("platform.yaml"), "AWS::ElasticLoadBalancingV2::LoadBalancer"
    ).values()
    attributes = {
        item["Key"]: item["Value"] for item in balancer["Properties"]["LoadBalancerAttributes"]
    }
    assert Settings().gateway.keep_alive_s > int(attributes["idle_timeout.timeout_seconds"])
    assert "KEEP_ALIVE" not in _user_data(template("fleet.yaml"), "GatewayTemplate")


def _plain_actions(alarm: dict[str, Any]) -> list[Any]:
    """An alarm's actions, where they are a plain list (not one chosen by a condition)."""
    actions = alarm["AlarmActions"]
    return actions if isinstance(actions, list) else []


def test_the_fleet_alarms_when_productions_live_traffic_drifts() -> None:
    alarm = template("fleet.yaml")["Resources"]["ModelDriftAlarm"]["Properties"]
    assert alarm["MetricName"] == MODEL_DRIFT  # what the exporter beside each gateway publishes
    assert alarm["Namespace"] == {
        "Fn::ImportValue": {"Fn::Sub": "${PlatformStackName}-MetricNamespace"}
    }
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Threshold"] == 1
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] == {
        "Fn::If": ["Alerting", [{"Ref": "AlertTopicArn"}], {"Ref": "AWS::NoValue"}]
    }
