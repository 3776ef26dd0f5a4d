"""LEAVS for a handful of reports in one process (the Serve app, benchmarks).

The same questions, fan-out and assembly as the staged corpus job
(:mod:`ctray.tasks.leavs.leavs_job`), on pandas frames and one in-process backend
(a vLLM engine in a Serve replica, or any other backend), instead of one Ray Data
pass per stage: a single report does not pay for eight Dataset runs.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from ctray.pipeline.stage import ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL


def label_reports(cfg, reports: list[dict], backend, batch_size: int = 16,
                  on_stage: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(labels, failed)``: one label row per (report, organ), and the rows a stage
    could not answer (with their error), for ``reports`` (dicts with ``report_id``,
    ``text``) under ``cfg`` (a LeavsConfig; ``cfg.backend`` only names the model)."""
    from ctray.llm.task import LLMStage
    from ctray.tasks.leavs import assemble as A
    from ctray.tasks.leavs.fanout import (certainty_rows, check_rows, organ_rows, type_rows,
                                          urgency_rows)
    from ctray.tasks.leavs.leavs_job import _question_stage

    failed: list[pd.DataFrame] = []

    def ask(name: str, rows: pd.DataFrame) -> pd.DataFrame:
        if on_stage is not None:
            on_stage(name)
        stage = _question_stage(cfg, name)
        stage.backend = backend
        if hasattr(stage, "reason_task"):  # the CoT pair shares the backend
            stage._reason_stage = LLMStage(stage.reason_task, cfg.backend)
            stage._reason_stage.backend = backend
        if rows.empty:
            return rows
        rows = rows.assign(**{ERROR_COL: None, ERROR_STAGE_COL: None, ERROR_TYPE_COL: None})
        rows = rows.reset_index(drop=True)
        parts = [stage.process_batch(rows.iloc[i:i + batch_size])
                 for i in range(0, len(rows), batch_size)]
        out = pd.concat(parts, ignore_index=True)
        bad = out[ERROR_COL].notna()
        if bad.any():
            failed.append(out[bad])
        return out[~bad]

    corpus = pd.DataFrame(reports).assign(**{ERROR_COL: None})
    organs = organ_rows(corpus, cfg.organs)
    done = {"filter_list": ask("filter_list", organs)}
    done["filter_check"] = ask("filter_check", check_rows(done["filter_list"], cfg.fast))
    ev = {k: A.events(done[s], k, A.EVENT_FIELDS[k]) if len(done[s])
          else pd.DataFrame(columns=A.EVENT_COLS)
          for k, s in (("list", "filter_list"), ("check", "filter_check"))}
    both = pd.concat(ev.values(), ignore_index=True)
    groups = [A.combine_filter(g, cfg.fast) for _, g in both.groupby(["report_id", "organ"])]
    filt = pd.concat(groups, ignore_index=True) if groups else both
    done["finding_types"] = ask("finding_types", type_rows(filt))
    done["certainty"] = ask("certainty", certainty_rows(done["finding_types"],
                                                        cfg.unselected_types == "ask"))
    done["urgency"] = ask("urgency", urgency_rows(done["certainty"]))
    kinds = {"filter_list": "list", "filter_check": "check", "finding_types": "types",
             "certainty": "certainty", "urgency": "urgency"}
    events = [A.events(organs, "base", ["n_sentences"])] + [
        A.events(done[s], k, A.EVENT_FIELDS[k]) for s, k in kinds.items() if len(done[s])]
    allev = pd.concat(events, ignore_index=True)
    labels = pd.concat([A.assemble_group(g, cfg.fast, cfg.unselected_types == "ask")
                        for _, g in allev.groupby(["report_id", "organ"])], ignore_index=True)
    return labels, (pd.concat(failed, ignore_index=True) if failed else pd.DataFrame())
