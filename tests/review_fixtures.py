"""Helpers for the review page tests: a second CXR "model" that disagrees with the rules
in a known way, and small upload files.

Imported by Serve replicas too (the fake responder), through the ``tests`` folder on
PYTHONPATH.
"""

from __future__ import annotations

import math

from ctray.llm.base import LLMRequest

# uid + Open-i sections; the second labeler turns every uncertain (-1) label of the rules
# into positive, so r3 differs in 3 observations, r2 in 2, r5 in 1, r1 and r4 in none;
# r6 is unreadable for the second labeler (a per-row parse error).
REPORTS = {
    "r1": ("Small right pleural effusion.", "No pneumothorax."),
    "r2": ("Possible right lower lobe pneumonia.", "No pneumothorax."),
    "r3": ("Borderline cardiomegaly. Possible consolidation at the left base.", "No effusion."),
    "r4": ("No acute cardiopulmonary process.", ""),
    "r5": ("Mild pulmonary edema.", "Cannot exclude small left pleural effusion."),
    "r6": ("UNPARSEABLE for the second labeler. Heart size is normal.", ""),
}
EXPECTED_DIFF = {"r3": 3, "r2": 2, "r5": 1}


def reports_csv() -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["uid", "findings", "impression"])
    for rid, (findings, impression) in REPORTS.items():
        writer.writerow([rid, findings, impression])
    return out.getvalue()


def report_text(rid: str) -> str:
    return "\n\n".join(p for p in REPORTS[rid] if p)


def second_opinion(labels: dict[str, float]) -> dict[str, float]:
    return {o: (1.0 if v == -1.0 else v) for o, v in labels.items()}


def cxr_second_opinion(request: LLMRequest) -> str:
    """The sft-format answer of a labeler that never says 'uncertain'."""
    from ctray.tasks.cxr.rules import CxrRuleLabeler
    from ctray.tasks.cxr.sft_format import answer_text

    prompt = next(m["content"] for m in request.messages if m["role"] == "user")
    if "Report:\n" not in prompt:  # the /healthz probe
        return "OK"
    report = prompt.split("Report:\n", 1)[1].strip()
    if "UNPARSEABLE" in report:
        return "no idea"
    return answer_text(second_opinion(CxrRuleLabeler().label(report).labels))


def cxr_value(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


