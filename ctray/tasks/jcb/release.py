"""Reading and writing the release's file layouts.

``generated/<group>/<task>/<model>/<shot>.json`` holds one record per item: a JSON
array for CLG/CLR and JSON Lines for CLU (the release mixes both under ``.json``);
``results/`` mirrors it with one JSON object per file. Benchmark CSVs may start
with a UTF-8 BOM (``utf-8-sig`` reads both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctray.errors import UserError


class JcbInputError(UserError):
    pass


@dataclass(frozen=True)
class GeneratedFile:
    group: str
    task: str
    model: str
    shot: str  # file stem: one_shot, zero_shot, or a variant such as one_shot4096
    path: Path

    @property
    def relative(self) -> str:
        return f"{self.group}/{self.task}/{self.model}/{self.shot}.json"


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """A JSON array or JSON Lines file of objects."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise JcbInputError(f"{p}: no such file") from None
    except UnicodeDecodeError as exc:
        raise JcbInputError(f"{p}: not UTF-8 text ({exc.reason})") from None
    stripped = text.strip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
        if isinstance(data, dict):
            data = [data]
    except json.JSONDecodeError:
        data = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise JcbInputError(f"{p}: line {number} is neither part of a JSON array "
                                    f"nor a JSON Lines record ({exc.msg})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise JcbInputError(f"{p}: expected a list of JSON objects (one per item)")
    return data


def write_records(path: Path | str, records: list[dict[str, Any]], jsonl: bool) -> None:
    """Write in the release's style: JSON Lines (CLU) or an indented JSON array."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if jsonl:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    p.write_text(text, encoding="utf-8")


def resolve_generated_root(path: str | Path) -> Path:
    """The folder that holds ``<group>/<task>/...``: the path itself or its ``generated/``."""
    p = Path(path)
    if not p.exists():
        raise JcbInputError(f"{p}: no such folder (expected a generated/ tree: "
                            "<group>/<task>/<model>/<shot>.json)")
    if not p.is_dir():
        raise JcbInputError(f"{p}: expected a folder holding <group>/<task>/<model>/<shot>.json")
    if (p / "generated").is_dir() and not any((p / g).is_dir() for g in ("CLG", "CLR", "CLU")):
        return p / "generated"
    return p


def find_generated(root: Path) -> list[GeneratedFile]:
    files = []
    for path in sorted(root.glob("*/*/*/*.json")):
        model_dir = path.parent
        files.append(GeneratedFile(model_dir.parent.parent.name, model_dir.parent.name,
                                   model_dir.name, path.stem, path))
    if not files:
        raise JcbInputError(f"{root}: no <group>/<task>/<model>/<shot>.json files "
                            "(the layout of the release's generated/ folder)")
    return files


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise JcbInputError(f"{path}: not valid JSON ({exc.msg})") from None
