"""Serving forms chosen by measurement: scored at registration, timed by each worker at load."""

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import onnx as onnx_graph
import onnxruntime
import pytest
import redis
import torch
from onnx import TensorProto, numpy_helper

from pipeline.export import export_onnx, quantize_onnx
from pipeline.modeling import ArrayBatch, load_classifier, load_tokenizer, padding_of
from pipeline.predictor import Predictor
from pipeline.registry import publish, read_manifest, verify
from pipeline.runners import ONNX_FILES, OnnxRunner, Runner
from pipeline.serving import (
    FORWARD_BATCHES,
    GATHERED,
    RUNNERS,
    SAMPLE,
    candidate_forms,
    fastest,
    fastest_batch,
    serving_check,
    serving_note,
    with_form,
)
from shared.contracts.results import Metrics, PredictResult, ServingCheck
from shared.contracts.serving import FORMS, Form, ServingWorker
from shared.contracts.times import utcnow
from shared.fleet import announce
from shared.registry import ModelRegistry
from shared.settings import Settings
from testkit.families import tiny_family_model
from testkit.gateway import serve
from testkit.job_results import metrics
from testkit.models import tiny_model
from workers.models import ServingModel

TEXTS = [
    "Stocks rally as the central bank holds rates",
    "The striker scored twice in the cup final after a long injury break kept him out",
    "New chip doubles battery life",
    "Rebels seize the capital after talks fail; the president flees the country by night",
    "Elections",
]
OLD_CHECK = {
    "n": 4000,
    "fp32": {"accuracy": 0.9405, "texts_per_s": 113.2},
    "int8": {"accuracy": 0.9398, "texts_per_s": 162.0},
    "int8_accuracy_drop_pts": 0.07,
    "int8_speedup": 1.43,
    "max_accuracy_drop_pts": 0.3,
    "int8_allowed": True,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def predictor(model_dir: Path) -> Predictor:
    return Predictor.load(model_dir, Settings(torch_threads=1))


def every_form_allowed(model_dir: Path) -> Metrics:
    """The version's metrics with every form it has files for allowed to serve."""
    found = verify(model_dir).metrics
    assert found.serving is not None
    forms = [
        score.model_copy(update={"allowed": True})
        for score in found.serving.forms
        if all((model_dir / name).is_file() for name in score.files) and score.error is None
    ]
    return found.model_copy(update={"serving": found.serving.model_copy(update={"forms": forms})})


Builder = Callable[[Predictor, Path, int], Runner]


class SlowRunner:
    """A form's runner that takes `factor` times as long, `delay_s` more per batch and
    `per_token_s` more per padded token: a slow form, or a CPU where batching pays or where
    padding costs."""

    def __init__(
        self, runner: Runner, factor: float, delay_s: float, per_token_s: float = 0.0
    ) -> None:
        self.form = runner.form
        self.runner = runner
        self.factor = factor
        self.delay_s = delay_s
        self.per_token_s = per_token_s

    def logits(self, arrays: ArrayBatch) -> np.ndarray:
        started = time.perf_counter()
        logits = self.runner.logits(arrays)
        padded = self.per_token_s * arrays["input_ids"].size
        time.sleep((self.factor - 1) * (time.perf_counter() - started) + self.delay_s + padded)
        return logits


def slowed(builder: Builder, factor: float, delay_s: float) -> Builder:
    def build(predictor: Predictor, model_dir: Path, threads: int) -> Runner:
        return SlowRunner(builder(predictor, model_dir, threads), factor, delay_s)

    return build


@pytest.fixture
def slow_forms(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    def slow(*forms: Form, factor: float = 1.0, delay_s: float = 0.0) -> None:
        for form in forms:
            monkeypatch.setitem(RUNNERS, form, slowed(RUNNERS[form], factor, delay_s))

    return slow


def test_registration_scores_every_form_on_the_same_rows_and_keeps_its_files(
    model_dir: Path,
) -> None:
    info = verify(model_dir)
    check = info.metrics.serving
    assert check is not None
    assert [score.form for score in check.forms] == list(FORMS)
    reference = check.forms[0]
    assert reference.accuracy == info.metrics.accuracy
    assert (reference.accuracy_drop_pts, reference.speedup, reference.allowed) == (0.0, 1.0, True)
    for score in check.forms:
        assert score.error is None
        assert score.texts_per_s > 0
        assert score.accuracy_drop_pts == pytest.approx(
            (reference.accuracy - score.accuracy) * 100, abs=1e-3
        )
        assert score.allowed is (score.accuracy_drop_pts <= check.max_accuracy_drop_pts)
        for name in score.files:
            assert (name in info.files) is score.allowed
    assert check.sample == SAMPLE
    assert SAMPLE in info.files
    assert len(json.loads((model_dir / SAMPLE).read_text())["texts"]) > 0
    stages = info.metrics.evaluation_seconds
    assert {"tokenize", "forward", "build onnx-fp32", "forward onnx-int8"} <= set(stages)


def test_a_form_over_the_accuracy_bound_is_refused(tmp_path: Path) -> None:
    check = serving_check(
        ["torch-fp32", "torch-int8", "onnx-int8"],
        [0.9, 0.897, 0.8965],
        [100.0, 150.0, 300.0],
        {"onnx-fp32": "RuntimeError: no"},
        1000,
        Settings(),
    )
    allowed = {score.form: score.allowed for score in check.forms}
    assert allowed == {
        "torch-fp32": True,
        "torch-int8": True,
        "onnx-int8": False,
        "onnx-fp32": False,
    }
    refused = check.score("onnx-int8")
    assert refused is not None
    assert refused.accuracy_drop_pts == 0.35
    assert refused.speedup == 3.0
    found = metrics().model_copy(update={"serving": check})
    (tmp_path / "onnx").mkdir()
    for name in ONNX_FILES.values():
        (tmp_path / name).write_bytes(b"graph")
    assert candidate_forms(Settings(), found, tmp_path) == ["torch-fp32", "torch-int8"]
    assert candidate_forms(Settings(serving_form="onnx-fp32"), found, tmp_path) == ["onnx-fp32"]
    assert serving_note(Settings(), found) == (
        "Each predict worker serves the fastest on its CPU of torch-fp32 and torch-int8 "
        "(1.5x, 0.30 points below); onnx-int8 lost more than the 0.3 points allowed; "
        "onnx-fp32 could not be built."
    )


@pytest.mark.parametrize("form", ["onnx-fp32", "onnx-int8"])
def test_onnx_forms_answer_as_torch_fp32_batched_and_alone(
    predictor: Predictor, model_dir: Path, form: Form
) -> None:
    onnx = with_form(predictor, form, model_dir, 1)
    assert onnx.form == form
    tolerance = 1e-4 if form == "onnx-fp32" else 0.05
    together, cut = onnx.probabilities(TEXTS)
    expected, expected_cut = predictor.probabilities(TEXTS)
    assert cut == expected_cut
    assert np.abs(together - expected).max() < tolerance
    for index, text in enumerate(TEXTS):
        alone, _ = onnx.probabilities([text])
        assert np.abs(alone[0] - expected[index]).max() < tolerance


@pytest.mark.parametrize("family", ["bert", "gpt2", "xlnet"])
def test_the_exported_graph_answers_as_torch_whichever_side_the_family_pads(
    family: str, tmp_path: Path
) -> None:
    folder = tiny_family_model(family, tmp_path / family)
    tokenizer = load_tokenizer(str(folder))
    model = load_classifier(str(folder), int(tokenizer.pad_token_id))
    torch.manual_seed(0)
    base = Predictor(
        model, tokenizer, version="v", max_length=48, batch_size=8, device=torch.device("cpu")
    )
    served_attention = model.config._attn_implementation
    export_onnx(model, padding_of(tokenizer), tmp_path / "model.onnx")
    assert model.config._attn_implementation == served_attention
    operators = {node.op_type for node in onnx_graph.load(tmp_path / "model.onnx").graph.node}
    assert "IsNaN" not in operators, "attention was exported with fused attention's mask clean-up"
    quantize_onnx(tmp_path / "model.onnx", tmp_path / "model-int8.onnx")
    expected, _ = base.probabilities(TEXTS)
    for name, form, tolerance in [("model", "onnx-fp32", 1e-4), ("model-int8", "onnx-int8", 0.02)]:
        onnx = base.with_runner(OnnxRunner(tmp_path / f"{name}.onnx", 1, form))
        together, _ = onnx.probabilities(TEXTS)
        assert np.abs(together - expected).max() < tolerance, form
        alone = np.concatenate([onnx.probabilities([text])[0] for text in TEXTS])
        assert np.abs(alone - expected).max() < tolerance, form


def initializers(graph: onnx_graph.ModelProto) -> dict[str, np.ndarray]:
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.graph.initializer}


def test_the_int8_graph_holds_every_weight_matrix_and_embedding_table_in_int8(
    model_dir: Path, tmp_path: Path
) -> None:
    fp32 = model_dir / ONNX_FILES["onnx-fp32"]
    source = onnx_graph.load(fp32)
    weights = initializers(source)
    products = [n for n in source.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(products) >= 36  # six layers of six products
    lookups = [n for n in source.graph.node if n.op_type == "Gather" and n.input[0] in weights]
    assert len(lookups) == 3  # words, positions, token types
    quantize_onnx(fp32, tmp_path / "int8.onnx")
    graph = onnx_graph.load(tmp_path / "int8.onnx")
    stored = initializers(graph)
    assert not [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in stored]
    quantized = [node for node in graph.graph.node if node.op_type == "DynamicQuantizeMatMul"]
    assert [node.output for node in quantized] == [node.output for node in products]
    for product, node in zip(products, quantized, strict=True):
        weight = weights[product.input[1]]
        values, scale, zero_point = (stored[name] for name in node.input[1:])
        assert values.dtype == np.int8
        assert values.shape == weight.shape
        assert scale.shape == (weight.shape[1],)
        assert not zero_point.any()
        assert (np.abs(values * scale - weight) <= scale / 2 + 1e-6).all()
        assert product.input[1] not in stored  # no fp32 copy kept beside it
    producers = {output: node for node in graph.graph.node for output in node.output}
    for lookup in lookups:
        table = weights[lookup.input[0]]
        dequantize = producers[lookup.output[0]]
        assert dequantize.op_type == "Mul"
        rows, scale = (producers[name] for name in dequantize.input)
        assert producers[rows.input[0]].op_type == "Gather"
        values, row_scale = stored[producers[rows.input[0]].input[0]], stored[scale.input[0]]
        assert values.dtype == np.int8
        assert values.shape == table.shape
        assert row_scale.shape == (table.shape[0], 1)
        assert (np.abs(values * row_scale - table) <= row_scale / 2 + 1e-6).all()
        assert lookup.input[0] not in stored
    assert (tmp_path / "int8.onnx").stat().st_size < 0.3 * fp32.stat().st_size


def product_graph(weight: np.ndarray, inputs: str) -> onnx_graph.ModelProto:
    """`input @ w` for each named input, every product by the same weight initializer `w`."""
    make = onnx_graph.helper
    graph = make.make_graph(
        [make.make_node("MatMul", [name, "w"], [f"{name}_w"]) for name in inputs],
        "products",
        [make.make_tensor_value_info(name, TensorProto.FLOAT, [2, 8]) for name in inputs],
        [make.make_tensor_value_info(f"{name}_w", TensorProto.FLOAT, [2, 4]) for name in inputs],
        [numpy_helper.from_array(weight, "w")],
    )
    return make.make_model(graph, opset_imports=[make.make_opsetid("", 17)])


def test_a_weight_shared_by_two_products_is_quantized_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 4)).astype(np.float32)
    x, y = rng.normal(size=(2, 2, 8)).astype(np.float32)
    sessions = {}
    for inputs in ("xy", "x"):
        source, target = tmp_path / f"{inputs}.onnx", tmp_path / f"{inputs}-int8.onnx"
        onnx_graph.save(product_graph(weight, inputs), source)
        quantize_onnx(source, target)
        quantized = onnx_graph.load(target)
        onnx_graph.checker.check_model(quantized)
        assert sorted(initializers(quantized)) == ["w_int8", "w_scale", "w_zero_point"]
        sessions[inputs] = onnxruntime.InferenceSession(target, providers=["CPUExecutionProvider"])
    # Each product by the shared weight answers as a product by that weight alone.
    shared = sessions["xy"].run(None, {"x": x, "y": y})
    alone = [sessions["x"].run(None, {"x": rows})[0] for rows in (x, y)]
    for got, expected in zip(shared, alone, strict=True):
        assert np.array_equal(got, expected)


