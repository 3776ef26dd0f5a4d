"""Typed job configs: a YAML file plus ``--set key.path=value`` overrides, no eval.

Every job config derives from :class:`JobConfig`; a CLI flag is just an override
of a config field, so anything a flag can do a config file can do too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ctray.errors import UserError
from ctray.io.corpus import CorpusConfig
from ctray.llm.config import BACKEND_CONFIGS, BackendConfig, FakeConfig, switch_kind

T = TypeVar("T", bound="JobConfig")
log = logging.getLogger(__name__)


class ConfigError(UserError, ValueError):
    pass


class RunConfig(BaseModel):
    """Where a job writes and how it runs: the ``run`` section of every job config."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field("runs/output", description="output folder, or an s3:// / gs:// URI")
    resume: bool = Field(True, description="skip rows finished (or failed) by an earlier run")
    retry_failed: bool = Field(False, description="reprocess only the rows whose latest "
                               "attempt failed (the errors table), as attempt k+1")
    allow_config_change: bool = Field(False, description="resume into a folder whose results "
                                      "came from other prompts, model or task options")
    ray_address: str | None = Field(None, description="Ray cluster address; 'auto' inside a "
                                    "cluster; unset: start (or join) a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (unset: all)")
    writer_batch_size: int = Field(256, ge=1, description="rows per written Parquet shard")
    rows_per_block: int | None = Field(None, ge=1, description="rows per block entering the "
                                       "stages (unset: writer_batch_size): what a kill can lose")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Python logging level")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.upper() if isinstance(value, str) else value


