"""Retraining with feedback: a with_feedback ingest writes the last accepted dataset plus every
text's latest feedback as a new dataset under ingest's guards, and training always trains on
its feedback rows; a model learns the label people gave a text it answered wrongly."""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline import stages
from pipeline.datasets import load_dataset
from pipeline.feedback_dataset import feedback_indices, load_origin
from pipeline.predictor import Predictor
from pipeline.registry import download_prefix
from pipeline.train import split_rows
from shared.contracts.errors import DatasetNotFound, NoFeedback
from shared.contracts.feedback import Feedback
from shared.contracts.labels import LABELS
from shared.contracts.results import TrainingRecord
from shared.contracts.training import TrainConfig
from shared.feedback import FeedbackStore, text_sha256
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from shared.text import clean_text
from testkit.archives import make_archive, mini_records
from testkit.models import Recorder, fast_settings

# A text of words the base dataset never uses, so what a model answers for it is its own guess.
NOVEL = "Quorvex Zentrino flumoxes the grebbly yarndrive at Plonkham"


def give(settings: Settings, text: str, label: str, *, at: datetime | None = None) -> None:
    cleaned = clean_text(text)
    FeedbackStore.from_settings(settings.storage).put(
        Feedback(
            text=cleaned,
            text_sha256=text_sha256(cleaned),
            label=label,  # type: ignore[arg-type]
            given_by="ann",
            model_version=None,
            predicted=None,
            agreed=None,
            from_job=False,
            at=at or datetime.now(UTC),
        )
    )


def first_dataset(settings: Settings) -> str:
    archive = make_archive(settings.run.data_dir.parent / "base.zip")
    return stages.ingest(str(archive), settings, Recorder()).dataset_sha256


def label_of(record: list[str]) -> str:
    return LABELS[int(record[0]) - 1]


def test_feedback_joins_the_last_dataset_as_a_new_one_and_wins_where_a_text_disagrees(
    settings: Settings,
) -> None:
    base_sha = first_dataset(settings)
    train = mini_records("train.csv")
    relabelled, confirmed = train[0], train[1]
    other = LABELS[(LABELS.index(label_of(relabelled)) + 1) % len(LABELS)]
    give(settings, f"{relabelled[1]}. {relabelled[2]}", other)
    give(settings, f"{confirmed[1]}. {confirmed[2]}", label_of(confirmed))
    give(settings, NOVEL, "Sports")
    held_out = mini_records("test.csv")[0]  # the first dataset's test.csv is the holdout
    give(settings, f"{held_out[1]}. {held_out[2]}", label_of(held_out))

    recorder = Recorder()
    output = stages.ingest_with_feedback(None, settings, recorder)

    assert output.dataset_sha256 != base_sha
    assert output.report.accepted
    origin = load_origin(output.dataset_sha256, settings)
    assert origin is not None
    assert output.origin == origin
    assert (origin.base_sha256, origin.feedback_rows) == (base_sha, 3)
    assert (origin.relabelled, origin.confirmed, origin.left_out) == (1, 1, 1)
    base = load_dataset(base_sha, settings, settings.run.data_dir / "d")
    merged = load_dataset(output.dataset_sha256, settings, settings.run.data_dir / "d")
    assert [row.text for row in merged.test.rows] == [row.text for row in base.test.rows]
    assert len(merged.train.rows) == len(base.train.rows) - 2 + 3
    labels = {row.text: LABELS[row.label] for row in merged.train.rows}
    assert labels[clean_text(relabelled[1], relabelled[2])] == other
    assert labels[NOVEL] == "Sports"
    assert clean_text(held_out[1], held_out[2]) not in labels
    feedback = [merged.train.rows[i].text for i in feedback_indices(merged.train.rows, origin)]
    assert sorted(feedback) == sorted(
        [
            clean_text(relabelled[1], relabelled[2]),
            clean_text(confirmed[1], confirmed[2]),
            NOVEL,
        ]
    )
    assert "3 feedback rows: 1 of its rows relabelled, 1 confirmed, 1 left out" in "\n".join(
        recorder.logs()
    )

    # Built again on itself (the dataset accepted last), with the same feedback: the same
    # dataset, its feedback read once, not twice.
    again = stages.ingest_with_feedback(None, settings, Recorder())
    assert again.dataset_sha256 == output.dataset_sha256
    # A changed label is a new dataset, built on the one before, the label changed in place.
    give(settings, NOVEL, "World")
    changed = stages.ingest_with_feedback(None, settings, Recorder())
    newest = load_dataset(changed.dataset_sha256, settings, settings.run.data_dir / "d")
    assert len(newest.train.rows) == len(merged.train.rows)
    assert {row.text: LABELS[row.label] for row in newest.train.rows}[NOVEL] == "World"


