"""The setting registry: one YAML file per setting under ``settings/``.

A setting names its data files, its zero/one-shot prompt files and their
placeholders, which released ``generated/`` fields a record holds, the answer
parser and the metric (both looked up by name in ``parsing.PARSERS`` and
``metrics.METRICS``), and a version. Adding a setting = one YAML file (+ a parser
or metric function when the existing ones do not fit).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ctray.errors import UserError

SETTINGS_DIR = Path(__file__).parent / "settings"
SHOTS = ("zero_shot", "one_shot")


class UnknownSettingError(UserError):
    pass


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[str]
    format: str = "csv"  # csv | json | jsonl
    id: str | None = None
    loader: str | None = None  # a named loader in ``data.LOADERS`` for joined layouts
    normalize_id: str | None = None  # unicodedata form applied to ids before matching
    sample: dict[str, int] | None = None  # pandas DataFrame.sample(**sample)
    take: int | None = None  # the first N rows (after the one-shot offset)


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zero_shot: str
    one_shot: str
    # Literal placeholder in the released prompt file -> row column that fills it.
    placeholders: dict[str, str]
    options_from: str | None = None
    one_shot_exclude: list[str] = Field(default_factory=list)
    one_shot_exclude_column: str | None = None  # default: data.id
    one_shot_offset: int = 0
    max_tokens: int = 512


class Setting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    group: str
    label: str
    order: int
    version: int
    data: DataSpec
    prompt: PromptSpec
    # Output key -> data column ("col:int" casts, "col:literal" parses a Python literal).
    record: dict[str, str]
    # True: generated/ stores the parsed answer (ExamQA's released files hold an int).
    store_parsed: bool = False
    generated_field: str = "generated"
    gold_field: str = "gold"
    parser: str
    parser_args: dict[str, Any] = Field(default_factory=dict)
    metric: str
    metric_args: dict[str, Any] = Field(default_factory=dict)
    # The Table 4 number: a key of the results JSON or mean(a.b,c.d,...).
    headline: str = "f1"
    variants: list[str] = Field(default_factory=list)

    @property
    def path(self) -> str:
        return f"{self.group}/{self.name}"

    def prompt_file(self, shot: str) -> str:
        if shot not in SHOTS:
            raise UserError(f"shot must be one of {SHOTS}, not {shot!r}")
        return getattr(self.prompt, shot)

    def headline_value(self, result: dict[str, Any]) -> float:
        spec = self.headline
        if spec.startswith("mean(") and spec.endswith(")"):
            keys = [k.strip() for k in spec[5:-1].split(",")]
            return sum(_dig(result, k) for k in keys) / len(keys)
        return float(_dig(result, spec))


CASTS = ("int", "literal")


def split_source(spec: str) -> tuple[str, str]:
    """``"col:int"`` -> ("col", "int"); column names may contain colons ("Unnamed: 0")."""
    column, sep, cast = spec.rpartition(":")
    if sep and cast in CASTS:
        return column, cast
    return spec, ""


def _dig(result: dict[str, Any], dotted: str) -> float:
    node: Any = result
    for part in dotted.split("."):
        node = node[part]
    return float(node)


@lru_cache(maxsize=None)
def _load_all(directory: str) -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        try:
            setting = Setting.model_validate(data)
        except Exception as exc:  # a broken definition is a developer error: say which file
            raise UserError(f"J-ClinicalBench setting {path.name}: {exc}") from None
        out[setting.name] = setting
    return out


def all_settings(directory: Path | str = SETTINGS_DIR) -> dict[str, Setting]:
    """Every setting, in Table 4 order."""
    found = _load_all(str(directory))
    return dict(sorted(found.items(), key=lambda kv: kv[1].order))


def get_setting(name: str, directory: Path | str = SETTINGS_DIR) -> Setting:
    settings = all_settings(directory)
    if name in settings:
        return settings[name]
    for setting in settings.values():
        if name in setting.variants or name == setting.label:
            return setting
    raise UnknownSettingError(f"unknown J-ClinicalBench setting {name!r}; known: "
                              f"{', '.join(settings)}")


def setting_for_task_dir(task: str, directory: Path | str = SETTINGS_DIR) -> Setting | None:
    """The setting that scores ``generated/<group>/<task>/`` (variants included)."""
    for setting in all_settings(directory).values():
        if task == setting.name or task in setting.variants:
            return setting
    return None
