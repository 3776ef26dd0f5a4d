"""Fake LLM responders for the CXR labeler tests (imported by Ray workers and Serve
replicas through the tests folder on PYTHONPATH)."""

from __future__ import annotations

import json
import math

from ctray.llm.base import LLMRequest

UNPARSEABLE = "UNPARSEABLE"
FENCED = "FENCED"  # first answer in a code fence, the repair turn answers cleanly
WORD = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}


def _report(request: LLMRequest) -> str:
    first_user = next(m["content"] for m in request.messages if m["role"] == "user")
    if '"""' in first_user:
        return first_user.split('"""')[1].strip()
    return first_user.split("Report:\n", 1)[-1].strip()


def rules_json_responder(request: LLMRequest) -> str:
    """A "model" answering the json-4class format with the rule labeler's labels."""
    from ctray.tasks.cxr.rules import CxrRuleLabeler

    report = _report(request)
    if UNPARSEABLE in report:
        return "I think the heart is big."
    labels = CxrRuleLabeler().label(report).labels
    answer = json.dumps({o: ("blank" if math.isnan(v) else WORD[v]) for o, v in labels.items()})
    if FENCED in report and len(request.messages) <= 2:
        return f"```json\n{answer}\n```"
    return answer


def rules_sft_responder(request: LLMRequest) -> str:
    """The fine-tuned model's answer format (train-cxr-labeler's target text)."""
    from ctray.tasks.cxr.rules import CxrRuleLabeler
    from ctray.tasks.cxr.sft_format import answer_text

    return answer_text(CxrRuleLabeler().label(_report(request)).labels)
