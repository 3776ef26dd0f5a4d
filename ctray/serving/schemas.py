"""JSON request and response bodies of the labeling HTTP API (also the OpenAPI schema).

Structural problems (a missing field, a wrong type, ``ids`` of the wrong length)
are rejected by FastAPI with 422 naming the field. Problems with one report's
content (an empty text, a model answer that cannot be parsed) are returned as an
:class:`ItemError` in that report's slot, so one bad report never fails the rest
of a request or of a server-side batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ErrorCode = Literal["empty_text", "model_error", "parse_error", "backend_error"]


class ItemError(BaseModel):
    """Why one item has no result; the other items of the request are unaffected."""

    code: ErrorCode
    message: str


class LabelRequest(BaseModel):
    """One or more reports; ``ids`` (optional) are echoed back and used in logs."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, description="report texts, one per item")
    ids: list[str] | None = Field(
        default=None, description="caller's ids, same length as texts (echoed back)")

    @model_validator(mode="after")
    def _ids_match(self) -> "LabelRequest":
        if self.ids is not None and len(self.ids) != len(self.texts):
            raise ValueError(f"ids has {len(self.ids)} entries but texts has {len(self.texts)}")
        return self

    def item_id(self, i: int) -> str:
        """The caller's id of item ``i`` (its index when no ids were sent)."""
        return self.ids[i] if self.ids is not None else str(i)


class FindingsRequest(LabelRequest):
    """Reports for the findings classifier."""

    include_probabilities: bool = True


class RulesRequest(LabelRequest):
    """Reports for the rule labeler."""

    include_evidence: bool = Field(
        default=False, description="return the sentence that made each finding positive")


class ItemResult(BaseModel):
    """One item of a response: its id, an error or the task's fields."""

    id: str
    error: ItemError | None = None
    # How many items the server-side batch held that computed this one (1: no batching).
    batch_size: int | None = None


class FindingsItem(ItemResult):
    """One report's 18 findings from the classifier."""

    labels: dict[str, int] | None = Field(default=None, description="finding column -> 0/1")
    probabilities: dict[str, float] | None = None
    positive: list[str] | None = Field(default=None, description="CT-RATE names of positives")


class RulesItem(ItemResult):
    """One report's 18 findings from the rule labeler."""

    labels: dict[str, int] | None = None
    positive: list[str] | None = None
    lang: str | None = None
    evidence: dict[str, str] | None = None


class LLMFindingsItem(ItemResult):
    """One report's 18 findings from the LLM labeler, with its token usage."""

    labels: dict[str, int] | None = None
    positive: list[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class LabelResponse(BaseModel):
    """The fields every labeling response shares."""

    model: str
    prompt_version: str | None = None


class FindingsResponse(LabelResponse):
    """The classifier's answer to one request."""

    checkpoint: str | None = None
    results: list[FindingsItem]


class RulesResponse(LabelResponse):
    """The rule labeler's answer to one request."""

    results: list[RulesItem]


class LLMFindingsResponse(LabelResponse):
    """The LLM labeler's answer to one request."""

    results: list[LLMFindingsItem]


class TranslateRequest(BaseModel):
    """One report: section name -> text (e.g. findings, impressions)."""

    model_config = ConfigDict(extra="forbid")

    sections: dict[str, str] = Field(min_length=1)
    id: str | None = None


class TranslationItem(BaseModel):
    """One section's translation, or its error."""

    translation: str | None = None
    error: ItemError | None = None
    batch_size: int | None = None


class TranslateResponse(LabelResponse):
    """The translation of one report, per section."""

    id: str | None = None
    source_lang: str
    target_lang: str
    sections: dict[str, TranslationItem]


class VersionInfo(BaseModel):
    """``/version``: what answers (versions, model, batching, replica)."""

    model_config = ConfigDict(protected_namespaces=())

    app: str
    ctray: str
    ray: str
    model: str
    checkpoint: str | None = None
    prompt_version: str | None = None
    replica: str | None = Field(default=None, description="Ray actor name of the replica")
    max_batch_size: int | None = None
    batch_wait_timeout_s: float | None = None


class Health(BaseModel):
    """``/healthz``: the probe passed, and how long it took."""

    status: Literal["ok"]
    latency_ms: float


class BatchStats(BaseModel):
    """``/stats``: one replica's counters since it started."""

    replica: str | None
    requests: int
    items: int
    item_errors: int
    batches: int
    # batch size -> number of batches of that size, since the replica started.
    batch_sizes: dict[int, int]


class LeavsRequest(BaseModel):
    """One abdominal CT report."""

    model_config = ConfigDict(extra="forbid")

    text: str
    id: str | None = None


class LeavsOrgan(BaseModel):
    """LEAVS labels of one organ."""

    organ: str
    #: finding type -> certainty code (LEAVS schema)
    labels: dict[str, int]
    #: finding type -> urgency code
    urgency: dict[str, int]


class LeavsResponse(BaseModel):
    """LEAVS labels of one report."""

    model: str
    id: str | None = None
    organs: list[LeavsOrgan]
    #: questions the model could not answer usably (their organs are left out)
    errors: list[ItemError] = Field(default_factory=list)


class CxrRequest(LabelRequest):
    """Chest X-ray reports to label."""

    include_evidence: bool = Field(
        default=False, description="rules only: the sentence that decided each label")


class CxrItem(ItemResult):
    """One report's 14 CheXpert observations."""

    labels: dict[str, float | None] | None = Field(
        default=None, description="observation -> 1.0 / 0.0 / -1.0 / null (blank)")
    positive: list[str] | None = None
    uncertain: list[str] | None = None
    evidence: dict[str, str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class CxrResponse(LabelResponse):
    """The labels of every report of a request, in order."""

    results: list[CxrItem]


class CxrEncoderResponse(CxrResponse):
    """The CXR encoder labeler's answer: the labels and the checkpoint that gave them."""

    checkpoint: str | None = None
