"""The ReXGroundingCT finding-category schema (12 categories, 61 subcategories).

The schema is data (``categories.json``, transcribed from the paper's Figure S9)
so the text pipeline's prompts and validation and the imaging metrics' focal /
non-focal grouping all read the same codes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

DATA_FILE = "categories.json"
FOCAL = "focal"
NON_FOCAL = "non-focal"


@dataclass(frozen=True)
class Subcategory:
    code: str  # "2d"
    name: str
    parent: str  # "2"


@dataclass(frozen=True)
class Category:
    code: str  # "2"
    name: str
    # "focal" / "non-focal" for the lung categories the paper grounds, else None.
    focality: str | None
    subcategories: tuple[Subcategory, ...]


class CategorySchema:
    def __init__(self, categories: list[Category], source: str = ""):
        self.categories = tuple(categories)
        self.source = source
        self._parents = {c.code: c for c in self.categories}
        self._subs = {s.code: s for c in self.categories for s in c.subcategories}
        codes: list[str] = []
        for c in self.categories:
            codes.extend([s.code for s in c.subcategories] or [c.code])
        self._assignable = tuple(codes)

    @property
    def subcategories(self) -> tuple[Subcategory, ...]:
        return tuple(self._subs.values())

    def assignable_codes(self) -> list[str]:
        """Codes a finding may receive: every subcategory, plus a parent that has none
        (the paper's "12 Other")."""
        return list(self._assignable)

    def normalize(self, code: object) -> str | None:
        """The schema code for a model's spelling ("2D", " 2d)", "12.") or None."""
        if not isinstance(code, str):
            return None
        text = re.sub(r"[\s.)\]]+$", "", code.strip()).lower()
        return text if text in self._assignable else None

    def parent_of(self, code: str) -> Category:
        if code in self._parents:
            return self._parents[code]
        if code in self._subs:
            return self._parents[self._subs[code].parent]
        raise KeyError(f"unknown category code {code!r}")

    def name_of(self, code: str) -> str:
        if code in self._subs:
            return self._subs[code].name
        return self.parent_of(code).name

    def focality(self, code: str) -> str | None:
        return self.parent_of(code).focality

    def prompt_text(self) -> str:
        """The tree as the categorisation prompt shows it."""
        lines = []
        for c in self.categories:
            lines.append(f"{c.code}. {c.name}")
            lines.extend(f"   {s.code}: {s.name}" for s in c.subcategories)
        return "\n".join(lines)


def _parse(doc: dict, where: str) -> CategorySchema:
    categories = []
    seen: set[str] = set()
    for item in doc["categories"]:
        subs = []
        for s in item.get("subcategories", []):
            if not s["code"].startswith(item["code"]) or s["code"] in seen:
                raise ValueError(f"{where}: bad or duplicate subcategory code {s['code']!r}")
            seen.add(s["code"])
            subs.append(Subcategory(s["code"], s["name"], item["code"]))
        if item.get("focality") not in (None, FOCAL, NON_FOCAL):
            raise ValueError(f"{where}: category {item['code']}: focality must be "
                             f"{FOCAL!r}, {NON_FOCAL!r} or null")
        categories.append(Category(item["code"], item["name"], item.get("focality"), tuple(subs)))
    return CategorySchema(categories, doc.get("source", ""))


@lru_cache(maxsize=4)
def load_categories(path: str | None = None) -> CategorySchema:
    """The packaged schema, or the one at ``path`` (same layout)."""
    if path is None:
        text = (resources.files("ctray.tasks.grounding") / DATA_FILE).read_text(encoding="utf-8")
        where = DATA_FILE
    else:
        text = Path(path).read_text(encoding="utf-8")
        where = path
    return _parse(json.loads(text), where)
