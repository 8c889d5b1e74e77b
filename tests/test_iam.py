"""IAM held against the code: each process of the fleet does its work while botocore's hooks
record every AWS call it makes (testkit.aws_calls), and each call must be allowed by the role that
fleet.yaml's instance profile gives that process, as platform.yaml writes its policies. The
decision is ministack's IAM policy evaluator's (testkit.iam); a grant that no call used is printed
for a person to remove or justify.

The stage-level tests run against moto in this process; the end-to-end one runs every process of
the local stack, and the SQS listener and the backlog exporter, which only AWS has, against moto.
"""

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from deploy.backlog_exporter import BacklogExporter
from pipeline import stages
from pipeline.batch import run_batch
from pipeline.datasets import load_dataset
from pipeline.feedback_dataset import feedback_indices, load_origin
from pipeline.report import NullReporter
from shared.contracts.errors import ErrorInfo
from shared.contracts.feedback import Feedback
from shared.contracts.jobs import BatchPredictParams, PipelineParams, new_job_id
from shared.contracts.labels import LABELS
from shared.contracts.results import Prediction, PredictResult
from shared.contracts.times import utcnow
from shared.feedback import FeedbackStore, text_sha256
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.storage import client_options, s3_client
from testkit.archives import MINI_ARCHIVE, make_archive, mini_records
from testkit.aws_calls import AwsCall, Calls, read_calls, recording
from testkit.gateway import serve
from testkit.iam import Deployment, Unmapped, Verdict, check, evaluate, load, requests_of
from testkit.models import Recorder
from testkit.stack import live_stack
from tests.trigger_support import drop_tasks, pipeline_jobs
from workers.listener.sqs import SqsListener
from workers.listener.trigger import PipelineTrigger, scan_incoming

ROLES = {
    "gateway": "GatewayRole",
    "listener": "GatewayRole",
    "exporter": "GatewayRole",
    "predict": "PredictRole",
    "evaluate": "EvaluateRole",
    "train": "TrainRole",
}


def allowed(verdict: Verdict) -> None:
    assert not verdict.denied, "calls the roles' policies deny:\n" + "\n".join(verdict.denied)


def test_each_process_runs_under_the_role_of_its_instances() -> None:
    deployment = Deployment("agnews-test")
    assert {process: deployment.role_of(process) for process in ROLES} == ROLES
    fleet = load("fleet.yaml")["Resources"]

    def user_data(launch: str) -> str:
        script: str = fleet[launch]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"][
            "Fn::Sub"
        ][0]
        return script

    gateway = user_data("GatewayTemplate")
    assert "run gateway " in gateway
    assert "python -m workers.listener" in gateway
    assert "python -m deploy.backlog_exporter" in gateway
    for queue in ("predict", "evaluate", "train"):
        assert f"WORKER_QUEUE={queue}\n" in user_data(f"{queue.title()}Template")


def call(process: str, service: str, operation: str, **params: Any) -> AwsCall:
    return AwsCall(process, service, operation, params)


