"""Versioned prompt templates.

A template's version hash covers everything that changes what the model sees
(system text, user text, few-shot turns), so outputs and manifests can tell which
prompt produced a row and a resumed run refuses to mix prompt versions silently.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptTemplate:
    """A named, versioned prompt; its version (a digest of the text) goes into manifests."""

    name: str
    user: str
    system: str | None = None
    few_shot: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def fields(self) -> set[str]:
        """The placeholders the template fills."""
        names = set()
        for text in (self.system or "", self.user):
            names.update(f for _, f, _, _ in string.Formatter().parse(text) if f)
        return names

    @property
    def version(self) -> str:
        """A short digest of the template text."""
        payload = json.dumps(
            {"system": self.system, "user": self.user, "few_shot": list(self.few_shot)},
            ensure_ascii=False, sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]

    @property
    def version_tag(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def render(self, **values: str) -> list[dict[str, str]]:
        """The chat messages with the placeholders filled."""
        missing = self.fields - values.keys()
        if missing:
            raise KeyError(f"prompt {self.name!r} needs fields {sorted(missing)}")
        messages: list[dict[str, str]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system.format(**values)})
        for user, assistant in self.few_shot:
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": assistant})
        messages.append({"role": "user", "content": self.user.format(**values)})
        return messages
