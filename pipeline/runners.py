"""What runs a model's forward pass in each serving form: torch (fp32, or its Linear layers in
dynamic int8) or ONNX Runtime over a graph exported at registration (fp32, or dynamically
quantized to int8: pipeline/export.py). Every runner maps one padded batch of ids to logits."""

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime
import torch
from transformers import PreTrainedModel

from pipeline.modeling import ArrayBatch, quantize_int8, torch_logits
from shared.contracts.serving import Form

ONNX_DIR = "onnx"
ONNX_FILES: dict[Form, str] = {
    "onnx-fp32": f"{ONNX_DIR}/model.onnx",
    "onnx-int8": f"{ONNX_DIR}/model-int8.onnx",
}


class Runner(Protocol):
    form: Form

    def logits(self, arrays: ArrayBatch) -> np.ndarray: ...


class TorchRunner:
    def __init__(self, model: PreTrainedModel, device: torch.device, form: Form) -> None:
        self.form = form
        self.model = model
        self.logits = torch_logits(model, device)


class OnnxRunner:
    def __init__(self, path: Path, threads: int, form: Form) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.form = form
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [node.name for node in self.session.get_inputs()]

    def logits(self, arrays: ArrayBatch) -> np.ndarray:
        out = self.session.run(None, {name: arrays[name] for name in self.inputs})
        result: np.ndarray = np.asarray(out[0], dtype=np.float32)
        return result


def torch_int8(model: PreTrainedModel) -> TorchRunner:
    return TorchRunner(quantize_int8(model), torch.device("cpu"), "torch-int8")
