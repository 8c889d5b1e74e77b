"""`agnews`: drive a gateway from a terminal; train, evaluate and predict locally.

agnews jobs submit pipeline data/archive.zip --follow     (a local archive is uploaded first)
agnews jobs submit pipeline s3://agnews/incoming/x/archive.zip
agnews jobs submit pipeline --with-feedback               (the last dataset plus people's feedback)
agnews jobs submit batch-predict news.csv --follow        (then: agnews jobs output JOB_ID)
agnews jobs list --type pipeline
agnews jobs follow JOB_ID
agnews jobs cancel JOB_ID
agnews models list | show VERSION | monitor [VERSION] | promote VERSION | rollback
agnews models challenge VERSION --share 0.1 | dismiss
agnews models fetch-base mpnet      (install all-mpnet-base-v2 as a base model: docs/training.md)
agnews classify "Stocks rally as oil prices fall" "Federer wins in straight sets"
agnews feedback "Stocks rally as oil prices fall" --label Business [--job JOB_ID --index N]
agnews feedback list | review [--version VERSION]

The gateway is --url (AGNEWS_GATEWAY_URL), the key --key (AGNEWS_API_KEY). With --json a command
prints only JSON on stdout: one document, or one event per line while following. Exit codes:
0 done; 1 the job failed or was cancelled; 2 bad usage; 3 the gateway refused the request;
4 not found; 5 no key or not allowed; 6 gateway or object store unreachable or failing.
`agnews train|evaluate|predict` work on local model folders (see `agnews train --help`).
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, TypeAdapter, ValidationError

from client import base_models, feedback
from client.api import GatewayClient, GatewayError
from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import Job, JobParams, JobStatus, JobType
from shared.contracts.labels import LABELS
from shared.contracts.monitor import ChallengeReport
from shared.contracts.results import BatchPredictResult, PredictResult
from shared.progress import ProgressBars
from shared.settings import Settings

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_UNAUTHORIZED, EXIT_UNAVAILABLE = 3, 4, 5, 6
CLIENT_COMMANDS = ("jobs", "models", "classify", "feedback")
LOCAL_COMMANDS = ("train", "evaluate", "predict")
JOB_PARAMS: TypeAdapter[JobParams] = TypeAdapter(JobParams)

Command = Callable[[argparse.Namespace, GatewayClient], int]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the gateway (default: AGNEWS_GATEWAY_URL or localhost)")
    common.add_argument("--key", help="an API key (default: AGNEWS_API_KEY)")
    common.add_argument("--json", action="store_true", help="print only JSON on stdout")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="agnews", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    jobs = commands.add_parser("jobs", help="submit, list, follow and cancel jobs")
    job_commands = jobs.add_subparsers(dest="action", required=True)
    submit = job_commands.add_parser("submit", parents=[common], help="start a job")
    submit.add_argument("type", choices=["pipeline", "train", "evaluate", "batch-predict"])
    submit.add_argument(
        "dataset",
        nargs="?",
        help="s3://bucket/key, a key, or a local file (pipeline: an archive.zip; batch-predict: "
        "a .csv or .jsonl of texts); with --with-feedback, default: the dataset accepted last",
    )
    submit.add_argument(
        "--with-feedback",
        action="store_true",
        help="pipeline: train on the dataset plus every text's latest feedback",
    )
    submit.add_argument("--profile", choices=["quick", "full", "distil"])
    submit.add_argument("--base-model")
    submit.add_argument("--max-steps", type=int)
    submit.add_argument("--model-version", help="evaluate: the version (default: production)")
    submit.add_argument("--promote", action="store_true", help="train: promote if better")
    submit.add_argument("--follow", action="store_true", help="then follow it to its end")
    listing = job_commands.add_parser("list", parents=[common], help="recent jobs")
    listing.add_argument("--type", choices=[kind.value for kind in JobType])
    listing.add_argument("--status", choices=[status.value for status in JobStatus])
    listing.add_argument("--limit", type=int, default=20)
    output = job_commands.add_parser(
        "output", parents=[common], help="download a batch job's predictions.csv"
    )
    output.add_argument("job_id")
    output.add_argument("--to", type=Path, help="the file (default: predictions-JOB_ID.csv)")
    for action, text in (("show", "a job"), ("follow", "live progress"), ("cancel", "cancel")):
        job_commands.add_parser(action, parents=[common], help=text).add_argument("job_id")

    models = commands.add_parser("models", help="the model registry")
    model_commands = models.add_subparsers(dest="action", required=True)
    model_commands.add_parser("list", parents=[common], help="registered versions")
    model_commands.add_parser("show", parents=[common], help="one version").add_argument("version")
    model_commands.add_parser(
        "monitor", parents=[common], help="live traffic against the holdout, and drift"
    ).add_argument("version", nargs="?", help="default: production")
    promote = model_commands.add_parser("promote", parents=[common], help="serve a version")
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted from the terminal")
    challenge = model_commands.add_parser(
        "challenge", parents=[common], help="score a version on a share of live traffic"
    )
    challenge.add_argument("version")
    challenge.add_argument("--share", type=float, default=0.1, help="of answered texts (0-1]")
    challenge.add_argument("--reason", default="named from the terminal")
    model_commands.add_parser("dismiss", parents=[common], help="stop scoring the challenger")
    rollback = model_commands.add_parser("rollback", parents=[common], help="serve the previous")
    rollback.add_argument("--reason", default="rolled back from the terminal")
    base_models.add_parser(model_commands)

    classify = commands.add_parser("classify", parents=[common], help="classify texts")
    classify.add_argument("texts", nargs="+", metavar="TEXT")
    feedback.add_parser(commands, common)
    for name in LOCAL_COMMANDS:
        commands.add_parser(name, help=f"local: see `agnews {name} --help`", add_help=False)
    return parser


def _print_json(value: BaseModel | list[BaseModel]) -> None:
    if isinstance(value, list):
        print(json.dumps([item.model_dump(mode="json") for item in value]))
    else:
        print(value.model_dump_json())


def _job_line(job: Job) -> str:
    error = f"  {job.error.code}: {job.error.message}" if job.error else ""
    created = f"{job.created_at:%Y-%m-%d %H:%M}"
    done = ""
    if isinstance(job.result, BatchPredictResult):
        scored = "" if job.result.accuracy is None else f", accuracy {job.result.accuracy:.2%}"
        done = f"  {job.result.rows} rows at {job.result.rows_per_s:g}/s{scored}"
    return f"{job.id}  {job.type.value:<8} {job.status.value:<9} {created}{error}{done}"


def _follow(args: argparse.Namespace, client: GatewayClient, job_id: str) -> int:
    view = None if args.json else ProgressBars()
    try:
        for event in client.events(job_id):
            if view is None:
                print(event.model_dump_json(), flush=True)
            else:
                view.show(event)
    finally:
        if view is not None:
            view.close()
    job = client.job(job_id)
    if not args.json:
        print(_job_line(job))
    return EXIT_OK if job.status is JobStatus.succeeded else EXIT_JOB_FAILED


# What a pipeline may be asked beyond its dataset: an upload's pipeline takes none of them.
TUNED = ("profile", "base_model", "max_steps")


def jobs_submit(args: argparse.Namespace, client: GatewayClient) -> int:
    job_type = args.type.replace("-", "_")
    dataset = args.dataset
    if dataset is None and not args.with_feedback:
        raise GatewayError(400, _error("name the dataset: an s3:// URL, a key or a local file"))
    local = Path(dataset or "")
    if args.with_feedback and (job_type != "pipeline" or local.is_file()):
        raise GatewayError(
            400,
            _error(
                "--with-feedback starts a pipeline on a dataset in the bucket: give its s3:// URL "
                "or key, or none for the dataset accepted last"
            ),
        )
    if dataset is not None and local.is_file() and job_type == "pipeline":
        given = [f"--{name.replace('_', '-')}" for name in TUNED if getattr(args, name)]
        if given:
            raise GatewayError(
                400,
                _error(
                    f"{', '.join(given)}: a local archive starts the pipeline its upload starts, "
                    "on the server's defaults; upload it and name its s3:// key to choose them"
                ),
            )
        job = client.job_for_upload(client.upload(local))
    else:
        if dataset is not None and local.is_file():
            if job_type != "batch_predict":
                raise GatewayError(
                    400,
                    _error("a local archive starts a pipeline; train and evaluate need s3:// keys"),
                )
            dataset = client.upload(local)
        fields = {
            "type": job_type,
            "dataset": dataset,
            "profile": args.profile,
            "base_model": args.base_model,
            "max_steps": args.max_steps,
            "model_version": args.model_version,
            "promote": args.promote or None,
            "with_feedback": args.with_feedback or None,
        }
        try:
            params = JOB_PARAMS.validate_python({k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            raise GatewayError(422, _error(str(exc))) from exc
        job = client.submit(params)
    _print_job(args, job)
    return _follow(args, client, job.id) if args.follow else EXIT_OK


def jobs_output(args: argparse.Namespace, client: GatewayClient) -> int:
    target = args.to or Path(f"predictions-{args.job_id}.csv")
    key = client.download_output(args.job_id, target)
    if args.json:
        print(json.dumps({"key": key, "file": str(target)}))
    else:
        print(f"saved {key} to {target}")
    return EXIT_OK


def jobs_list(args: argparse.Namespace, client: GatewayClient) -> int:
    type_ = JobType(args.type) if args.type else None
    status = JobStatus(args.status) if args.status else None
    jobs = client.jobs(type_, status, args.limit)
    if args.json:
        _print_json(list(jobs))
    else:
        for job in jobs:
            print(_job_line(job))
    return EXIT_OK


def _print_job(args: argparse.Namespace, job: Job) -> None:
    print(job.model_dump_json() if args.json else _job_line(job))


def jobs_show(args: argparse.Namespace, client: GatewayClient) -> int:
    job = client.job(args.job_id)
    _print_job(args, job)
    if not args.json:
        print(job.model_dump_json(indent=2, exclude={"id", "type", "status"}))
    return EXIT_OK


def jobs_follow(args: argparse.Namespace, client: GatewayClient) -> int:
    return _follow(args, client, args.job_id)


def jobs_cancel(args: argparse.Namespace, client: GatewayClient) -> int:
    _print_job(args, client.cancel(args.job_id))
    return EXIT_OK


def models_list(args: argparse.Namespace, client: GatewayClient) -> int:
    models, production = client.models()
    if args.json:
        print(
            json.dumps(
                {
                    "models": [model.model_dump(mode="json") for model in models],
                    "production": production.model_dump(mode="json") if production else None,
                }
            )
        )
        return EXIT_OK
    serving = production.version if production else None
    for model in models:
        mark = "*" if model.version == serving else " "
        print(
            f"{mark} {model.version}  {model.base_model:<24} "
            f"accuracy {model.metrics.accuracy:.4f}  macro-F1 {model.metrics.macro_f1:.4f}"
        )
    return EXIT_OK


def models_show(args: argparse.Namespace, client: GatewayClient) -> int:
    record = client.model(args.version)
    if args.json:
        print(record.model_dump_json())
    else:
        print(record.card or record.info.model_dump_json(indent=2))
    return EXIT_OK


def models_monitor(args: argparse.Namespace, client: GatewayClient) -> int:
    report = client.monitor(args.version)
    if args.json:
        print(report.model_dump_json())
        return EXIT_OK
    live, reference = report.live, report.reference
    print(
        f"{report.version}: {live.n} texts in the last {report.window_minutes} min, "
        f"{report.total_texts} since it served"
    )
    print(f"{'label':<10} {'live':>7} {'holdout':>8}")
    for label in LABELS:
        print(
            f"{label:<10} {_share(live.labels.get(label, 0), live.n):>7} "
            f"{_share(reference.labels.get(label, 0), reference.n) if reference else '-':>8}"
        )
    for score in report.drift:
        psi = "-" if score.psi is None else f"{score.psi:.3f}"
        mark = "  DRIFTED" if score.drifted else ""
        print(f"drift {score.signal:<10} PSI {psi:>6} (threshold {score.threshold:g}){mark}")
    for figures in report.forward:
        print(
            f"forward {figures.form:<10} {figures.texts_per_pass:>5} texts/pass  "
            f"{figures.passes} passes, {figures.mean_seconds * 1000:.1f} ms each"
        )
    if report.challenge is not None:
        _print_challenge(report.challenge)
    return EXIT_OK


def _print_challenge(challenge: ChallengeReport) -> None:
    agreement = "-" if challenge.agreement is None else f"{challenge.agreement:.1%}"
    latency = "-" if challenge.mean_seconds is None else f"{challenge.mean_seconds * 1000:.1f} ms"
    print(
        f"challenger {challenge.challenger} on {challenge.share:.0%} beside "
        f"{challenge.production}: {challenge.scored} scored, agreement {agreement}, "
        f"{challenge.failed} failed, {latency} a pass"
    )
    for label in challenge.by_label:
        rate = "-" if label.rate is None else f"{label.rate:.1%}"
        print(f"  agrees on {label.label:<9} {rate:>7} of {label.scored}")
    for d in challenge.disagreements[:5]:
        print(
            f"  {d.production_label} {d.production_confidence:.0%} / "
            f"{d.challenger_label} {d.challenger_confidence:.0%}: {d.text[:80]}"
        )


def models_challenge(args: argparse.Namespace, client: GatewayClient) -> int:
    pointer = client.challenge(args.version, args.share, args.reason)
    if args.json:
        print(pointer.model_dump_json())
    else:
        print(f"challenger is now {pointer.version} on {pointer.share:.0%} of answered texts")
    return EXIT_OK


def models_dismiss(args: argparse.Namespace, client: GatewayClient) -> int:
    pointer = client.dismiss()
    print(pointer.model_dump_json() if args.json else f"challenger {pointer.version} dismissed")
    return EXIT_OK


def _share(count: int, total: int) -> str:
    return f"{count / total:.1%}" if total else "-"


def models_promote(args: argparse.Namespace, client: GatewayClient) -> int:
    pointer = client.promote(args.version, args.reason)
    print(pointer.model_dump_json() if args.json else f"production is now {pointer.version}")
    return EXIT_OK


def models_rollback(args: argparse.Namespace, client: GatewayClient) -> int:
    pointer = client.rollback(args.reason)
    print(pointer.model_dump_json() if args.json else f"production is back to {pointer.version}")
    return EXIT_OK


def classify(args: argparse.Namespace, client: GatewayClient) -> int:
    answer = client.classify(args.texts)
    if isinstance(answer, Job):
        return _follow(args, client, answer.id)
    if args.json:
        _print_json(answer)
    else:
        _print_predictions(args.texts, answer)
    return EXIT_OK


def _print_predictions(texts: Sequence[str], answer: PredictResult) -> None:
    for text, prediction in zip(texts, answer.predictions, strict=True):
        score = prediction.scores[prediction.label]
        cut = " (truncated)" if prediction.truncated else ""
        print(f"{prediction.label:<9} {score:6.1%}  {text}{cut}")


def _error(message: str) -> ErrorInfo:
    return ErrorInfo(code="bad_request", message=message)


COMMANDS: dict[tuple[str, str | None], Command] = {
    ("jobs", "submit"): jobs_submit,
    ("jobs", "list"): jobs_list,
    ("jobs", "show"): jobs_show,
    ("jobs", "follow"): jobs_follow,
    ("jobs", "cancel"): jobs_cancel,
    ("jobs", "output"): jobs_output,
    ("models", "list"): models_list,
    ("models", "show"): models_show,
    ("models", "monitor"): models_monitor,
    ("models", "promote"): models_promote,
    ("models", "challenge"): models_challenge,
    ("models", "dismiss"): models_dismiss,
    ("models", "rollback"): models_rollback,
    ("classify", None): classify,
    **feedback.COMMANDS,
}


def exit_code(error: GatewayError) -> int:
    if error.status == 404:
        return EXIT_NOT_FOUND
    if error.status in (401, 403):
        return EXIT_UNAUTHORIZED
    if error.status == 0 or error.status >= 500:
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LOCAL_COMMANDS:
        from pipeline.cli import main as local_main  # the ML stack, only when asked for

        return local_main(argv)
    args = _parser().parse_args(feedback.shorthand(argv))
    settings = Settings()
    if (args.command, getattr(args, "action", None)) == ("models", "fetch-base"):
        return base_models.fetch_base(args, settings.run.data_dir)  # local: no gateway
    url, key = args.url or settings.client.gateway_url, args.key or settings.client.api_key
    with GatewayClient(url, key) as client:
        try:
            return COMMANDS[(args.command, getattr(args, "action", None))](args, client)
        except GatewayError as error:
            print(f"agnews {args.command}: {error.error.message}", file=sys.stderr)
            return exit_code(error)
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