def test_a_table_both_looked_up_and_multiplied_is_quantized_for_each_use(
    tmp_path: Path,
) -> None:
    make = onnx_graph.helper
    rng = np.random.default_rng(0)
    table = rng.normal(size=(8, 4)).astype(np.float32)
    graph = make.make_graph(
        [
            make.make_node("MatMul", ["x", "w"], ["xw"]),
            make.make_node("Gather", ["w", "ids"], ["e"]),
        ],
        "tied",
        [
            make.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
            make.make_tensor_value_info("ids", TensorProto.INT64, [3]),
        ],
        [
            make.make_tensor_value_info("xw", TensorProto.FLOAT, [2, 4]),
            make.make_tensor_value_info("e", TensorProto.FLOAT, [3, 4]),
        ],
        [numpy_helper.from_array(table, "w")],
    )
    onnx_graph.save(
        make.make_model(graph, opset_imports=[make.make_opsetid("", 17)]), tmp_path / "t.onnx"
    )
    quantize_onnx(tmp_path / "t.onnx", tmp_path / "t-int8.onnx")
    quantized = onnx_graph.load(tmp_path / "t-int8.onnx")
    onnx_graph.checker.check_model(quantized)
    stored = initializers(quantized)
    assert sorted(stored) == ["w_int8", "w_rows_int8", "w_rows_scale", "w_scale", "w_zero_point"]
    x, ids = rng.normal(size=(2, 8)).astype(np.float32), np.array([7, 0, 7])
    session = onnxruntime.InferenceSession(
        tmp_path / "t-int8.onnx", providers=["CPUExecutionProvider"]
    )
    product, rows = session.run(None, {"x": x, "ids": ids})
    assert np.abs(rows - table[ids]).max() <= stored["w_rows_scale"].max() / 2 + 1e-6
    onnx_graph.save(product_graph(table, "x"), tmp_path / "x.onnx")
    quantize_onnx(tmp_path / "x.onnx", tmp_path / "x-int8.onnx")
    alone = onnxruntime.InferenceSession(
        tmp_path / "x-int8.onnx", providers=["CPUExecutionProvider"]
    )
    assert np.array_equal(product, alone.run(None, {"x": x})[0])


