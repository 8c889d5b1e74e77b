"""Run by ministack's interpreter (tests/deploy_support.MINISTACK_PYTHON), not the project's: IAM
decisions by ministack's policy evaluator, the engine behind its AUTH=true enforcement.

stdin: {"account", "region", "policies": {ROLE: [DOCUMENT, ...]}, "requests": [REQUEST, ...],
"grants": [GRANT, ...]}, where a REQUEST is {"role", "action", "resource", "context"} and a GRANT
{"role", "statement"} (one Allow statement of the role's). stdout: {"decisions": [{"decision",
"sid"}, ...] (one per request: Allow, Deny or ImplicitDeny), "used": [[REQUEST INDEX, ...], ...]
(one per grant: the requests it alone allows)}.
"""

import json
import sys
from typing import Any

from ministack.core.iam_evaluator import EvalContext, evaluate, parse_policy_document


def context(job: dict[str, Any], request: dict[str, Any]) -> EvalContext:
    role = request["role"]
    return EvalContext(
        principal_arn=f"arn:aws:sts::{job['account']}:assumed-role/{role}/i-0123456789abcdef0",
        principal_type="AssumedRole",
        principal_account=job["account"],
        action=request["action"],
        resource_arn=request["resource"],
        region=job["region"],
        source_ip="10.0.1.10",
        secure_transport=True,
        service_context={key.lower(): value for key, value in request["context"].items()},
    )


def main() -> None:
    job = json.load(sys.stdin)
    policies = {
        role: [parse_policy_document(document) for document in documents]
        for role, documents in job["policies"].items()
    }
    requests = job["requests"]
    contexts = [context(job, request) for request in requests]
    decisions = []
    for request, ctx in zip(requests, contexts, strict=True):
        result = evaluate(ctx, policies[request["role"]])
        decisions.append({"decision": result.decision, "sid": result.matched_sid})
    used = []
    for grant in job["grants"]:
        alone = [parse_policy_document({"Statement": [grant["statement"]]})]
        used.append(
            [
                index
                for index, (request, ctx) in enumerate(zip(requests, contexts, strict=True))
                if request["role"] == grant["role"]
                and decisions[index]["decision"] == "Allow"
                and evaluate(ctx, alone).decision == "Allow"
            ]
        )
    json.dump({"decisions": decisions, "used": used}, sys.stdout)


if __name__ == "__main__":
    main()
