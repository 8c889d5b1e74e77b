"""A registered model's card (README.md beside its weights): what it is, what it was trained on,
how it scored and where it should not be trusted. It outlives the job that made it."""

import json
from pathlib import Path

from shared.contracts.models import HISTORY
from shared.contracts.results import Metrics, TrainingHistory, TrainingRecord
from shared.contracts.training import TrainingParams


def model_family(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    return str(config.get("model_type", "unknown"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _scores(metrics: Metrics) -> list[str]:
    rows = [
        [
            label,
            f"{scores.precision:.4f}",
            f"{scores.recall:.4f}",
            f"{scores.f1:.4f}",
            str(scores.support),
        ]
        for label, scores in metrics.per_class.items()
    ]
    confusion = [
        [truth, *map(str, row)]
        for truth, row in zip(metrics.labels, metrics.confusion_matrix, strict=True)
    ]
    return [
        *_table(["class", "precision", "recall", "F1", "support"], rows),
        "",
        "Confusion matrix (rows: true class, columns: predicted):",
        "",
        *_table(["true \\ predicted", *metrics.labels], confusion),
    ]


def _members(metrics: Metrics, training: TrainingRecord) -> list[str]:
    members = metrics.members
    if members is None:
        return ["The transformer alone answers: no linear member was trained beside it."]
    chosen = training.blend
    fitted = (
        f" (the least log-loss on the {chosen.n} validation rows, where the blend scored "
        f"{chosen.blend_accuracy:.4f})"
        if chosen
        else ""
    )
    mean = "mean" if members.mixing == "arithmetic" else "geometric mean"
    return [
        "A blend of the transformer and a linear model (TF-IDF over word 1-2 grams, logistic "
        f"regression) trained on the same rows: a weighted {mean} of their probabilities, the "
        f"linear member's share {members.weight}{fitted}.",
        "",
        *_table(
            ["on test.csv", "accuracy"],
            [
                ["transformer alone", f"{members.transformer_accuracy:.4f}"],
                ["linear member alone", f"{members.linear_accuracy:.4f}"],
                ["blend (what serves)", f"{members.blend_accuracy:.4f}"],
            ],
        ),
    ]


def _evaluation_seconds(metrics: Metrics) -> list[str]:
    if not metrics.evaluation_seconds:
        return []
    spent = ", ".join(
        f"{stage} {seconds:.1f} s" for stage, seconds in metrics.evaluation_seconds.items()
    )
    return [f"The evaluation took {metrics.seconds:.1f} s: {spent}.", ""]


def _serving(metrics: Metrics) -> list[str]:
    check = metrics.serving
    if check is None:
        return ["No serving-form check was recorded."]
    rows = [
        [
            score.form,
            f"{score.accuracy:.4f}",
            f"{score.accuracy_drop_pts:.2f}",
            f"{score.texts_per_s}",
            f"{score.speedup}x",
            "yes" if score.allowed else "no (not built)" if score.error else "no",
        ]
        for score in check.forms
    ]
    return [
        f"Every form scored on the same {check.n} test rows at registration; a form may serve "
        f"at most {check.max_accuracy_drop_pts} points below torch fp32. Each predict worker "
        "times the allowed forms on its own CPU when it loads the model and serves the fastest.",
        "",
        *_table(["form", "accuracy", "points below", "texts/s", "speed", "may serve"], rows),
    ]


def _curves(history: TrainingHistory) -> str:
    counts = [f"{len(history.train)} training-loss", f"{len(history.validation)} validation"]
    if history.adapt:
        counts.append(f"{len(history.adapt)} masked-LM")
    return f"{', '.join(counts[:-1])} and {counts[-1]} points"


def _feedback(params: TrainingParams) -> str:
    if not params.feedback_rows:
        return "No feedback: every row came from an uploaded archive."
    return (
        f"{params.feedback_rows} of the rows are people's corrections (feedback), each trained "
        f"on {params.feedback_repeat} times and none used for validation."
    )


def _teacher(params: TrainingParams) -> list[str]:
    teacher = params.teacher
    if params.role == "teacher":
        return [
            "This model is a distil run's teacher, registered to be served where accuracy "
            "matters more than speed; the run's student, which learnt from it, serves by default.",
            "",
        ]
    if teacher is None:
        return []
    version = f" (version {teacher.version})" if teacher.version else ""
    scored = (
        f", {teacher.test_accuracy:.4f} on test.csv" if teacher.test_accuracy is not None else ""
    )
    return [
        f"Distilled from a teacher{version}: `{teacher.base_model}` fine-tuned on the same rows "
        f"in {teacher.train_seconds / 60:.1f} minutes, reading {teacher.validation_accuracy:.4f} "
        f"on the validation split{scored}. It labelled every training text in "
        f"{teacher.label_seconds / 60:.1f} minutes; {params.distil_weight:.0%} of this model's "
        "loss was the divergence from its probabilities at temperature "
        f"{params.distil_temperature:.3g} (fitted on the validation split), the rest "
        "cross-entropy on the labels.",
        "",
    ]


def _plan(training: TrainingRecord) -> str:
    plan = training.params.plan
    if plan is None:
        return "No training plan was recorded."
    return f"The {plan.describe()}."


def _times(metrics: Metrics) -> list[str]:
    stages = metrics.stage_seconds
    if stages is None:
        return ["No stage was timed."]
    return [
        f"Wall time by stage: {stages.describe()}. Registration and promotion follow this card; "
        "a job's result holds their times too.",
    ]


def model_card(
    *,
    version: str,
    family: str,
    dataset_sha256: str,
    train_rows: int,
    metrics: Metrics,
    training: TrainingRecord,
) -> str:
    params = training.params
    history = training.history
    best = training.validation
    minutes = f"{training.train_seconds / 60:.1f} minutes"
    adaptation = params.plan.adaptation if params.plan is not None else None
    if adaptation is not None and adaptation.seconds is not None:
        minutes += f" ({adaptation.seconds / 60:.1f} of them adapting the encoder first)"
    lines = [
        f"# AG News topic classifier {version}",
        "",
        f"Fine-tuned from `{params.base_model}` ({family}) to sort English news into World, "
        "Sports, Business and Sci/Tech.",
        "",
        "## Data",
        "",
        f"Dataset `{dataset_sha256}`: {train_rows} rows in train.csv, of which "
        f"{params.rows_trained} trained the model and {params.rows_validated} chose it "
        f"(a stratified validation split); {metrics.n} rows of test.csv scored it.",
        "",
        _feedback(params),
        "",
        "## Training",
        "",
        f"{params.steps} steps of batch {params.batch_size} at learning rate {params.lr} "
        f"(warm-up {params.warmup:.0%}, weight decay {params.weight_decay}), texts cut to "
        f"{params.max_length} tokens, {minutes}. The best validation score, "
        f"{best.accuracy:.4f} accuracy at step {best.step} of {best.steps}, chose the weights"
        f"{' (stopped early)' if best.stopped_early else ''}. "
        f"{_curves(history)} are in {HISTORY}.",
        "",
        *_teacher(params),
        _plan(training),
        "",
        *_times(metrics),
        "",
        "## Evaluation on test.csv",
        "",
        f"Accuracy {metrics.accuracy:.4f}, macro-F1 {metrics.macro_f1:.4f} on {metrics.n} rows; "
        f"{metrics.truncated} texts were longer than {params.max_length} tokens and were cut.",
        "",
        *_scores(metrics),
        "",
        *_evaluation_seconds(metrics),
        "## Members",
        "",
        *_members(metrics, training),
        "",
        "## Serving form",
        "",
        *_serving(metrics),
        "",
        "## Intended use and limits",
        "",
        "- Topic of English news headlines and leads, in the four AG News classes; every text "
        "gets one of the four, so text of any other kind gets a confident-looking wrong label.",
        f"- Trained on {params.rows_trained} rows drawn from AG News (news of 2004-2005 from "
        "more than 2,000 sources): later events, names and other regions' news read less well.",
        "- test.csv is drawn from the same source as train.csv; news from elsewhere scores lower.",
        f"- Texts longer than {params.max_length} tokens are judged on their start only "
        "(answers flag them as truncated).",
        "",
        "## Parameters",
        "",
        "```json",
        params.model_dump_json(indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
