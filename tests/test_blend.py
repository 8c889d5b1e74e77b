"""The linear member: trained beside the transformer, blended by a weight fitted on validation
rows only, stored without pickles, served by the same predictor, and optional."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.ingest import read_archive
from pipeline.linear import (
    LINEAR_CONFIG,
    LINEAR_WEIGHTS,
    LinearConfig,
    LinearMember,
    fit_linear,
    fit_weight,
    mix,
    word_terms,
)
from pipeline.predictor import Predictor
from pipeline.stages import train_model
from pipeline.train import split_rows
from shared.contracts.models import ModelInfo
from shared.contracts.results import MemberScores
from shared.contracts.training import BlendMixing, TrainConfig
from shared.settings import Settings
from testkit.archives import MINI_ARCHIVE
from testkit.families import tiny_family_model
from testkit.models import Recorder


def trained(tmp_path: Path, **changes: object) -> tuple[ModelInfo, Settings, TrainConfig]:
    settings = Settings(data_dir=tmp_path / "data", progress_interval_s=60.0, torch_threads=1)
    config = TrainConfig(
        base_model=str(tiny_family_model("bert", tmp_path / "base")),
        batch_size=8,
        max_steps=6,
        val_fraction=0.2,
        bf16=False,
    ).model_copy(update=changes)
    dataset = read_archive(MINI_ARCHIVE, settings)
    info, _ = train_model(config, dataset, tmp_path / "model", settings, Recorder())
    return info, settings, config


@pytest.mark.parametrize("mixing", ["arithmetic", "geometric"])
def test_the_weight_favours_the_member_that_is_right(mixing: BlendMixing) -> None:
    labels = np.array([0, 1, 2, 3] * 5)
    right = np.eye(4, dtype=np.float32)[labels] * 0.7 + 0.075
    wrong = np.eye(4, dtype=np.float32)[(labels + 1) % 4] * 0.7 + 0.075
    assert fit_weight(right, wrong, labels, mixing) == 0.0
    assert fit_weight(wrong, right, labels, mixing) == 1.0


def test_a_geometric_blend_is_the_weighted_product_made_to_sum_to_one() -> None:
    transformer = np.array([[0.8, 0.15, 0.03, 0.02], [0.25, 0.25, 0.25, 0.25]], dtype=np.float32)
    linear = np.array([[0.01, 0.5, 0.3, 0.19], [0.0, 0.5, 0.5, 0.0]], dtype=np.float32)
    product = transformer**0.6 * linear**0.4
    expected = product / product.sum(axis=1, keepdims=True)
    assert mix(transformer, linear, 0.4, "geometric") == pytest.approx(expected, abs=1e-6)
    assert mix(transformer, linear, 0.4, "arithmetic") == pytest.approx(
        0.6 * transformer + 0.4 * linear
    )
    # The first row's members disagree: their mean follows the surer transformer, their
    # geometric mean turns from the class the linear member all but rules out.
    assert mix(transformer, linear, 0.4, "arithmetic")[0].argmax() == 0
    assert mix(transformer, linear, 0.4, "geometric")[0].argmax() == 1
    assert mix(transformer, linear, 0.0, "geometric") == pytest.approx(transformer)
    assert mix(transformer, linear, 1.0, "geometric") == pytest.approx(linear, abs=1e-6)
    # A class one member gives no chance keeps none, without NaN.
    assert np.isfinite(mix(transformer, linear, 0.4, "geometric")).all()
    assert mix(transformer, linear, 0.4, "geometric")[1, [0, 3]] == pytest.approx([0, 0], abs=1e-9)


def test_a_member_saved_before_geometric_blending_still_blends_by_the_mean(
    tmp_path: Path,
) -> None:
    rows = read_archive(MINI_ARCHIVE, Settings(data_dir=tmp_path / "data")).train.rows
    labels = np.array([row.label for row in rows])
    config = LinearConfig(mixing="geometric", weight=0.3)
    fit_linear([row.text for row in rows], labels, config).save(tmp_path)
    saved = json.loads((tmp_path / LINEAR_CONFIG).read_text())
    del saved["mixing"]
    (tmp_path / LINEAR_CONFIG).write_text(json.dumps(saved))
    old = LinearMember.load(tmp_path)
    assert old is not None
    assert old.config.mixing == "arithmetic"
    transformer = np.tile(np.array([0.7, 0.1, 0.1, 0.1], dtype=np.float32), (2, 1))
    linear = np.tile(np.array([0.1, 0.6, 0.2, 0.1], dtype=np.float32), (2, 1))
    assert old.mix(transformer, linear) == pytest.approx(0.7 * transformer + 0.3 * linear)
    scores = MemberScores.model_validate(
        {
            "n": 2,
            "weight": 0.3,
            "transformer_accuracy": 1,
            "linear_accuracy": 1,
            "blend_accuracy": 1,
        }
    )
    assert scores.mixing == "arithmetic"


def test_the_blend_weight_is_the_one_of_least_log_loss_not_of_best_accuracy() -> None:
    # The transformer is sure of three rows and surely wrong on the fourth; the linear member is
    # unsure but right on all. Accuracy is best from 0.75 on; log-loss is least at 0.4.
    labels = np.zeros(4, dtype=np.int64)
    sure = np.array([0.97, 0.01, 0.01, 0.01], dtype=np.float32)
    transformer = np.stack([sure, sure, sure, np.roll(sure, 1)])
    linear = np.tile(np.array([0.4, 0.2, 0.2, 0.2], dtype=np.float32), (4, 1))
    assert fit_weight(transformer, linear, labels, "arithmetic") == 0.4


def test_the_member_serves_the_vectorizer_s_features_fitted_and_loaded(tmp_path: Path) -> None:
    rows = read_archive(MINI_ARCHIVE, Settings(data_dir=tmp_path / "data")).train.rows
    texts = [row.text for row in rows]
    member = fit_linear(texts, np.array([row.label for row in rows]), LinearConfig(min_df=1))
    member.save(tmp_path)
    loaded = LinearMember.load(tmp_path)
    assert loaded is not None
    unseen = ["Zyxwv qwerty", "", "Stocks rally; stocks RALLY as oil falls", *texts[:50]]
    for served in (member, loaded):
        vectorizer = TfidfVectorizer(
            ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32, vocabulary=served.terms
        )
        vectorizer.idf_ = served.idf
        expected = np.asarray(vectorizer.transform(unseen) @ served.coef.T) + served.bias
        assert served.logits(unseen) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("ngram_max", [1, 2, 3])
def test_the_member_counts_the_terms_scikit_learn_counts(tmp_path: Path, ngram_max: int) -> None:
    rows = read_archive(MINI_ARCHIVE, Settings(data_dir=tmp_path / "data")).train.rows
    texts = [
        *(row.text for row in rows),
        "Ünïcödé CAFÉ in São Paulo; ΑΘΗΝΑ 2004 — 東京 株価",
        "a I x_y __init__ 3-2 #39;s &lt;b&gt; O'Neil's $1.5bn U.S. e-mail",
        "one",
        "",
        " \t\n ",
    ]
    analyze = TfidfVectorizer(ngram_range=(1, ngram_max)).build_analyzer()
    for text in texts:
        assert word_terms(text, ngram_max) == analyze(text)


def test_serving_a_member_does_not_import_scikit_learn(tmp_path: Path) -> None:
    rows = read_archive(MINI_ARCHIVE, Settings(data_dir=tmp_path / "data")).train.rows
    labels = np.array([row.label for row in rows])
    fit_linear([row.text for row in rows], labels, LinearConfig()).save(tmp_path)
    probe = (
        "import sys; from pathlib import Path; import pipeline.predictor, pipeline.serving; "
        "from pipeline.linear import LinearMember; "
        f"member = LinearMember.load(Path({str(tmp_path)!r})); "
        "print(member.probabilities(['Stocks rally as oil falls']).argmax()); "
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'sklearn', 'onnx'}))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert answer == ["2", "[]"]


def test_the_blend_weight_is_fitted_on_the_validation_split(tmp_path: Path) -> None:
    info, settings, config = trained(tmp_path)
    blend = info.metrics.members
    assert blend is not None
    assert (tmp_path / "model" / LINEAR_WEIGHTS).is_file()
    assert not list((tmp_path / "model").glob("*.pkl"))

    # Refit the weight from the registered members on the validation rows alone: it is the one
    # training chose, whatever test.csv holds.
    rows = read_archive(MINI_ARCHIVE, settings).train.rows
    labels = np.array([row.label for row in rows])
    _, val_index = split_rows(labels, config)
    texts = [rows[i].text for i in val_index]
    predictor = Predictor.load(tmp_path / "model", settings)
    transformer = predictor.forward(predictor.encode(texts).ids)
    linear = predictor.linear_probabilities(texts)
    assert linear is not None
    assert blend.mixing == config.blend_mixing == "geometric"
    assert blend.weight == fit_weight(transformer, linear, labels[val_index], "geometric")
    assert info.params.rows_validated == len(val_index)
    assert info.metrics.accuracy == blend.blend_accuracy
    card = (tmp_path / "model" / "README.md").read_text()
    assert "linear member alone" in card


def test_a_model_without_a_linear_member_loads_and_serves_the_transformer(
    tmp_path: Path,
) -> None:
    info, settings, _ = trained(tmp_path, linear_member=False)
    assert not (tmp_path / "model" / LINEAR_CONFIG).exists()
    assert info.metrics.members is None
    predictor = Predictor.load(tmp_path / "model", settings)
    assert predictor.linear is None
    assert LinearMember.load(tmp_path / "model") is None
    texts = ["Stocks rally as oil prices fall"]
    assert predictor.probabilities(texts)[0] == pytest.approx(
        predictor.forward(predictor.encode(texts).ids)
    )


def test_the_blend_is_switched_off_by_setting(tmp_path: Path) -> None:
    _, settings, _ = trained(tmp_path)
    off = Predictor.load(tmp_path / "model", settings.replace(serve_blend=False))
    on = Predictor.load(tmp_path / "model", settings)
    assert off.linear is None
    assert on.linear is not None
