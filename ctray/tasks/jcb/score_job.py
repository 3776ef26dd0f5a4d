"""``score-jcb``: score a ``generated/`` tree (released or from ``generate-jcb``).

Writes ``<output>/results/<group>/<task>/<model>/<shot>.json`` (the release's
``results/`` layout and keys), ``table4.md`` / ``table4.csv`` (one-shot headline per
setting, ``round(100 * x, 1)``, with a bootstrap 95% CI column per setting),
``scores.csv`` (every file, both shots), ``table4.png`` (one bar panel per setting)
and, with ``reference``, ``reference_check.csv`` (largest difference from the
released results per file). ``strict: true`` also scores with sane conventions
(unparseable = wrong, one common sample for every model) and prints both tables.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pydantic import Field

from ctray.config import JobConfig, RunConfig
from ctray.io.manifest import write_job_manifest
from ctray.tasks.jcb.metrics import bootstrap_ci, score_records
from ctray.tasks.jcb.registry import Setting, all_settings, setting_for_task_dir, split_source
from ctray.tasks.jcb.release import (GeneratedFile, JcbInputError, find_generated,
                                     read_records, read_result, resolve_generated_root)

log = logging.getLogger(__name__)
HEADLINE_SHOT = "one_shot"


class JcbScoreConfig(JobConfig):
    job: str = "score-jcb"
    run: RunConfig = Field(default_factory=lambda: RunConfig(output="runs/jcb_score"),
                           description="run.output: the folder for results/, table4.* and the manifest")
    generated: str = Field(description="a generated/ tree: <group>/<task>/<model>/<shot>.json "
                                       "(the release's or generate-jcb's)")
    strict: bool = Field(False, description="also score with sane conventions (unparseable = "
                                            "wrong, one common sample per setting); prints both")
    reference: str | None = Field(
        None, description="a released results/ folder: every produced JSON is compared with it, "
                          "and its models without outputs are added to Table 4 (released)")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples per Table 4 cell (0: no CIs)")
    seed: int = Field(0, description="bootstrap random seed")
    chart: bool = Field(True, description="write table4.png (one bar panel per setting)")
    benchmarks: str | None = Field(
        None, description="the release's data/benchmarks folder: every file must hold all of "
                          "its setting's items (unset: as many as the fullest file of the same "
                          "setting and shot)")
    allow_incomplete: bool = Field(
        False, description="score files with missing items or records without the required "
                           "fields (those records left out) and mark their Table 4 cells with "
                           "'*' instead of stopping")


def _record_key_fields(setting: Setting) -> list[str]:
    """Output keys that identify an item (the id column mapped through ``record``)."""
    if setting.data.id:
        keys = [out for out, src in setting.record.items()
                if split_source(src)[0] == setting.data.id]
        if keys:
            return keys
    return [out for out in setting.record
            if out not in (setting.generated_field, "generated")]


def _item_keys(records: list[dict[str, Any]], setting: Setting) -> list[str]:
    fields = _record_key_fields(setting)
    seen: Counter = Counter()
    keys = []
    for r in records:
        base = json.dumps([r.get(f) for f in fields], ensure_ascii=False, default=str)
        if setting.data.normalize_id:  # HS-PN: released ids are decomposed file names
            base = unicodedata.normalize(setting.data.normalize_id, base)
        keys.append(f"{base}#{seen[base]}")  # repeated items stay distinct
        seen[base] += 1
    return keys


def _common_sample(files: list[tuple[GeneratedFile, list[dict]]],
                   setting: Setting) -> dict[str, list[dict]]:
    """Strict mode: per shot, only the items every model has."""
    by_shot: dict[str, list] = defaultdict(list)
    for f, records in files:
        by_shot[f.shot].append((f, records, _item_keys(records, setting)))
    out = {}
    for shot, entries in by_shot.items():
        common = set.intersection(*(set(keys) for _, _, keys in entries))
        for f, records, keys in entries:
            out[f.relative] = [r for r, k in zip(records, keys) if k in common]
    return out


def _needed(setting: Setting) -> set[str]:
    needed = {setting.generated_field}
    if setting.metric == "tnm":
        needed |= {"t", "n", "m"}
    else:
        needed.add(setting.gold_field)
    return needed


def _check_fields(f: GeneratedFile, records: list[dict], setting: Setting) -> list[dict]:
    """The records holding every required field. A file whose first record lacks one
    is not of this setting's layout (stop); a few incomplete records are reported by
    ``score_tree`` with the other completeness problems."""
    if not records:
        raise JcbInputError(f"{f.path}: no records")
    needed = _needed(setting)
    missing = sorted(k for k in needed if k not in records[0])
    if missing:
        raise JcbInputError(f"{f.path}: records lack {missing} (fields of the release's "
                            f"generated/{setting.path}/ files: {sorted(setting.record)})")
    return [r for r in records if isinstance(r, dict) and needed <= set(r)]


def _expected_items(cfg: "JcbScoreConfig", setting: Setting, shot: str,
                    counts: list[int]) -> int:
    """Items a complete file holds: the benchmark's count, or the fullest sibling file."""
    if cfg.benchmarks is None:
        return max(counts)
    from ctray.tasks.jcb.data import load_items

    return len(load_items(cfg.benchmarks, setting, shot))