def test_a_slow_form_is_not_chosen(
    predictor: Predictor, model_dir: Path, slow_forms: Callable[..., None]
) -> None:
    allowed = every_form_allowed(model_dir)
    settings = Settings(torch_threads=1, serving_timing_s=0.1)
    first = fastest(predictor, model_dir, allowed, settings).form
    slow_forms(first, factor=6.0)  # forms differ by at most 2.6x (bench/RESULTS.md)
    assert fastest(predictor, model_dir, allowed, settings).form != first


@pytest.mark.parametrize(
    ("per_call_s", "per_token_s"), [(0.04, 0.0), (0.0, 0.005)], ids=["calls", "padding"]
)
def test_a_worker_runs_the_slices_it_measured_fastest(
    predictor: Predictor, per_call_s: float, per_token_s: float
) -> None:
    costed = predictor.with_runner(SlowRunner(predictor.runner, 1.0, per_call_s, per_token_s))
    texts = (TEXTS * GATHERED)[:GATHERED]  # 1 to 19 words
    chosen = fastest_batch(costed, texts, Settings(serving_timing_s=0.01))
    speeds = chosen.batch_timings
    assert list(speeds) == list(FORWARD_BATCHES)
    assert chosen.batch_size == max(speeds, key=speeds.__getitem__)
    if per_call_s:  # 16 calls of one text against one call of sixteen
        assert chosen.batch_size == max(FORWARD_BATCHES)
    else:  # sixteen texts of many lengths, each padded to the longest
        assert speeds[1] > 1.1 * speeds[16]
        assert chosen.batch_size < 16
    assert chosen.probabilities(TEXTS)[0] == pytest.approx(predictor.probabilities(TEXTS)[0])


