"""Roll the fleet out to an image tag: `python deploy/rollout.py TAG [--wait gateway predict ...]`.

1. Updates the fleet stack with its previous template and every previous parameter value but
   ImageTag: CloudFormation writes a new version of each launch template and points each Auto
   Scaling group at it. Nothing else in the stack can change.
2. Starts an instance refresh of each group: new instances are launched first (the healthy
   capacity never drops below 100 %), then the old ones leave through their drain hook, which
   lets the task in hand finish. A refresh that is still running is cancelled and started anew.
3. Waits for the refreshes of the groups named by --wait.

The same command rolls back: name the previous tag. Credentials and region come from the
environment (CircleCI's OIDC role, or your profile).
"""

import argparse
import sys
import time
from collections.abc import Iterable
from typing import Any

import boto3
from botocore.exceptions import ClientError

ROLES = ("gateway", "predict", "evaluate", "train")
DONE = {"Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"}
PREFERENCES = {
    "MinHealthyPercentage": 100,
    "MaxHealthyPercentage": 200,
    "SkipMatching": True,
}


class RolloutError(RuntimeError):
    pass


def update_image_tag(cloudformation: Any, stack: str, tag: str, poll_s: float) -> dict[str, str]:
    """The stack's outputs after its ImageTag is `tag`."""
    [current] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    parameters: list[dict[str, Any]] = [
        {"ParameterKey": p["ParameterKey"], "UsePreviousValue": True}
        for p in current["Parameters"]
        if p["ParameterKey"] != "ImageTag"
    ]
    parameters.append({"ParameterKey": "ImageTag", "ParameterValue": tag})
    try:
        cloudformation.update_stack(
            StackName=stack, UsePreviousTemplate=True, Parameters=parameters
        )
    except ClientError as exc:
        if "No updates are to be performed" not in str(exc):
            raise
        print(f"{stack} already runs {tag}")
    else:
        print(f"updating {stack} to {tag}")
    while True:
        [state] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        status = state["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            break
        time.sleep(poll_s)
    if status not in ("UPDATE_COMPLETE", "CREATE_COMPLETE"):
        raise RolloutError(f"{stack} is {status}: {state.get('StackStatusReason', '')}")
    return {o["OutputKey"]: o["OutputValue"] for o in state.get("Outputs", [])}


def start_refresh(autoscaling: Any, group: str, poll_s: float) -> str:
    for _ in range(60):
        try:
            response = autoscaling.start_instance_refresh(
                AutoScalingGroupName=group, Strategy="Rolling", Preferences=PREFERENCES
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InstanceRefreshInProgress":
                raise
            print(f"{group}: cancelling the refresh in progress")
            try:
                autoscaling.cancel_instance_refresh(AutoScalingGroupName=group)
            except ClientError as cancel:
                if cancel.response["Error"]["Code"] != "ActiveInstanceRefreshNotFound":
                    raise
            time.sleep(poll_s)
            continue
        refresh_id: str = response["InstanceRefreshId"]
        print(f"{group}: instance refresh {refresh_id}")
        return refresh_id
    raise RolloutError(f"{group}: the refresh in progress would not end")


def wait_for(autoscaling: Any, refreshes: dict[str, str], timeout_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(refreshes)
    failed: list[str] = []
    while pending:
        for group, refresh_id in list(pending.items()):
            [refresh] = autoscaling.describe_instance_refreshes(
                AutoScalingGroupName=group, InstanceRefreshIds=[refresh_id]
            )["InstanceRefreshes"]
            status = refresh["Status"]
            if status in DONE:
                print(f"{group}: {status} {refresh.get('StatusReason', '')}".rstrip())
                del pending[group]
                if status != "Successful":
                    failed.append(group)
        if pending and time.monotonic() > deadline:
            raise RolloutError(f"refreshes still running after {timeout_s}s: {sorted(pending)}")
        if pending:
            time.sleep(poll_s)
    if failed:
        raise RolloutError(f"refreshes did not succeed: {failed}")


def rollout(
    tag: str,
    stack: str,
    wait: Iterable[str] = (),
    timeout_s: float = 3600,
    poll_s: float = 15,
) -> dict[str, str]:
    """Refresh every group onto `tag`; the refresh id of each group."""
    cloudformation = boto3.client("cloudformation")
    autoscaling = boto3.client("autoscaling")
    outputs = update_image_tag(cloudformation, stack, tag, poll_s)
    groups = {role: outputs[f"{role.capitalize()}GroupName"] for role in ROLES}
    refreshes = {groups[role]: start_refresh(autoscaling, groups[role], poll_s) for role in ROLES}
    waited = {groups[role]: refreshes[groups[role]] for role in wait}
    wait_for(autoscaling, waited, timeout_s, poll_s)
    return refreshes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/rollout.py", description=__doc__.split("\n")[0])
    parser.add_argument("tag", help="the image tag to run (a commit SHA)")
    parser.add_argument("--stack", default="agnews-fleet", help="the fleet stack")
    parser.add_argument(
        "--wait", nargs="*", choices=ROLES, default=[], help="roles whose refresh to wait for"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait at most")
    parser.add_argument("--poll", type=float, default=15, help="seconds between polls")
    args = parser.parse_args(argv)
    try:
        rollout(args.tag, args.stack, args.wait, args.timeout, args.poll)
    except (RolloutError, ClientError) as exc:
        print(f"rollout failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