def score_tree(cfg: JcbScoreConfig) -> dict[str, Any]:
    root = resolve_generated_root(cfg.generated)
    files = find_generated(root)
    grouped: dict[str, list[tuple[GeneratedFile, list[dict]]]] = defaultdict(list)
    settings: dict[str, Setting] = {}
    read_counts: dict[str, tuple[int, int]] = {}
    for f in files:
        setting = setting_for_task_dir(f.task)
        if setting is None:
            log.warning("score-jcb: %s: no setting for task folder %r; skipped", f.relative, f.task)
            continue
        records = read_records(f.path)
        usable = _check_fields(f, records, setting)
        grouped[f.task].append((f, usable))
        settings[f.task] = setting
        read_counts[f.relative] = (len(records), len(records) - len(usable))
    if not grouped:
        raise JcbInputError(f"{root}: no task folder matches a J-ClinicalBench setting "
                            f"({', '.join(all_settings())})")
    if cfg.benchmarks is not None and not Path(cfg.benchmarks).is_dir():
        raise JcbInputError(f"benchmarks {cfg.benchmarks}: no such folder (the release's "
                            "data/benchmarks, holding CLG/, CLR/, CLU/)")
    coverage: dict[str, tuple[int, int]] = {}
    problems = []
    for task, entries in grouped.items():
        for shot in sorted({f.shot for f, _ in entries}):
            files = [f for f, _ in entries if f.shot == shot]
            expected = _expected_items(cfg, settings[task], shot,
                                       [read_counts[f.relative][0] for f in files])
            for f in files:
                total, lacking = read_counts[f.relative]
                coverage[f.relative] = (total - lacking, expected)
                if total != expected:
                    problems.append(f"{f.relative}: {total} of {expected} items")
                if lacking:
                    problems.append(f"{f.relative}: {lacking} record(s) lack one of "
                                    f"{sorted(_needed(settings[task]))}")
    if problems and not cfg.allow_incomplete:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                            if len(problems) > 5 else "")
        raise JcbInputError(f"incomplete outputs in {root}: {shown}. Scores of incomplete files "
                            "are not comparable; regenerate them, or pass --allow-incomplete "
                            "to score them with their Table 4 cells marked '*'")
    for problem in problems:
        print(f"ctray: warning: {problem} (scored; its Table 4 cell is marked '*')",
              file=sys.stderr)
    modes = ["paper"] + (["strict"] if cfg.strict else [])
    rows: list[dict[str, Any]] = []
    for task, entries in grouped.items():
        setting = settings[task]
        strict_records = _common_sample(entries, setting) if cfg.strict else {}
        for f, records in entries:
            for mode in modes:
                use = strict_records[f.relative] if mode == "strict" else records
                strict = mode == "strict"
                result, stats = score_records(use, setting, strict=strict)
                ci = (bootstrap_ci(stats, setting, strict, cfg.bootstrap, cfg.seed)
                      if cfg.bootstrap and f.shot == HEADLINE_SHOT and task == setting.name
                      else None)
                scored_n, expected = coverage[f.relative]
                rows.append({"file": f, "setting": setting, "mode": mode, "result": result,
                             "n": len(use), "headline": setting.headline_value(result),
                             "ci": ci, "expected": expected,
                             "complete": scored_n == expected})
    return {"root": root, "rows": rows}


# ------------------------------------------------------------------------ outputs

def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=4) + "\n", encoding="utf-8")