def test_the_policies_are_read_as_aws_reads_them() -> None:
    """Object and bucket ARNs, object versions, conditions and other buckets and queues."""
    deployment = Deployment("agnews-test", queue_name="agnews-events")
    bucket = {"Bucket": "agnews-test"}
    queue = "https://sqs.us-east-1.amazonaws.com/123456789012/agnews-events"
    good = [
        call("gateway", "s3", "GetObject", Key="models/v1/manifest.json", **bucket),
        call("gateway", "s3", "HeadBucket", **bucket),
        call("gateway", "cloudwatch", "PutMetricData", Namespace="AGNEWS"),
        call("listener", "sqs", "DeleteMessageBatch", QueueUrl=queue),
        call("evaluate", "s3", "GetObject", Key="incoming/a/archive.zip", VersionId="3", **bucket),
        call("train", "s3", "PutObject", Key="checkpoints/job/latest.json", **bucket),
        call("predict", "s3", "ListObjectsV2", Prefix="models/v1/", **bucket),
    ]
    bad = [
        call("exporter", "cloudwatch", "PutMetricData", Namespace="AWS/EC2"),
        call("predict", "s3", "PutObject", Key="models/production.json", **bucket),
        call("predict", "s3", "GetObject", Key="datasets/a/archive.zip", **bucket),
        call("evaluate", "s3", "GetObject", Key="models/v1/manifest.json", Bucket="elsewhere"),
        call(
            "evaluate", "s3", "DeleteObject", Key="incoming/a/archive.zip", VersionId="3", **bucket
        ),
        call("train", "s3", "DeleteObjects", Objects=[{"Key": "models/v1/x"}], **bucket),
        call("listener", "sqs", "ReceiveMessage", QueueUrl=queue.replace("agnews-events", "other")),
    ]
    verdict = check([*good, *bad], deployment)
    denied = "\n".join(verdict.denied)
    for made in bad:
        assert made.describe() in denied
    assert len(verdict.denied) == len(bad), denied
    with pytest.raises(Unmapped):
        requests_of(call("gateway", "s3", "PutBucketPolicy", **bucket), deployment)


