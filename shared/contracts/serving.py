"""The forms a model serves in, and what each predict worker serves."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from shared.contracts.times import utcnow

# torch fp32, the trained model itself, is every form's reference.
Form = Literal["torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"]
FORMS: tuple[Form, ...] = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8")
REFERENCE_FORM: Form = "torch-fp32"
_PRECISIONS = {"fp32": "torch-fp32", "int8": "torch-int8"}


def serving_form_name(name: str) -> str:
    """A form's name; the precisions of old (fp32, int8) name torch's forms."""
    return _PRECISIONS.get(name, name)


class ServingWorker(BaseModel):
    """A predict worker's entry in the fleet: the version and form it serves, as timed at load."""

    worker: str = Field(description="host:pid")
    version: str
    form: Form
    texts_per_s: dict[str, float] = Field(
        default_factory=dict, description="each allowed form timed at load, on this worker's CPU"
    )
    forward_batch: int | None = Field(default=None, description="texts per forward call")
    texts_per_s_by_batch: dict[int, float] = Field(
        default_factory=dict, description="each forward batch size timed at load, in its form"
    )
    serving_texts_per_s: float | None = Field(
        default=None,
        description="texts per second its model answers while busy, measured on its requests",
    )
    seen_at: datetime = Field(default_factory=utcnow)
