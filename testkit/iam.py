"""IAM held against the code: the fleet's roles as the templates write them, for one concrete
deployment, and the requests that recorded AWS calls (testkit.aws_calls) make of them.

`Deployment` resolves platform.yaml's policies (`!Sub`, `!Ref`, `!GetAtt`, `!ImportValue`) to the
ARNs of a test bucket and queue; `requests_of` turns a call into the IAM requests AWS authorizes
(an action on a resource, with its condition keys); `check` decides each of them with ministack's
IAM policy evaluator, run by ministack's own interpreter, and names the grants no call used.
"""

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cfnlint.decode import cfn_yaml

from testkit.aws_calls import AwsCall

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "deploy" / "cloudformation"
MINISTACK_PYTHON = ROOT / ".venv" / "ministack" / "bin" / "python"
EVALUATOR = Path(__file__).resolve().parent / "iam_eval.py"

# What runs on each launch template of fleet.yaml besides a queue's workers (see its user data).
GATEWAY_PROCESSES = ("gateway", "listener", "exporter")
# A process that runs on no instance: the test itself, setting up what the fleet finds.
INSTANCE = "instance"


class Unmapped(Exception):
    """A call whose IAM action this module does not know: add it to requests_of."""


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = cfn_yaml.load(str(TEMPLATES / name))
    return loaded


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        conditions = "".join(f", {key}={value}" for key, value in self.context)
        return f"{self.action} on {self.resource}{conditions}"


@dataclass(frozen=True)
class Grant:
    """One action on one resource pattern of an Allow statement, with its conditions."""

    policy: str  # the managed policy's logical id, or ROLE/inline-policy-name
    sid: str
    action: str
    resource: str
    condition: dict[str, Any] = field(hash=False, compare=False)

    def describe(self) -> str:
        where = f" if {json.dumps(self.condition)}" if self.condition else ""
        return f"{self.policy} {self.sid}: {self.action} on {self.resource}{where}"


