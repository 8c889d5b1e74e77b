"""Feedback: a person's label for a text the model answered (a correction, or a confirmation that
the answer was right), and the uncertain answers the predict workers keep for people to review.

A request names its text and the right label; the record stored (`Feedback`) holds the text as
training cleans it, who gave it, and the version that answered and what it answered: read from
the predict job's stored answer when the job is still kept, else as the client saw them.
"""

import re
from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.contracts.jobs import NOT_BLANK, Text
from shared.contracts.labels import LABELS
from shared.contracts.models import VERSION_PATTERN

LabelName = Literal["World", "Sports", "Business", "Sci/Tech"]
# A label as AG News's CSVs give it: its class index, 1 to 4.
ClassIndex = Annotated[int, Field(strict=True, ge=1, le=len(LABELS))]
assert get_args(LabelName) == LABELS

# The characters of an uncertain answer's text kept for review: a whole AG News article (title
# and description) for all but a few, so that confirming it from the review gives the text
# training needs.
REVIEW_TEXT_CHARS = 1000
JOB_ID_MAX_CHARS = 64


def label_name(label: str | int) -> str:
    """A label's name, from its name or its class index (1..4)."""
    return LABELS[label - 1] if isinstance(label, int) else label


class FeedbackRequest(BaseModel):
    """POST /v1/feedback. `text` is required even with `job_id`: a predict job keeps its answer,
    not its texts."""

    model_config = ConfigDict(extra="forbid")

    text: Text = Field(description="the text, as it was classified")
    label: LabelName | ClassIndex = Field(
        description="the right label: its name, or its class index (1 World, 2 Sports, "
        "3 Business, 4 Sci/Tech)"
    )
    job_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=JOB_ID_MAX_CHARS,
        description="the predict job that answered the text; while it is kept (minutes), the "
        "version and label it answered are read from it",
    )
    index: int | None = Field(
        default=None,
        ge=0,
        strict=True,
        description="the text's place among the job's texts (0: the first); only with job_id, "
        "where it defaults to 0",
    )
    model_version: str | None = Field(
        default=None,
        pattern=f"^{VERSION_PATTERN.pattern}$",
        description="the version whose answer this corrects, as the client saw it",
    )
    predicted: LabelName | None = Field(
        default=None, description="the label that version answered, as the client saw it"
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if re.search(NOT_BLANK, text) is None:
            raise ValueError("text is blank")
        return text

    @field_validator("label", mode="before")
    @classmethod
    def _a_label(cls, label: object) -> object:
        """One clear message, rather than one per member of the union."""
        if label in LABELS or (type(label) is int and 1 <= label <= len(LABELS)):
            return label
        raise ValueError(
            f"{label!r} is not a label: give {', '.join(LABELS[:-1])} or {LABELS[-1]}, or a "
            f"class index 1 to {len(LABELS)}"
        )

    @field_validator("label")
    @classmethod
    def _as_name(cls, label: str | int) -> str:
        return label_name(label)

    @model_validator(mode="after")
    def _index_of_a_job(self) -> "FeedbackRequest":
        # As the API document's dependentRequired says: index only beside job_id.
        if "index" in self.model_fields_set and "job_id" not in self.model_fields_set:
            raise ValueError("index names a text of a predict job: give job_id with it")
        return self

    @property
    def label_name(self) -> str:
        return label_name(self.label)


class Feedback(BaseModel):
    """One stored record: `{feedback_prefix}{YYYY-MM-DD}/{text_sha256[:32]}.json`."""

    text: str = Field(description="the text as training cleans it (shared.text.clean_text)")
    text_sha256: str = Field(description="of the cleaned text's UTF-8 bytes")
    label: LabelName
    given_by: str | None = Field(
        description="the name of the API key (or the signed-in key) that gave it; null when the "
        "gateway is open"
    )
    model_version: str | None = Field(description="the version that answered the text, if known")
    predicted: LabelName | None = Field(description="what that version answered, if known")
    agreed: bool | None = Field(
        description="predicted is the label: a confirmation, not a correction (null where "
        "predicted is not known)"
    )
    from_job: bool = Field(
        description="model_version and predicted were read from the predict job's stored answer, "
        "not taken from the client"
    )
    job_id: str | None = None
    index: int | None = None
    at: datetime


class FeedbackList(BaseModel):
    feedback: list[Feedback] = Field(description="newest first, each text once (its latest)")


class UncertainAnswer(BaseModel):
    """An answer whose top score was below `review_confidence`, kept for a person to review."""

    text: str = Field(description=f"the text as sent, its first {REVIEW_TEXT_CHARS} characters")
    label: LabelName = Field(description="what the version answered")
    confidence: float = Field(description="its top score")
    at: datetime = Field(description="when it was last answered")


class ReviewList(BaseModel):
    version: str | None = Field(description="the version reviewed; null when none serves")
    threshold: float = Field(description="answers below this confidence are kept")
    uncertain: list[UncertainAnswer] = Field(
        description="newest first; texts that already have feedback are left out"
    )