def _flatten(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cell(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{round(100 * value, 1):.1f}"


def _ci_cell(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"{_cell(ci[0])}–{_cell(ci[1])}"


def _table(rows: list[dict], mode: str, released: dict[str, dict[str, float]]):
    """Table 4: models x settings, one-shot headline, CI column per setting."""
    settings = list(all_settings().values())
    cells: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        f = r["file"]
        if r["mode"] == mode and f.shot == HEADLINE_SHOT and f.task == r["setting"].name:
            cells[f.model][f.task] = r
    header = ["model"]
    for s in settings:
        header += [s.label, f"{s.label} 95% CI"]
    body = []
    for model in sorted(cells):
        line = [model]
        for s in settings:
            r = cells[model].get(s.name)
            mark = "*" if r and not r["complete"] else ""
            line += [_cell(r["headline"]) + mark if r else "", _ci_cell(r["ci"]) if r else ""]
        body.append(line)
    if mode == "paper":
        for model in sorted(m for m in released if m not in cells):
            line = [f"{model} (released)"]
            for s in settings:
                line += [_cell(released[model].get(s.name)), ""]
            body.append(line)
    return header, body


def _incomplete_note(rows: list[dict], mode: str) -> str:
    marked = [f"{r['file'].model} {r['setting'].label}: {r['n']} of {r['expected']} items"
              for r in rows if r["mode"] == mode and not r["complete"]
              and r["file"].shot == HEADLINE_SHOT and r["file"].task == r["setting"].name]
    return ("\n\\* incomplete (scored with --allow-incomplete): " + "; ".join(marked) + "\n"
            if marked else "")


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _released_headlines(reference: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for s in all_settings().values():
        for path in sorted((reference / s.group / s.name).glob(f"*/{HEADLINE_SHOT}.json")):
            result = read_result(path)
            if result is not None:
                out[path.parent.name][s.name] = s.headline_value(result)
    return out


def _chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(all_settings().values())
    data: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        f = r["file"]
        if r["mode"] == "paper" and f.shot == HEADLINE_SHOT and f.task == r["setting"].name:
            data[f.task][f.model] = r
    models = sorted({m for per in data.values() for m in per})
    cols = 5
    nrows = math.ceil(len(settings) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, s in zip(axes.flat, settings):
        per = data.get(s.name, {})
        values = [100 * per[m]["headline"] if m in per else 0.0 for m in models]
        errs = [[100 * (per[m]["headline"] - per[m]["ci"][0]) if m in per and per[m]["ci"] else 0
                 for m in models],
                [100 * (per[m]["ci"][1] - per[m]["headline"]) if m in per and per[m]["ci"] else 0
                 for m in models]]
        ax.bar(range(len(models)), values, yerr=errs, capsize=3,
               color=[f"C{i}" for i in range(len(models))])
        ax.set_title(s.label, fontsize=10)
        ax.set_ylim(0, 100)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=45, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    fig.suptitle("J-ClinicalBench one-shot headline (bars: 95% bootstrap CI)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_jcb_score(cfg: JcbScoreConfig) -> dict[str, Any]:
    started = time.time()
    reference = Path(cfg.reference) if cfg.reference else None
    if reference is not None and not reference.is_dir():
        raise JcbInputError(f"reference {reference}: no such folder (expected a results/ tree)")
    scored = score_tree(cfg)
    rows = scored["rows"]
    out = Path(cfg.run.output)
    out.mkdir(parents=True, exist_ok=True)
    checks = []
    for r in rows:
        f = r["file"]
        sub = "results" if r["mode"] == "paper" else "results_strict"
        _write_json(out / sub / f"{f.group}/{f.task}/{f.model}/{f.shot}.json", r["result"])
        if reference is not None and r["mode"] == "paper":
            ref = read_result(reference / f.relative)
            if ref is not None:
                mine, theirs = _flatten(r["result"]), _flatten(ref)
                same_keys = list(mine) == list(theirs)
                diff = max((abs(mine[k] - theirs[k]) for k in mine if k in theirs), default=math.nan)
                checks.append({"file": f.relative, "same_keys": same_keys, "max_abs_diff": diff,
                               "headline": r["headline"],
                               "released_headline": r["setting"].headline_value(ref)})
    with open(out / "scores.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["setting", "group", "task", "model", "shot", "mode", "n", "expected_n",
                    "complete", "headline", "ci_low", "ci_high", "result"])
        for r in rows:
            f = r["file"]
            ci = r["ci"] or (None, None)
            w.writerow([r["setting"].name, f.group, f.task, f.model, f.shot, r["mode"], r["n"],
                        r["expected"], r["complete"], r["headline"], ci[0], ci[1],
                        json.dumps(r["result"], ensure_ascii=False)])
    released = _released_headlines(reference) if reference is not None else {}
    printed = []
    for mode in ["paper"] + (["strict"] if cfg.strict else []):
        header, body = _table(rows, mode, released)
        suffix = "" if mode == "paper" else "_strict"
        md = _markdown(header, body) + _incomplete_note(rows, mode)
        (out / f"table4{suffix}.md").write_text(md, encoding="utf-8")
        with open(out / f"table4{suffix}.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([header] + body)
        title = ("Table 4, the paper's conventions" if mode == "paper" else
                 "Table 4, strict conventions (unparseable = wrong, one sample per setting)")
        printed.append(f"## {title}\n\n{md}")
    if checks:
        with open(out / "reference_check.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(checks[0]))
            w.writeheader()
            w.writerows(checks)
    if cfg.chart:
        _chart(rows, out / "table4.png")
    print("\n".join(printed))
    summary = {"files": len({r["file"].relative for r in rows}), "output": str(out),
               "reference_checked": len(checks)}
    if checks:
        worst = max(checks, key=lambda c: -1 if math.isnan(c["max_abs_diff"]) else c["max_abs_diff"])
        summary["reference_max_abs_diff"] = worst["max_abs_diff"]
        summary["reference_worst_file"] = worst["file"]
        off = [c["file"] for c in checks if not c["max_abs_diff"] <= 1e-6]
        summary["reference_over_1e-6"] = off
        print(f"[ctray score-jcb] compared {len(checks)} files with {reference}: "
              f"{len(checks) - len(off)} within 1e-6; over: {', '.join(off) or 'none'}")
    write_job_manifest(cfg, started, generated=str(scored["root"]), strict=cfg.strict,
                       settings=sorted({r["setting"].name for r in rows}),
                       models=sorted({r["file"].model for r in rows}),
                       reference_check={k: v for k, v in summary.items() if k != "output"})
    print(f"[ctray score-jcb] {summary['files']} files scored; results in {out}/results, "
          f"Table 4 in {out}/table4.md")
    return summary
