"""The ONNX graphs a version keeps for serving, built at registration: the model's forward pass
exported from torch, and its int8 form. Only registration imports `onnx`: a process that
serves the graphs needs ONNX Runtime alone."""

import copy
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from transformers import PreTrainedModel

from pipeline.modeling import Padding

_INPUTS = ("input_ids", "attention_mask")
_OPSET = 17


class _Logits(torch.nn.Module):
    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits


def _example(padding: Padding) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, one padded, so that the traced graph keeps the mask's work."""
    ids = torch.full((2, 8), padding.pad_id, dtype=torch.long)
    mask = torch.zeros((2, 8), dtype=torch.long)
    ids[0], mask[0] = 5, 1
    short = slice(4, 8) if padding.left else slice(0, 4)
    ids[1, short], mask[1, short] = 6, 1
    return ids, mask


def export_onnx(model: PreTrainedModel, padding: Padding, path: Path) -> None:
    """The model's forward pass as an ONNX graph, its batch and sequence axes left free.

    Attention is exported as its eager form: torch's fused attention traces to a graph that
    also cleans fully masked rows (IsNaN, Where), 6 % of ONNX Runtime's int8 forward pass on
    the AVX2 EPYC; the eager graph serves the same probabilities 5 % faster there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model)
    model.to("cpu")  # type: ignore[arg-type]
    model.set_attn_implementation("eager")
    axes = {"batch": 0, "sequence": 1}
    with warnings.catch_warnings():
        # The tracer warns of every Python-side shape check in transformers' code.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(model).eval(),
            _example(padding),
            str(path),
            input_names=list(_INPUTS),
            output_names=["logits"],
            dynamic_axes={
                **{name: {v: k for k, v in axes.items()} for name in _INPUTS},
                "logits": {0: "batch"},
            },
            opset_version=_OPSET,
            dynamo=False,
        )


def quantize_onnx(source: Path, target: Path) -> None:
    """The graph with its weights in int8, each symmetric in -127..127 with a scale per output:
    every product by a weight matrix is ONNX Runtime's DynamicQuantizeMatMul (a scale per
    column, activations quantized on the fly), and every lookup in an embedding table gathers
    int8 rows and multiplies each by its scale. A graph a quarter the size of the fp32 one.

    This is the node ONNX Runtime fuses `quantize_dynamic`'s output into, written directly: on
    the AVX2 EPYC it serves as fast and is built in 0.7 s instead of 4-6 s (that quantizer
    walks the weights' columns one by one in Python)."""
    graph = onnx.load(source)
    weights = {tensor.name: tensor for tensor in graph.graph.initializer}
    uses = Counter(name for node in graph.graph.node for name in node.input)
    nodes: list[onnx.NodeProto] = []
    quantized: dict[tuple[str, int], tuple[TensorProto, ...]] = {}
    for node in graph.graph.node:
        if _is_product(node, weights):
            weight = weights[node.input[1]]
            if (weight.name, 0) not in quantized:
                quantized[weight.name, 0] = _int8_tensors(weight, axis=0)
            nodes.append(_product(node, *quantized[weight.name, 0]))
            uses[weight.name] -= 1
        elif _is_lookup(node, weights):
            table = weights[node.input[0]]
            if (table.name, 1) not in quantized:
                values, scale, _ = _int8_tensors(table, axis=1)
                quantized[table.name, 1] = (values, scale)
            nodes += _lookup(node, *quantized[table.name, 1])
            uses[table.name] -= 1
        else:
            nodes.append(node)
    replaced = {name for name, _ in quantized}
    kept = [t for t in graph.graph.initializer if t.name not in replaced or uses[t.name] > 0]
    graph.graph.ClearField("node")
    graph.graph.node.extend(nodes)
    graph.graph.ClearField("initializer")
    graph.graph.initializer.extend([*kept, *(t for group in quantized.values() for t in group)])
    if all(opset.domain != "com.microsoft" for opset in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, target)


def _is_matrix(name: str, weights: dict[str, TensorProto]) -> bool:
    weight = weights.get(name)
    return weight is not None and len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT


def _is_product(node: onnx.NodeProto, weights: dict[str, TensorProto]) -> bool:
    return node.op_type == "MatMul" and _is_matrix(node.input[1], weights)


def _is_lookup(node: onnx.NodeProto, weights: dict[str, TensorProto]) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return node.op_type == "Gather" and axis == 0 and _is_matrix(node.input[0], weights)


def _product(node: onnx.NodeProto, *weight: TensorProto) -> onnx.NodeProto:
    return helper.make_node(
        "DynamicQuantizeMatMul",
        [node.input[0], *(tensor.name for tensor in weight)],
        list(node.output),
        name=f"{node.name or node.output[0]}_int8",
        domain="com.microsoft",
    )


def _lookup(node: onnx.NodeProto, values: TensorProto, scale: TensorProto) -> list[onnx.NodeProto]:
    """Gather the int8 rows and their scales, and multiply: the lookup's output, in fp32."""
    ids, out, name = node.input[1], node.output[0], node.name or node.output[0]
    return [
        helper.make_node("Gather", [values.name, ids], [f"{out}_int8"], name=f"{name}_int8"),
        helper.make_node("Gather", [scale.name, ids], [f"{out}_scale"], name=f"{name}_scale"),
        helper.make_node(
            "Cast", [f"{out}_int8"], [f"{out}_cast"], name=f"{name}_cast", to=TensorProto.FLOAT
        ),
        helper.make_node("Mul", [f"{out}_cast", f"{out}_scale"], [out], name=f"{name}_dequantize"),
    ]


def _int8_tensors(weight: TensorProto, axis: int) -> tuple[TensorProto, TensorProto, TensorProto]:
    """A weight matrix as int8 in -127..127, the scale of each slice along the other axis (each
    column for axis 0, each row, kept as a column, for axis 1), and zero points, named after
    it (rows' as NAME_rows_*)."""
    name = weight.name if axis == 0 else f"{weight.name}_rows"
    values = numpy_helper.to_array(weight)
    peak = np.abs(values).max(axis=axis, keepdims=axis == 1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    return (
        numpy_helper.from_array(
            np.clip(np.rint(values / scale), -127, 127).astype(np.int8), f"{name}_int8"
        ),
        numpy_helper.from_array(scale, f"{name}_scale"),
        numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), f"{name}_zero_point"),
    )