def test_a_forced_slice_size_is_not_timed(predictor: Predictor) -> None:
    predictor.timings = {"torch-fp32": 50.0}
    chosen = fastest_batch(predictor, TEXTS, Settings(serving_forward_batch=3))
    assert (chosen.batch_size, chosen.batch_timings) == (3, {})
    assert chosen.timings == {"torch-fp32": 50.0}
    assert fastest_batch(predictor, [], Settings()).batch_size == Settings().serving.forward_batch


def test_the_worker_at_load_serves_the_fastest_allowed_form(
    settings: Settings, model_dir: Path, slow_forms: Callable[..., None]
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    version = publish(registry, model_dir).version
    registry.promote(version, "test")
    allowed = candidate_forms(settings, read_manifest(model_dir).metrics, model_dir)
    if len(allowed) < 2:
        pytest.skip(f"the tiny model allowed only {allowed}")
    check = read_manifest(model_dir).metrics.serving
    assert check is not None
    registered = {score.form: score.texts_per_s for score in check.forms}
    quick = max(allowed, key=registered.__getitem__)
    slow_forms(*[form for form in allowed if form != quick], delay_s=0.2)
    model = ServingModel(settings.replace(serving_timing_s=0.1))
    assert model.current().form == quick
    assert model.current().batch_size in FORWARD_BATCHES
    assert list(model.current().batch_timings) == list(FORWARD_BATCHES)
    forced = ServingModel(settings.replace(serving_form=allowed[0]))
    assert forced.current().form == allowed[0]


def test_metrics_of_versions_registered_with_the_int8_check_still_load(model_dir: Path) -> None:
    old = json.loads(metrics().model_dump_json())
    old.pop("evaluation_seconds")
    old["serving"] = OLD_CHECK
    loaded = Metrics.model_validate(old)
    check = loaded.serving
    assert isinstance(check, ServingCheck)
    assert [(score.form, score.allowed, score.speedup) for score in check.forms] == [
        ("torch-fp32", True, 1.0),
        ("torch-int8", True, 1.43),
    ]
    assert check.sample is None
    assert loaded.evaluation_seconds == {}
    assert candidate_forms(Settings(), loaded, model_dir) == ["torch-fp32", "torch-int8"]
    refused = Metrics.model_validate({**old, "serving": {**OLD_CHECK, "int8_allowed": False}})
    assert candidate_forms(Settings(), refused, model_dir) == ["torch-fp32"]
    assert Settings(serving_form="int8").serving.form == "torch-int8"
    answer = PredictResult.model_validate(
        {"model_version": "v", "precision": "int8", "predictions": []}
    )
    assert answer.form == "torch-int8"


def test_the_gateway_metrics_name_the_form_each_worker_serves(
    settings: Settings, model_dir: Path
) -> None:
    registry = ModelRegistry.from_settings(settings.storage)
    version = publish(registry, model_dir).version
    registry.promote(version, "test")
    model = ServingModel(settings)
    form = model.current().form
    model.announce()
    model.stop()
    gone = ServingWorker(
        worker="gone:1",
        version=version,
        form="torch-int8",
        seen_at=utcnow() - timedelta(seconds=settings.reaper.heartbeat_timeout_s + 1),
    )
    with redis.Redis.from_url(settings.redis.url) as client:
        announce(client, settings, gone)
    with serve(settings) as gateway:
        text = httpx.get(f"{gateway.url}/metrics").text
    served = [line for line in text.splitlines() if line.startswith("agnews_serving_workers{")]
    assert served == [f'agnews_serving_workers{{form="{form}",version="{version}"}} 1.0']
