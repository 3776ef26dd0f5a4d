"""Fake-backend responders for the demo and CLI tests (importable by Ray workers)."""

from ctray.llm.base import LLMRequest
from ctray.tasks.findings.rules import RuleLabeler


def effusion_by_rules(request: LLMRequest) -> str:
    """Answers the demo's question the way the rule labeler reads the report."""
    prompt = request.messages[-1]["content"]
    report = prompt.split("Report:\n", 1)[1].rsplit("\n\nDoes this report", 1)[0]
    return "yes" if RuleLabeler("en").label(report).labels["pleural_effusion"] else "no"