def test_a_with_feedback_ingest_without_feedback_or_dataset_fails_clearly(
    settings: Settings,
) -> None:
    with pytest.raises(NoFeedback, match="no feedback has been given yet"):
        stages.ingest_with_feedback(None, settings, Recorder())
    give(settings, NOVEL, "Sports")
    with pytest.raises(DatasetNotFound, match="no dataset has been accepted yet"):
        stages.ingest_with_feedback(None, settings, Recorder())
    first_dataset(settings)
    held_out = mini_records("test.csv")[3]
    store = FeedbackStore.from_settings(settings.storage)
    store.s3.delete_object(Bucket=settings.storage.bucket, Key=store.key(store.all()[0]))
    give(settings, f"{held_out[1]}. {held_out[2]}", label_of(held_out))
    with pytest.raises(NoFeedback, match="all 1 feedback texts are in the promotion holdout"):
        stages.ingest_with_feedback(None, settings, Recorder())


def test_feedback_rows_are_always_trained_on_and_never_validate() -> None:
    labels = np.array([index % len(LABELS) for index in range(400)])
    config = TrainConfig(train_rows=40, val_fraction=0.1, feedback_repeat=3)
    feedback = [5, 77, 391]
    train, validation = split_rows(labels, config, feedback)
    assert not set(feedback) & set(validation.tolist())
    assert [int((train == index).sum()) for index in feedback] == [3, 3, 3]
    assert len(train) == 40 + 9
    assert len(validation) == round(0.1 * 397)
    # Without feedback, the split is what it always was.
    plain_train, plain_validation = split_rows(labels, config)
    assert len(plain_train) == 40
    assert len(plain_validation) == 40


def trained_answer(settings: Settings, job_id: str, sha: str, steps: int) -> tuple[str, Path]:
    record = stages.train(job_id, sha, settings, Recorder(), max_steps=steps)
    model_dir = download_prefix(
        s3_client(settings.storage),
        settings.storage.bucket,
        stages.trained_model_prefix(job_id, settings),
        settings.run.data_dir / job_id,
    )
    predictor = Predictor.from_files(
        model_dir, settings, version="v", max_length=record.params.max_length
    )
    return predictor.predict([NOVEL])[0].label, model_dir


def test_a_model_learns_the_label_people_gave_a_text_it_answered_wrongly(
    settings: Settings,
) -> None:
    fast = fast_settings(settings)
    base_sha = first_dataset(fast)
    before, _ = trained_answer(fast, "before", base_sha, steps=30)
    wanted = LABELS[(LABELS.index(before) + 1) % len(LABELS)]
    give(fast, NOVEL, wanted)

    merged = stages.ingest_with_feedback(None, fast, Recorder()).dataset_sha256
    after, model_dir = trained_answer(fast, "after", merged, steps=30)

    assert (before, after) == (before, wanted)
    training = TrainingRecord.model_validate_json((model_dir / stages.TRAINING).read_bytes())
    assert training.params.feedback_rows == 1
    info = stages.evaluate_and_register("after", merged, fast, Recorder())
    card = ModelRegistry.from_settings(fast.storage).record(info.version).card
    assert card is not None
    assert "1 of the rows are people's corrections (feedback), each trained on 4 times" in card