class JobConfig(BaseModel):
    """Base of every job config: the job name and the ``run`` section."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    job: str = Field("", description="the job's name (informational; set by each config)")
    run: RunConfig = Field(default_factory=RunConfig, description="output, resume, Ray")

    #: Dotted paths of this job's fields that cannot change a row's result (beyond the
    #: common allowlist in ``ctray.pipeline.job``): everything else is in the run
    #: fingerprint, and resuming under another value is refused.
    result_neutral_fields: ClassVar[frozenset[str]] = frozenset()


class CorpusJobConfig(JobConfig):
    """A job that streams a report corpus."""

    corpus: CorpusConfig = Field(description="the reports to read (path, columns, limit)")


class LLMJobConfig(CorpusJobConfig):
    """A corpus job that asks an LLM."""

    backend: BackendConfig = Field(default_factory=FakeConfig,
                                   description="the LLM backend (kind, model, batching)")


def sample_path(name: str) -> str:
    """A sample shipped in the package (``ctray/data/<name>``): the default inputs of the
    demo-sized configs, so every job runs out of the box."""
    from importlib import resources

    return str(resources.files("ctray") / "data" / name)


def offline_backend(**options: Any) -> BackendConfig:
    """The default LLM of the demo-sized configs: the packaged Gemma 3 270M, through the
    vLLM engine (CPU or GPU) when vLLM is installed, else on the local ``hf`` backend
    (no network either way); ``options`` set max_tokens, batch_size, ..."""
    from ctray.llm.config import default_backend

    return default_backend(**options)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(exc, "problem", None) or str(exc).splitlines()[0])


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML "
                          f"({_yaml_problem(exc)}); quote it, e.g. key='[a, b]'") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {path[-2]!r} is not a section")
        node[path[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None) -> T:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({_yaml_problem(exc)})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read the config file ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a config file must be a mapping")
        data = loaded or {}
    kinds = {name: section.get("kind") for name, section in data.items()
             if isinstance(section, dict)}
    data = apply_overrides(data, overrides or [])
    for name, old_kind in kinds.items():
        section = data.get(name)
        if isinstance(section, dict) and section.get("kind") != old_kind:
            dropped = switch_kind(section, old_kind)
            if dropped:
                log.warning("%s.kind is now %s: ignoring the %s fields of %s (%s)", name,
                            section.get("kind"), old_kind, path or "the config",
                            ", ".join(dropped))
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid {cls.__name__}{where}: "
                          + "; ".join(_problem(e) for e in exc.errors())) from None


def _problem(error: dict[str, Any]) -> str:
    """One validation error as ``dotted.path: message`` (a backend's kind tag, which
    pydantic puts in the path, left out)."""
    loc = [str(part) for part in error["loc"]]
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "unknown_backend":
        kind = error["input"].get("kind") if isinstance(error["input"], dict) else None
        loc.append("kind")
        msg = f"unknown LLM backend {kind!r}; choose one of {', '.join(sorted(BACKEND_CONFIGS))}"
    elif len(loc) > 1 and loc[1] in BACKEND_CONFIGS:
        del loc[1]
    return f"{'.'.join(loc)}: {msg}"


# ----------------------------------------------------------------- self-documentation

def _comment_docs(cls: type) -> dict[str, str]:
    """Field → the comment written above it (or at the end of its line) in the source:
    the fallback for fields without ``Field(description=...)``."""
    import ast
    import inspect
    import textwrap

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    docs: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, j = [], node.lineno - 2
        while j >= 0 and lines[j].strip().startswith("#"):
            above.insert(0, lines[j].strip().lstrip("#").strip())
            j -= 1
        inline = lines[node.end_lineno - 1].partition("  # ")[2].strip()
        if above or inline:
            docs[node.target.id] = " ".join(above) or inline
    return docs


def field_description(cls: type[BaseModel], name: str) -> str:
    """``cls.name``'s ``Field(description=...)``, else the nearest base class's (a job
    config that only changes the default of ``job`` or ``corpus`` keeps the base's words);
    "" when there is none."""
    for klass in cls.__mro__:
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        info = klass.model_fields.get(name)
        if info is not None and info.description:
            return info.description
    return ""


def field_doc(cls: type[BaseModel], name: str) -> str:
    """The description of ``cls.name``: its ``Field(description=...)`` (or a base
    class's), else the source comment next to it; "" when there is none."""
    described = field_description(cls, name)
    if described:
        return described
    for klass in cls.__mro__:
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        if name in klass.__dict__.get("__annotations__", {}):
            doc = _comment_docs(klass).get(name)
            if doc:
                return doc
    # A config section without its own words is described by its class's docstring.
    import typing

    info = cls.model_fields.get(name)
    for t in (info.annotation, *typing.get_args(info.annotation)) if info else ():
        if isinstance(t, type) and issubclass(t, BaseModel) and t.__doc__:
            return t.__doc__.strip().splitlines()[0]
    return ""


def section_models(annotation: Any) -> list[type[BaseModel]]:
    """The config classes a field's annotation allows: ``RunConfig``, ``X | None``,
    ``list[X]``, a tagged union of backend kinds."""
    import typing

    if typing.get_origin(annotation) is typing.Annotated:
        return section_models(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += [m for m in section_models(arg) if m not in found]
    return found


def describe_fields(cls: type[BaseModel], prefix: str = "",
                    defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """(dotted path, type, default, description) of every config field, nested sections
    included: what ``ctray <job> --help`` lists. Defaults are the config's own (a job's
    ``run`` section may default to another output than ``RunConfig``'s)."""
    import typing

    if defaults is None:
        try:  # defaults without validation; required fields are simply absent
            defaults = cls.model_construct()
        except Exception:  # a default factory that needs the environment
            defaults = None
    rows = []
    for name, info in cls.model_fields.items():
        path = prefix + name
        nested = section_models(info.annotation)
        plain = isinstance(info.annotation, type) and not typing.get_args(info.annotation)
        type_name = (info.annotation.__name__ if plain else str(info.annotation))
        type_name = type_name.replace("typing.", "").replace("NoneType", "None")
        value = getattr(defaults, name, None) if defaults is not None else None
        if info.is_required():
            default = "required"
        elif nested:
            default = "" if isinstance(value, BaseModel) else repr(value)
        elif defaults is None or not hasattr(defaults, name):
            default = "(computed)"
        else:
            default = repr(value)
        default = default if len(default) <= 60 else default[:57] + "..."
        if len(nested) > 1:
            type_name = " | ".join(t.__name__ for t in nested)
        rows.append((path, type_name, default, field_doc(cls, name)))
        if len(nested) == 1:
            rows.extend(describe_fields(nested[0], path + ".",
                                        value if isinstance(value, BaseModel) else None))
        elif nested:
            rows.extend(_union_rows(nested, path + ".", value))
    return rows


def _union_rows(models: list[type[BaseModel]], prefix: str,
                value: Any) -> list[tuple[str, str, str, str]]:
    """The fields of a union of sections (the backend kinds): each field once, the
    shared ones in the words of the common base class, the others marked with the
    kinds that have them."""
    common = next(c for c in models[0].__mro__
                  if all(issubclass(m, c) for m in models))
    found: dict[str, tuple[tuple[str, str, str, str], list[str]]] = {}
    # The configured kind first: its defaults and words are the ones that apply.
    for model in sorted(models, key=lambda m: not isinstance(value, m)):
        label = getattr(model, "KIND", "") or model.__name__
        own = value if isinstance(value, model) else None
        for row in describe_fields(model, prefix, own):
            found.setdefault(row[0], (row, []))[1].append(label)
    rows = []
    for path, (row, kinds) in found.items():
        name = path[len(prefix):]
        if len(kinds) == len(models) and "." not in name and name in common.model_fields:
            type_name = common.model_fields[name].annotation
            row = (row[0], getattr(type_name, "__name__", row[1]), row[2],
                   field_doc(common, name) or row[3])
        elif len(kinds) < len(models):
            row = (*row[:3], f"{row[3]} [{' / '.join(kinds)} only]")
        rows.append(row)
    return rows
