from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate import classification_metrics, evaluate
from pipeline.predictor import Predictor
from shared.contracts.labels import LABELS
from shared.contracts.models import ModelInfo
from shared.settings import Settings
from testkit.models import Recorder, fast_settings, mini_dataset, tiny_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def test_metrics_of_a_known_confusion() -> None:
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    predicted = np.array([0, 0, 1, 1, 1, 2, 3, 0])
    metrics = classification_metrics(truth, predicted)
    assert metrics.confusion_matrix == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
    assert metrics.accuracy == 5 / 8
    world = metrics.per_class["World"]
    assert (world.precision, world.recall, world.support) == (2 / 3, 2 / 3, 3)
    assert metrics.per_class["Sci/Tech"].model_dump() == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
    }
    f1s = [metrics.per_class[label].f1 for label in LABELS]
    assert metrics.macro_f1 == pytest.approx(sum(f1s) / 4)


def test_evaluation_on_test_csv_is_consistent(model_dir: Path, settings: Settings) -> None:
    dataset = mini_dataset(settings)
    predictor = Predictor.load(model_dir, settings)
    recorder = Recorder()
    metrics = evaluate(
        predictor,
        dataset.test.rows,
        fast_settings(settings),
        recorder,
        dataset_sha256=dataset.sha256,
    )
    confusion = np.array(metrics.confusion_matrix)
    assert confusion.sum() == metrics.n == len(dataset.test.rows) == 80
    assert metrics.accuracy == np.trace(confusion) / 80
    assert confusion.sum(axis=1).tolist() == [20, 20, 20, 20]
    assert [metrics.per_class[label].support for label in LABELS] == [20] * 4
    f1s = [metrics.per_class[label].f1 for label in LABELS]
    assert metrics.macro_f1 == pytest.approx(np.mean(f1s))
    assert metrics.model_version == predictor.version
    assert metrics.dataset_sha256 == dataset.sha256
    assert metrics.seconds >= 0
    assert recorder.steps("evaluate")[-1] == 80
    assert recorder.metrics("evaluation")[0]["accuracy"] == metrics.accuracy

    stored = ModelInfo.model_validate_json((model_dir / "manifest.json").read_bytes()).metrics
    assert stored.accuracy == metrics.accuracy


def test_predictions_are_probabilities_and_flag_truncation(
    model_dir: Path, settings: Settings
) -> None:
    predictor = Predictor.load(model_dir, settings)
    long = "Oil prices climbed again on Tuesday as traders weighed supply worries. " * 20
    texts = ["Stocks rally as the Fed holds rates", long, "Wisconsin routs Penn &lt;b&gt;77-44"]
    predictions = predictor.predict(texts)
    assert len(predictions) == 3
    for prediction in predictions:
        assert set(prediction.scores) == set(LABELS)
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label == LABELS[prediction.label_id]
        assert prediction.scores[prediction.label] == max(prediction.scores.values())
    assert [p.truncated for p in predictions] == [False, True, False]
    alone = predictor.predict([long])[0]
    assert alone.scores == pytest.approx(predictions[1].scores, abs=1e-5)
