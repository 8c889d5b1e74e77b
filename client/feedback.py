"""`agnews feedback`: give a text's right label, list the feedback given, review uncertain answers.

agnews feedback "Stocks rally as oil prices fall" --label Business [--job JOB_ID --index N]
agnews feedback list [--limit 20]
agnews feedback review [--version VERSION] [--limit 20]

`agnews feedback TEXT ...` is short for `agnews feedback give TEXT ...` (a text that reads
`list` or `review` needs the `give`). A label is its name, in any case, or its class index 1-4.
"""

import argparse
import json
from collections.abc import Callable, Sequence

from client.api import GatewayClient
from shared.contracts.feedback import Feedback
from shared.contracts.labels import LABELS

ACTIONS = ("give", "list", "review")
TEXT_SHOWN = 80


def label_argument(value: str) -> str:
    """A label's name from its name in any case, or from its class index (1 to 4)."""
    for label in LABELS:
        if value.strip().lower() == label.lower():
            return label
    if value.strip() in {str(index) for index in range(1, len(LABELS) + 1)}:
        return LABELS[int(value) - 1]
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a label: give {', '.join(LABELS)}, or a class index 1 to {len(LABELS)}"
    )


def add_parser(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", common: argparse.ArgumentParser
) -> None:
    feedback = commands.add_parser(
        "feedback", help="correct or confirm answers, and review the uncertain ones"
    )
    actions = feedback.add_subparsers(dest="action", required=True)
    give_ = actions.add_parser(
        "give",
        parents=[common],
        help="a text's right label (`agnews feedback TEXT --label LABEL` is short for it)",
    )
    give_.add_argument("text")
    give_.add_argument("--label", required=True, type=label_argument, help="name or 1-4")
    give_.add_argument(
        "--job", help="the predict job that answered the text: its version and answer are kept"
    )
    give_.add_argument("--index", type=int, help="the text's place in that job (default: 0)")
    listing = actions.add_parser("list", parents=[common], help="the feedback given last")
    listing.add_argument("--limit", type=int, default=20)
    review_ = actions.add_parser(
        "review", parents=[common], help="uncertain answers that no one has given feedback on"
    )
    review_.add_argument("--version", help="default: production")
    review_.add_argument("--limit", type=int, default=20)


def shorthand(argv: Sequence[str]) -> list[str]:
    """`feedback TEXT ...` as `feedback give TEXT ...`."""
    if len(argv) >= 2 and argv[0] == "feedback" and argv[1] not in (*ACTIONS, "-h", "--help"):
        return ["feedback", "give", *argv[1:]]
    return list(argv)


def _shown(text: str) -> str:
    return text if len(text) <= TEXT_SHOWN else text[: TEXT_SHOWN - 1] + "…"


def _answered(record: Feedback) -> str:
    if record.predicted is None:
        return "its answer is not known"
    verdict = "confirms" if record.agreed else "corrects"
    return f"{verdict} {record.predicted} by {record.model_version or 'an unnamed version'}"


def give(args: argparse.Namespace, client: GatewayClient) -> int:
    record = client.give_feedback(args.text, args.label, args.job, args.index)
    if args.json:
        print(record.model_dump_json())
    else:
        print(f"saved {record.label} ({_answered(record)}): {_shown(record.text)}")
    return 0


def listing(args: argparse.Namespace, client: GatewayClient) -> int:
    records = client.feedback(args.limit)
    if args.json:
        print(json.dumps({"feedback": [record.model_dump(mode="json") for record in records]}))
        return 0
    for record in records:
        was = "-" if record.predicted is None else ("=" if record.agreed else record.predicted)
        print(
            f"{record.label:<9} was {was:<9} {record.given_by or '-':<12} "
            f"{record.at:%Y-%m-%d %H:%M}  {_shown(record.text)}"
        )
    return 0


def review(args: argparse.Namespace, client: GatewayClient) -> int:
    found = client.review(args.version, args.limit)
    if args.json:
        print(found.model_dump_json())
        return 0
    version = found.version or "no model in production"
    if not found.uncertain:
        print(f"{version}: nothing to review")
        return 0
    print(f"{version}: answers below {found.threshold:.0%} confidence, newest first")
    for answer in found.uncertain:
        print(
            f"{answer.label:<9} {answer.confidence:4.0%}  {answer.at:%Y-%m-%d %H:%M}  "
            f"{_shown(answer.text)}"
        )
    return 0


COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace, GatewayClient], int]] = {
    ("feedback", "give"): give,
    ("feedback", "list"): listing,
    ("feedback", "review"): review,
}