def test_an_explicit_deny_wins_over_any_allow() -> None:
    statement = {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/*"}
    deny = {**statement, "Effect": "Deny", "Resource": "arn:aws:s3:::b/secret/*"}
    job = {
        "account": "123456789012",
        "region": "us-east-1",
        "policies": {"R": [{"Statement": [statement]}, {"Statement": [deny]}]},
        "requests": [
            {
                "role": "R",
                "action": "s3:GetObject",
                "resource": f"arn:aws:s3:::b/{key}",
                "context": {},
            }
            for key in ("public/x", "secret/x")
        ],
        "grants": [],
    }
    decisions = [answer["decision"] for answer in evaluate(job)["decisions"]]
    assert decisions == ["Allow", "Deny"]


def test_the_evaluate_workers_may_ingest_and_hold_uploads_to_the_holdout(
    settings: Settings,
) -> None:
    """The first dataset's test.csv becomes the holdout; the second is checked against it."""
    work = settings.run.data_dir.parent
    first = make_archive(work / "first.zip")
    second = make_archive(work / "second.zip", test=mini_records("test.csv")[8:])
    with recording() as calls:
        calls.acting_as("evaluate")
        for archive in (first, second):
            stages.ingest(str(archive), settings, Recorder())
    keys = {made.params.get("Key", "") for made in calls}
    assert any(key.startswith(settings.storage.holdout_prefix) for key in keys), keys
    allowed(check(calls, Deployment(settings.storage.bucket)))


def test_a_with_feedback_pipeline_may_read_feedback_into_a_dataset_and_train_on_it(
    settings: Settings,
) -> None:
    """The evaluate worker's ingest reads feedback and writes a dataset with its origin; the
    train worker reads them both back. Neither may write feedback."""
    stages.ingest(str(make_archive(settings.run.data_dir.parent / "a.zip")), settings, Recorder())
    text = "Quorvex Zentrino flumoxes the grebbly yarndrive"
    FeedbackStore.from_settings(settings.storage).put(
        Feedback(
            text=text,
            text_sha256=text_sha256(text),
            label="Sports",
            given_by=None,
            model_version=None,
            predicted=None,
            agreed=None,
            from_job=False,
            at=utcnow(),
        )
    )
    with recording() as calls:
        calls.acting_as("evaluate")
        sha = stages.ingest_with_feedback(None, settings, Recorder()).dataset_sha256
        calls.acting_as("train")
        dataset = load_dataset(sha, settings, settings.run.data_dir / "train")
        assert len(feedback_indices(dataset.train.rows, load_origin(sha, settings))) == 1
    keys = {made.params.get("Key", "") for made in calls}
    assert f"{settings.storage.datasets_prefix}{sha}/feedback.json" in keys
    allowed(check(calls, Deployment(settings.storage.bucket)))
    writes = [
        call(role, "s3", "PutObject", Key="feedback/2026-12-07/x.json", Bucket="b")
        for role in ("evaluate", "train")
    ]
    assert len(check(writes, Deployment("b")).denied) == 2


class AnsweringFleet:
    """The predict fleet as a batch job sees it (pipeline.batch.Fleet), through Redis only: each
    chunk answered at once, every text World."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}

    def send(self, texts: list[str]) -> str:
        job_id = new_job_id()
        self.pending[job_id] = len(texts)
        return job_id

    def answers(self, job_ids: Sequence[str]) -> dict[str, PredictResult | ErrorInfo]:
        scores = {label: float(label == LABELS[0]) for label in LABELS}
        world = Prediction(label=LABELS[0], label_id=0, scores=scores, truncated=False)
        return {
            job_id: PredictResult(
                model_version="v1",
                form="torch-fp32",
                predictions=[world] * self.pending.pop(job_id),
            )
            for job_id in job_ids
        }


def test_a_batch_job_may_read_its_upload_write_its_predictions_and_hand_them_out(
    settings: Settings,
) -> None:
    """The gateway presigns the upload of a file of texts and takes the job; the evaluate worker
    reads the file, writes each chunk's part, lists the parts, joins them into predictions.csv
    and deletes them, and, resumed after its end, reads predictions.csv back; the gateway then
    presigns its download."""
    body = ("text\n" + "".join(f"Markets move on day {day}\n" for day in range(10))).encode()
    config = settings.replace(batch_chunk_texts=4)
    store = JobStore.from_settings(config)
    with recording() as calls:
        calls.acting_as("gateway")
        with serve(config) as gateway, httpx.Client(base_url=gateway.url) as http:
            ticket = http.post("/v1/uploads", json={"filename": "texts.csv", "size": len(body)})
            assert ticket.status_code == 200, ticket.text
            assert httpx.put(ticket.json()["put_url"], content=body).is_success
            submitted = {"type": "batch_predict", "dataset": ticket.json()["key"]}
            created = http.post("/v1/jobs", json=submitted)
            assert created.status_code == 202, created.text
        job = store.get(created.json()["id"])
        assert isinstance(job.params, BatchPredictParams)
        calls.acting_as("evaluate")
        s3 = s3_client(config.storage)
        for _ in range(2):  # the second time as a job resumed after its end
            result = run_batch(
                job.id, job.params.dataset, config, NullReporter(), AnsweringFleet(), s3
            )
            assert result.rows == 10
        store.succeed(job.id, result)
        calls.acting_as("gateway")
        with serve(config) as gateway, httpx.Client(base_url=gateway.url) as http:
            output = http.get(f"/v1/jobs/{job.id}/output")
            assert output.status_code == 200, output.text
    drop_tasks(config, {job.id})
    downloaded = httpx.get(output.json()["url"])
    assert downloaded.status_code == 200
    assert downloaded.text.splitlines()[1].startswith(f"1,{LABELS[0]},0,")
    made = {(each.process, each.operation, each.presigned) for each in calls}
    assert {
        ("evaluate", "ListObjectsV2", False),
        ("evaluate", "PutObject", False),
        ("evaluate", "DeleteObjects", False),
        ("gateway", "GetObject", True),
    } <= made
    verdict = check(calls, Deployment(config.storage.bucket))
    allowed(verdict)
    for sid in (
        "EvaluateRole/evaluate BatchPredictions:",
        "GatewayRole/gateway PresignBatchOutputs:",
    ):
        assert not [grant for grant in verdict.unused if grant.startswith(sid)], verdict.unused


def aws_only_calls(settings: Settings) -> tuple[Calls, str]:
    """What only AWS runs: the SQS listener takes an upload's event from the queue of a versioned
    bucket and scans incoming/, the evaluate workers ingest the exact object version the event
    named, and the backlog exporter publishes once. Their calls, and the queue's name."""
    aws = client_options(settings.storage)
    sqs: Any = boto3.client("sqs", **aws)
    name = f"{settings.storage.bucket}-events"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    s3 = s3_client(settings.storage)
    s3.put_bucket_versioning(
        Bucket=settings.storage.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    s3.put_bucket_notification_configuration(
        Bucket=settings.storage.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn["QueueArn"], "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    key = f"{settings.storage.incoming_prefix}iam/archive.zip"
    put = s3.put_object(Bucket=settings.storage.bucket, Key=key, Body=MINI_ARCHIVE.read_bytes())
    groups = group_names(settings)
    listening = settings.replace(sqs_queue_url=url, sqs_wait_time_s=1)
    before = {job.id for job in pipeline_jobs(settings)}
    with recording() as calls:
        calls.acting_as("listener")
        trigger = PipelineTrigger.from_settings(listening)

        async def poll() -> None:
            async with SqsListener(listening, trigger) as listener:
                for _ in range(3):
                    if (await listener.poll_once()).received:
                        return

        asyncio.run(poll())
        scan_incoming(trigger, s3_client(listening.storage), listening.listener.scan_max_age_s)
        [params] = [job.params for job in pipeline_jobs(settings) if job.id not in before]
        assert isinstance(params, PipelineParams)
        assert params.source is not None
        # S3's events name the object's version (moto's do not): the ingest task reads that one
        version = params.source.version_id or put["VersionId"]
        calls.acting_as("evaluate")
        stages.ingest(params.dataset, settings, Recorder(), version_id=version)
        calls.acting_as("exporter")
        exporter = BacklogExporter.from_settings(
            settings.replace(backlog_groups=groups, metrics_namespace="AGNEWS")
        )
        exporter.publish_once()
    drop_tasks(settings, {job.id for job in pipeline_jobs(settings)} - before)
    sqs.close()
    return calls, name


def group_names(settings: Settings) -> dict[str, str]:
    aws = client_options(settings.storage)
    ec2: Any = boto3.client("ec2", **aws)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    autoscaling: Any = boto3.client("autoscaling", **aws)
    suffix = settings.redis.key_prefix
    autoscaling.create_launch_configuration(
        LaunchConfigurationName=f"iam-{suffix}", ImageId=image, InstanceType="t3.micro"
    )
    groups = {queue: f"iam-{queue}-{suffix}" for queue in ("predict", "evaluate", "train")}
    for group in groups.values():
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=group,
            LaunchConfigurationName=f"iam-{suffix}",
            AvailabilityZones=[f"{settings.storage.region}a"],
            MinSize=0,
            MaxSize=1,
            DesiredCapacity=0,
        )
    return groups


def test_the_sqs_listener_the_ingest_of_its_event_and_the_exporter_may_do_what_they_do(
    settings: Settings,
) -> None:
    calls, queue = aws_only_calls(settings)
    made = {(each.process, each.operation) for each in calls}
    assert {("listener", "ReceiveMessage"), ("listener", "DeleteMessageBatch")} <= made
    assert {("listener", "ListObjectsV2"), ("exporter", "PutMetricData")} <= made
    assert any(each.process == "evaluate" and "VersionId" in each.params for each in calls)
    allowed(check(calls, Deployment(settings.storage.bucket, queue_name=queue)))


def wait_for(client: httpx.Client, key: str, timeout_s: float = 900) -> dict[str, Any]:
    """The pipeline job of an upload, once it has ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = client.get("/v1/jobs", params={"type": "pipeline", "limit": 100}).json()["jobs"]
        found = [job for job in listed if (job["params"].get("source") or {}).get("key") == key]
        if found and found[0]["status"] in ("succeeded", "failed", "cancelled"):
            job: dict[str, Any] = found[0]
            return job
        time.sleep(1)
    raise TimeoutError(f"no pipeline job for {key} ended in {timeout_s}s")


def upload(client: httpx.Client, archive: Path, *, form: bool) -> str:
    """An archive.zip put through an upload ticket of the gateway's, by its presigned POST form
    (as the terminal client does) or by its presigned PUT URL."""
    body = archive.read_bytes()
    ticket = client.post("/v1/uploads", json={"filename": archive.name, "size": len(body)})
    assert ticket.status_code == 200, ticket.text
    signed = ticket.json()
    if form:
        files = {"file": (archive.name, body, "application/zip")}
        put = httpx.post(signed["url"], data=signed["fields"], files=files, timeout=60)
    else:
        put = httpx.put(signed["put_url"], content=body, timeout=60)
    assert put.is_success, put.text
    key: str = signed["key"]
    return key


def batch_job(client: httpx.Client, texts: Path, timeout_s: float = 300) -> None:
    """A file of texts put through a ticket, classified by a batch_predict job, and its
    predictions.csv downloaded through the presigned URL the gateway answers."""
    created = client.post(
        "/v1/jobs", json={"type": "batch_predict", "dataset": upload(client, texts, form=False)}
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + timeout_s
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["status"] == "succeeded", job.get("error")
    output = client.get(f"/v1/jobs/{job_id}/output")
    assert output.status_code == 200, output.text
    downloaded = httpx.get(output.json()["url"], timeout=60)
    assert downloaded.status_code == 200
    assert len(downloaded.text.splitlines()) == 1 + job["result"]["rows"]


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    folder = tmp_path / "aws-calls"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_every_process_of_the_fleet_may_make_the_calls_it_makes(
    settings: Settings, tmp_path: Path, recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two uploads through tickets (the second held to the holdout the first pinned), a
    prediction, a batch job over an uploaded file, the models read and one promoted by hand:
    every process of the local stack; then the SQS listener and the backlog exporter against
    moto, on a bucket of the same name."""
    with (
        live_stack(
            tmp_path / "stack", training_profile="quick", pipeline_max_steps=6, aws_calls=recorded
        ) as stack,
        httpx.Client(base_url=stack.url, timeout=60) as client,
    ):
        first = wait_for(client, upload(client, MINI_ARCHIVE, form=True))
        assert first["status"] == "succeeded", first.get("error")
        version = first["result"]["version"]
        answer = client.post("/v1/predict", json={"texts": ["Stocks rally as oil prices fall"]})
        assert answer.json()["model_version"] == version
        texts = tmp_path / "texts.csv"
        texts.write_text("text\n" + "".join(f"Stocks rally on day {day}\n" for day in range(40)))
        batch_job(client, texts)
        second_archive = make_archive(tmp_path / "second.zip", test=mini_records("test.csv")[8:])
        second = wait_for(client, upload(client, second_archive, form=False))
        assert second["status"] == "succeeded", second.get("error")
        assert client.get("/v1/models").status_code == 200
        assert client.get(f"/v1/models/{second['result']['version']}").status_code == 200
        promoted = client.post(
            f"/v1/models/{second['result']['version']}/promote", json={"reason": "iam test"}
        )
        assert promoted.status_code == 200, promoted.text
        bucket = stack.settings.storage.bucket
    calls = read_calls(recorded)
    assert {made.process for made in calls} == {
        "gateway",
        "listener",
        "predict",
        "evaluate",
        "train",
    }

    moto = settings.replace(bucket=bucket)
    s3_client(moto.storage).create_bucket(Bucket=bucket)
    more, queue = aws_only_calls(moto)
    verdict = check([*calls, *more], Deployment(bucket, queue_name=queue))
    with capsys.disabled():
        print(f"\n{len(calls) + len(more)} AWS calls, {verdict.requests} distinct IAM requests")
        for grant in verdict.unused:
            print(f"WARNING: no call used {grant}: remove it, or say in platform.yaml why it stays")
    allowed(verdict)
    summary = json.dumps(sorted({f"{c.process} {c.service}:{c.operation}" for c in calls}))
    assert "evaluate s3:PutObject" in summary
    batch = [made for made in calls if made.params.get("Key", "").startswith("predictions/")]
    assert {(made.process, made.operation, made.presigned) for made in batch} >= {
        ("evaluate", "PutObject", False),
        ("evaluate", "GetObject", False),
        ("gateway", "GetObject", True),
    }