@dataclass(frozen=True)
class Deployment:
    """The four stacks deployed with their default names, around one bucket and one queue."""

    bucket: str
    queue_name: str = "agnews-data-events"
    region: str = "us-east-1"
    account: str = "123456789012"
    partition: str = "aws"
    data_stack: str = "agnews-data"
    platform_stack: str = "agnews-platform"
    fleet_stack: str = "agnews-fleet"

    @property
    def queue_arn(self) -> str:
        return f"arn:{self.partition}:sqs:{self.region}:{self.account}:{self.queue_name}"

    def data_exports(self) -> dict[str, str]:
        prefix = self.data_stack
        return {
            f"{prefix}-BucketName": self.bucket,
            f"{prefix}-BucketArn": f"arn:{self.partition}:s3:::{self.bucket}",
            f"{prefix}-IncomingPrefix": "incoming/",
            f"{prefix}-QueueArn": self.queue_arn,
            f"{prefix}-QueueUrl": f"https://sqs.{self.region}.amazonaws.com/{self.account}/"
            f"{self.queue_name}",
        }

    def platform(self) -> "Stack":
        parameters = {"DataStackName": self.data_stack, "FleetStackName": self.fleet_stack}
        return Stack(
            self, load("platform.yaml"), self.platform_stack, parameters, self.data_exports()
        )

    def exports(self) -> dict[str, str]:
        return {**self.data_exports(), **self.platform().exports()}

    def fleet(self) -> "Stack":
        parameters = {
            "DataStackName": self.data_stack,
            "PlatformStackName": self.platform_stack,
            "ImageTag": "0123abcd",
        }
        return Stack(self, load("fleet.yaml"), self.fleet_stack, parameters, self.exports())

    def role_of(self, process: str) -> str:
        """The role an instance profile gives `process`, as fleet.yaml and platform.yaml say."""
        launch = "GatewayTemplate" if process in GATEWAY_PROCESSES else f"{process.title()}Template"
        return self.role_of_template(launch)

    def role_of_template(self, launch: str) -> str:
        fleet = load("fleet.yaml")
        data = fleet["Resources"][launch]["Properties"]["LaunchTemplateData"]
        export = data["IamInstanceProfile"]["Arn"]["Fn::ImportValue"]["Fn::Sub"]
        output = export.removeprefix("${PlatformStackName}-")
        platform = load("platform.yaml")
        profile, _ = platform["Outputs"][output]["Value"]["Fn::GetAtt"]
        [role] = platform["Resources"][profile]["Properties"]["Roles"]
        name: str = role["Ref"]
        return name

    def roles(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """Each role's policy documents, resolved, each with the name of the policy it is: inline,
        managed and the standalone AWS::IAM::Policy resources that name the role."""
        platform = self.platform()
        found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for name, resource in platform.template["Resources"].items():
            if resource["Type"] != "AWS::IAM::Role":
                continue
            properties = resource["Properties"]
            documents = [
                (
                    ref["Ref"],
                    platform.resolve(
                        platform.template["Resources"][ref["Ref"]]["Properties"]["PolicyDocument"]
                    ),
                )
                for ref in properties.get("ManagedPolicyArns", [])
            ]
            documents += [
                (f"{name}/{policy['PolicyName']}", platform.resolve(policy["PolicyDocument"]))
                for policy in properties.get("Policies", [])
            ]
            found[name] = documents
        for name, resource in platform.template["Resources"].items():
            if resource["Type"] != "AWS::IAM::Policy":
                continue
            properties = resource["Properties"]
            for role in properties["Roles"]:
                found[role["Ref"]].append(
                    (
                        f"{name}/{properties['PolicyName']}",
                        platform.resolve(properties["PolicyDocument"]),
                    )
                )
        return found

    def instance_calls(self) -> list[AwsCall]:
        """What each instance's user data does with AWS (the aws CLI, docker's image pulls and
        its awslogs driver), under the name of its launch template."""
        fleet = self.fleet()
        calls: list[AwsCall] = []
        for launch, resource in fleet.template["Resources"].items():
            if resource["Type"] != "AWS::EC2::LaunchTemplate":
                continue
            user_data = resource["Properties"]["LaunchTemplateData"]["UserData"]
            calls += user_data_calls(launch, fleet.resolve(user_data["Fn::Base64"]), self)
        return calls


_SUB = re.compile(r"\$\{([^!}][^}]*)\}")


@dataclass
class Stack:
    """One template deployed as `name`: its intrinsic functions resolved to concrete values."""

    deployment: Deployment
    template: dict[str, Any]
    name: str
    parameters: dict[str, str]
    imports: dict[str, str] = field(default_factory=dict)

    def parameter(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        declared = self.template["Parameters"][name]
        if "Default" not in declared:
            raise Unresolvable(f"parameter {name} has no default: give it to the Stack")
        return str(declared["Default"])

    def reference(self, name: str) -> str:
        d = self.deployment
        pseudo = {
            "AWS::Partition": d.partition,
            "AWS::Region": d.region,
            "AWS::AccountId": d.account,
            "AWS::StackName": self.name,
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.template.get("Parameters", {}):
            return self.parameter(name)
        if "." in name:
            logical, attribute = name.split(".", 1)
            return self.attribute(logical, attribute)
        resource = self.template["Resources"][name]
        properties = resource.get("Properties", {})
        kind = resource["Type"]
        if kind == "AWS::SecretsManager::Secret":
            secret = self.resolve(properties["Name"])
            return f"arn:{d.partition}:secretsmanager:{d.region}:{d.account}:secret:{secret}-AbCdEf"
        if kind == "AWS::Logs::LogGroup":
            return str(self.resolve(properties["LogGroupName"]))
        if kind == "AWS::IAM::ManagedPolicy":
            return f"arn:{d.partition}:iam::{d.account}:policy/{self.name}-{name}-0ABCDEF"
        return f"{self.name}-{name}-0ABCDEF"

    def attribute(self, logical: str, attribute: str) -> str:
        d = self.deployment
        kind = self.template["Resources"][logical]["Type"]
        if (kind, attribute) == ("AWS::Logs::LogGroup", "Arn"):
            group = self.reference(logical)
            return f"arn:{d.partition}:logs:{d.region}:{d.account}:log-group:{group}:*"
        if (kind, attribute) == ("AWS::IAM::InstanceProfile", "Arn"):
            return f"arn:{d.partition}:iam::{d.account}:instance-profile/{self.name}-{logical}"
        return f"<{logical}.{attribute}>"  # an address (Redis's, the LB's): no policy names one

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            [(function, argument)] = value.items()
            if function == "Ref":
                return self.reference(argument)
            if function == "Fn::GetAtt":
                logical, attribute = argument
                return self.attribute(logical, attribute)
            if function == "Fn::Sub":
                return self.substitute(argument)
            if function == "Fn::ImportValue":
                name = self.resolve(argument)
                if name not in self.imports:
                    raise Unresolvable(f"ImportValue {name}")
                return self.imports[name]
            if function == "Fn::Join":
                separator, items = argument
                return separator.join(self.resolve(items))
            if function.startswith("Fn::"):
                raise Unresolvable(function)
        return {key: self.resolve(item) for key, item in value.items()}

    def substitute(self, argument: str | list[Any]) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {name: str(self.resolve(expression)) for name, expression in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            return values[name] if name in values else self.reference(name)

        return _SUB.sub(replace, text).replace("${!", "${")

    def exports(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for output in self.template.get("Outputs", {}).values():
            if "Export" not in output:
                continue
            try:
                found[self.resolve(output["Export"]["Name"])] = str(self.resolve(output["Value"]))
            except Unresolvable:
                continue  # the subnets, given at deployment: no policy names them
        return found


class Unresolvable(Exception):
    """An intrinsic function or attribute the policies do not use."""


_CLI = re.compile(r"\baws ([a-z0-9-]+) ([a-z0-9-]+)((?:[ ]+--?[a-z0-9-]+(?:[ ]+[^ \n-][^ \n]*)?)*)")
_IMAGE = re.compile(r"\.amazonaws\.com/([a-z0-9._/-]+):[A-Za-z0-9_.${}-]+")
_LOG_GROUP = re.compile(r"awslogs-group=(\S+)")
_PULL = ("BatchCheckLayerAvailability", "BatchGetImage", "GetDownloadUrlForLayer")


def _option(options: str, name: str) -> str:
    found = re.search(rf"--{name} +(\S+)", options)
    if found is None:
        raise Unmapped(f"no --{name} in {options!r}")
    return found.group(1)


def user_data_calls(launch: str, script: str, deployment: Deployment) -> list[AwsCall]:
    """The AWS calls of one instance's user data: every `aws SERVICE COMMAND` must be known."""
    text = re.sub(r"\\\n\s*", " ", script)  # one line per command
    calls: list[AwsCall] = []
    for service, command, options in _CLI.findall(text):
        if (service, command) == ("secretsmanager", "get-secret-value"):
            calls.append(
                AwsCall(
                    launch, service, "GetSecretValue", {"SecretId": _option(options, "secret-id")}
                )
            )
        elif (service, command) == ("ssm", "get-parameter"):
            calls.append(
                AwsCall(launch, service, "GetParameter", {"Name": _option(options, "name")})
            )
        elif (service, command) == ("ecr", "get-login-password"):
            calls.append(AwsCall(launch, service, "GetAuthorizationToken"))
        elif (service, command) == ("autoscaling", "complete-lifecycle-action"):
            group = _option(options, "auto-scaling-group-name")
            calls.append(
                AwsCall(launch, service, "CompleteLifecycleAction", {"AutoScalingGroupName": group})
            )
        else:
            raise Unmapped(f"{launch}'s user data runs `aws {service} {command}`: map it here")
    for repository in sorted(set(_IMAGE.findall(text))):
        calls += [AwsCall(launch, "ecr", pull, {"repositoryName": repository}) for pull in _PULL]
    for group in sorted(set(_LOG_GROUP.findall(text))):
        stream = {"LogGroupName": group, "LogStreamName": "i-0123456789abcdef0/container"}
        calls += [
            AwsCall(launch, "logs", name, stream) for name in ("CreateLogStream", "PutLogEvents")
        ]
    return calls


# S3 operations on an object, and on the bucket, by the IAM action each needs.
S3_OBJECT = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
}
S3_VERSIONED = {"s3:GetObject": "s3:GetObjectVersion", "s3:DeleteObject": "s3:DeleteObjectVersion"}
S3_BUCKET = {
    "ListObjectsV2": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
}
SQS = {
    "ReceiveMessage": "sqs:ReceiveMessage",
    "DeleteMessage": "sqs:DeleteMessage",
    "DeleteMessageBatch": "sqs:DeleteMessage",
    "ChangeMessageVisibility": "sqs:ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "GetQueueAttributes": "sqs:GetQueueAttributes",
}
RESOURCELESS = {
    ("cloudwatch", "PutMetricData"),
    ("autoscaling", "DescribeAutoScalingGroups"),
    ("ecr", "GetAuthorizationToken"),
}


def _object(bucket: str, key: str, d: Deployment) -> str:
    return f"arn:{d.partition}:s3:::{bucket}/{key}"


def _s3_requests(call: AwsCall, d: Deployment) -> list[Request]:
    params, operation = call.params, call.operation
    bucket = params["Bucket"]
    if operation in S3_BUCKET:
        keys = (("Prefix", "s3:prefix"), ("Delimiter", "s3:delimiter"), ("MaxKeys", "s3:max-keys"))
        context = tuple((key, str(params[name])) for name, key in keys if name in params)
        return [Request(S3_BUCKET[operation], f"arn:{d.partition}:s3:::{bucket}", context)]
    if operation in S3_OBJECT:
        action = S3_OBJECT[operation]
        if "VersionId" in params:
            action = S3_VERSIONED.get(action, action)
        return [Request(action, _object(bucket, params["Key"], d))]
    if operation == "DeleteObjects":
        return [
            Request(
                "s3:DeleteObjectVersion" if "VersionId" in item else "s3:DeleteObject",
                _object(bucket, item["Key"], d),
            )
            for item in params["Objects"]
        ]
    if operation == "CopyObject":
        source = params["CopySource"]
        if isinstance(source, str):
            path, _, query = unquote(source).lstrip("/").partition("?versionId=")
            source_bucket, _, source_key = path.partition("/")
            version = query or None
        else:
            source_bucket, source_key = source["Bucket"], source["Key"]
            version = source.get("VersionId")
        read = "s3:GetObjectVersion" if version else "s3:GetObject"
        return [
            Request("s3:PutObject", _object(bucket, params["Key"], d)),
            Request(read, _object(source_bucket, source_key, d)),
        ]
    raise Unmapped(call.describe())


def requests_of(call: AwsCall, d: Deployment) -> list[Request]:
    """The IAM requests AWS authorizes for one call (a presigned one: when it is used)."""
    service, operation, params = call.service, call.operation, call.params
    if service == "s3":
        return _s3_requests(call, d)
    if service == "sqs" and operation in SQS:
        name = urlparse(params["QueueUrl"]).path.rstrip("/").rsplit("/", 1)[-1]
        return [Request(SQS[operation], f"arn:{d.partition}:sqs:{d.region}:{d.account}:{name}")]
    if (service, operation) in RESOURCELESS:
        context: tuple[tuple[str, str], ...] = ()
        if service == "cloudwatch":
            context = (("cloudwatch:namespace", str(params["Namespace"])),)
        return [Request(f"{service}:{operation}", "*", context)]
    if (service, operation) == ("autoscaling", "CompleteLifecycleAction"):
        group = params["AutoScalingGroupName"]
        arn = (
            f"arn:{d.partition}:autoscaling:{d.region}:{d.account}:autoScalingGroup:"
            f"0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d:autoScalingGroupName/{group}"
        )
        return [Request("autoscaling:CompleteLifecycleAction", arn)]
    if (service, operation) == ("ssm", "GetParameter"):
        name = params["Name"]
        return [
            Request(
                "ssm:GetParameter", f"arn:{d.partition}:ssm:{d.region}:{d.account}:parameter{name}"
            )
        ]
    if (service, operation) == ("secretsmanager", "GetSecretValue"):
        return [Request("secretsmanager:GetSecretValue", params["SecretId"])]
    if service == "ecr":
        repository = params["repositoryName"]
        arn = f"arn:{d.partition}:ecr:{d.region}:{d.account}:repository/{repository}"
        return [Request(f"ecr:{operation}", arn)]
    if service == "logs" and operation in ("CreateLogStream", "PutLogEvents"):
        group, stream = params["LogGroupName"], params["LogStreamName"]
        arn = f"arn:{d.partition}:logs:{d.region}:{d.account}:log-group:{group}:log-stream:{stream}"
        return [Request(f"logs:{operation}", arn)]
    raise Unmapped(call.describe())


def grants(roles: dict[str, list[tuple[str, dict[str, Any]]]]) -> Iterator[tuple[str, Grant]]:
    for role, documents in roles.items():
        for policy, document in documents:
            for statement in document["Statement"]:
                if statement["Effect"] != "Allow":
                    continue
                for action in _listed(statement["Action"]):
                    for resource in _listed(statement["Resource"]):
                        condition = statement.get("Condition", {})
                        yield (
                            role,
                            Grant(policy, statement.get("Sid", ""), action, resource, condition),
                        )


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@dataclass
class Verdict:
    denied: list[str]  # "ROLE may not ACTION on RESOURCE: CALL"
    unused: list[str]  # grants no call used
    requests: int


def check(
    calls: Iterable[AwsCall], deployment: Deployment, *, processes: dict[str, str] | None = None
) -> Verdict:
    """Every call against its role's policies: what they deny, and the grants nothing used.

    `processes` names the role of each process (by default, as fleet.yaml and platform.yaml
    give it); the instances' own calls (`Deployment.instance_calls`) count too."""
    calls = [*calls, *deployment.instance_calls()]
    roles = deployment.roles()
    role_of: dict[str, str] = dict(processes or {})
    unique: dict[tuple[str, Request], AwsCall] = {}
    for call in calls:
        if call.process not in role_of:
            launch = call.process if call.process.endswith("Template") else None
            role_of[call.process] = (
                deployment.role_of_template(launch) if launch else deployment.role_of(call.process)
            )
        for request in requests_of(call, deployment):
            unique.setdefault((role_of[call.process], request), call)
    keys = list(unique)
    every = list(grants(roles))
    job = {
        "account": deployment.account,
        "region": deployment.region,
        "policies": {role: [doc for _, doc in documents] for role, documents in roles.items()},
        "requests": [
            {"role": role, "action": r.action, "resource": r.resource, "context": dict(r.context)}
            for role, r in keys
        ],
        "grants": [
            {
                "role": role,
                "statement": {
                    "Effect": "Allow",
                    "Action": grant.action,
                    "Resource": grant.resource,
                    **({"Condition": grant.condition} if grant.condition else {}),
                },
            }
            for role, grant in every
        ],
    }
    answer = evaluate(job)
    denied = [
        f"{role} may not {request.describe()} ({decision['decision']}): "
        f"{unique[(role, request)].describe()}"
        for (role, request), decision in zip(keys, answer["decisions"], strict=True)
        if decision["decision"] != "Allow"
    ]
    used: dict[Grant, bool] = {}
    for (_, grant), users in zip(every, answer["used"], strict=True):
        used[grant] = used.get(grant, False) or bool(users)
    unused = [grant.describe() for grant, was in used.items() if not was]
    return Verdict(sorted(denied), sorted(unused), len(keys))


def evaluate(job: dict[str, Any]) -> dict[str, Any]:
    if not MINISTACK_PYTHON.exists():
        raise RuntimeError(
            f"{MINISTACK_PYTHON} is missing: run scripts/bootstrap.sh test (or `make test`)"
        )
    result = subprocess.run(
        [str(MINISTACK_PYTHON), str(EVALUATOR)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ministack's evaluator failed: {result.stderr}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer
