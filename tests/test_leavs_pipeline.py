"""LEAVS labeling pipeline: prompts, answer parsing, fan-out/fan-in, a full staged run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ctray.llm.base import LLMResponse
from ctray.llm.config import backend_config
from ctray.pipeline.stage import ERROR_COL, RowError
from ctray.tasks.leavs import assemble as A
from ctray.tasks.leavs import prompts as P
from ctray.tasks.leavs import schema
from ctray.tasks.leavs.fanout import (certainty_rows, check_rows, organ_rows, type_rows,
                                      urgency_rows)
from ctray.tasks.leavs.parsing import (AnswerParseError, parse_choice, parse_sentence_numbers,
                                       parse_types)
from ctray.tasks.leavs.llm_tasks import (AnswerTask, Certainty, CheckSentence, FindingTypes,
                                         ListSentences, Urgency)
from ctray.tasks.leavs.stages import CotLLMStage, question_stage

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "ctray" / "data" / "sample_abdominal_reports.jsonl"
REPORTS = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
SENTENCES = ["FINDINGS: The liver is enlarged.", "A 1.2 cm cyst is present in segment 6.",
             "The spleen is unremarkable."]
EVIDENCE = SENTENCES[:2]
FAKE = dict(kind="fake", model="keyword-rules", fake_responder="leavs_fake:answer")


def organ_row(organ="liver", sentences=SENTENCES, **extra):
    return {"report_id": "r1", "organ": organ, "sentences_json": json.dumps(sentences),
            "n_sentences": len(sentences), **extra}


def evidence_row(organ="liver", finding_type="focal", **extra):
    return {"report_id": "r1", "organ": organ, "finding_type": finding_type,
            "evidence_json": json.dumps(EVIDENCE), **extra}


# ---------------------------------------------------------------- prompt building

def test_list_prompt_puts_instructions_first_then_the_numbered_report_then_the_organ():
    q = ListSentences()
    a = AnswerTask(q, cot=True).build_request(organ_row("liver"))
    b = AnswerTask(q, cot=True).build_request(organ_row("spleen", ["Other report."]))
    user = a.messages[-1]["content"]
    assert a.messages[0]["role"] == "system" and a.choices is None
    assert user.index("Sentences:") < user.index("1. FINDINGS: The liver is enlarged.") \
        < user.index("3. The spleen is unremarkable.") < user.index("Organ: liver")
    assert len(a.messages) == 2  # the list step is never chain-of-thought (paper)
    # Everything up to the report is the same for every row of the stage.
    shared = user.split("Report sentences:\n")[0]
    assert b.messages[-1]["content"].startswith(shared) and len(shared) > 300


def test_check_prompt_shares_the_report_prefix_across_organs_and_sentences():
    task = AnswerTask(CheckSentence(), cot=False)
    r1 = task.build_request({**organ_row("liver"), "sentence_idx": 2})
    r2 = task.build_request({**organ_row("spleen"), "sentence_idx": 3})
    u1, u2 = r1.messages[-1]["content"], r2.messages[-1]["content"]
    prefix = u1.split("Organ:")[0]
    assert u2.startswith(prefix) and "3. The spleen is unremarkable." in prefix
    assert 'Sentence 2: "A 1.2 cm cyst is present in segment 6."' in u1
    assert r1.choices == ["yes", "no"] and u1.endswith("Reply with yes or no only.")
    with pytest.raises(RowError, match="sentence_idx 9 outside 1..3"):
        task.build_request({**organ_row(), "sentence_idx": 9})


def test_cot_summary_continues_the_reasoning_conversation_with_guided_choices():
    q = Certainty()
    row = evidence_row(reasoning="The cyst in segment 6 is a measurable liver lesion.")
    reason = question_stage(q, backend_config(**FAKE), cot=True, cot_max_tokens=300)
    first = reason.reason_task.build_request(row)
    second = AnswerTask(q, cot=True).build_request(row)
    assert first.choices is None and first.max_tokens == 300
    assert "Think step by step" in first.messages[-1]["content"]
    # The summary request repeats the first conversation exactly, as a cacheable prefix.
    assert second.messages[:len(first.messages)] == first.messages
    assert second.messages[len(first.messages)] == {"role": "assistant", "content": row["reasoning"]}
    assert second.choices == list(P.CERTAINTY_OPTIONS)
    body = first.messages[-1]["content"]
    assert body.index("- mentioned only for a broad area") < body.index("- A 1.2 cm cyst") \
        < body.index("Finding type: Focal")
    with pytest.raises(RowError, match="no reasoning"):
        AnswerTask(q, cot=True).build_request(evidence_row())


def test_no_cot_asks_directly_and_prompt_versions_track_the_wording():
    cot = question_stage(FindingTypes(), backend_config(**FAKE), cot=True, cot_max_tokens=64)
    direct = question_stage(FindingTypes(), backend_config(**FAKE), cot=False, cot_max_tokens=64)
    assert isinstance(cot, CotLLMStage) and not isinstance(direct, CotLLMStage)
    req = direct.task.build_request({"report_id": "r1", "organ": "liver",
                                     "evidence_json": json.dumps(EVIDENCE)})
    assert len(req.messages) == 2 and req.messages[-1]["content"].endswith(
        "using only these names: " + P.TYPE_NAMES_LINE + ".")
    assert cot.describe()["prompt_version"] != direct.describe()["prompt_version"]
    for name, (display, definition) in P.TYPE_DEFINITIONS.items():
        assert f"- {display}: {definition}." in req.messages[-1]["content"]
    urgent = AnswerTask(Urgency(), cot=False).build_request(evidence_row(certainty=-1))
    assert "The report has it mentioned as possible." in urgent.messages[-1]["content"]
    with pytest.raises(RowError, match="only for present or possible"):
        AnswerTask(Urgency(), cot=False).build_request(evidence_row(certainty=0))


# ------------------------------------------------------------------ answer parsing

SENTENCE_ANSWERS = {
    "format line": ("Sentences: 1, 3", 5, [1, 3], []),
    "format line after reasoning": ("The liver appears in 1.\nSentences: 2, 4", 5, [2, 4], []),
    "markdown": ("**Sentences:** 2", 5, [2], []),
    "bare list": ("[2, 5]", 5, [2, 5], []),
    "range": ("Sentences: 2-4", 5, [2, 3, 4], []),
    "prose": ("The informative sentences are 2 and 5.", 5, [2, 5], []),
    "prose with a measurement": ("Sentence 3 mentions the 1.5 cm cyst.", 5, [3], []),
    "quoted sentence after the number": ('Sentences: 3 ("segment 6 cyst"), 4', 5, [3, 4], []),
    "out of range dropped": ("Sentences: 2, 42", 5, [2], [42]),
    "none": ("Sentences: none", 5, [], []),
    "none in prose": ("None of the sentences mention the pancreas.", 5, [], []),
    "bare none": ("none", 5, [], []),
}
BAD_SENTENCE_ANSWERS = {
    "empty": ("  ", "empty answer"),
    "only out of range": ("Sentences: 7, 9", "outside 1..5"),
    "prose without numbers": ("The liver is described in detail.", "no sentence numbers"),
    "label without numbers": ("Sentences: the first two", "no sentence numbers"),
}


@pytest.mark.parametrize("case", sorted(SENTENCE_ANSWERS))
def test_sentence_numbers_are_read_from_realistic_answers(case):
    text, n, valid, dropped = SENTENCE_ANSWERS[case]
    assert parse_sentence_numbers(text, n) == (valid, dropped)


@pytest.mark.parametrize("case", sorted(BAD_SENTENCE_ANSWERS))
def test_unusable_sentence_answers_are_errors(case):
    text, reason = BAD_SENTENCE_ANSWERS[case]
    with pytest.raises(AnswerParseError, match=reason):
        parse_sentence_numbers(text, 5)


CERTAINTY = {k: int(v[0]) for k, v in P.CERTAINTY_OPTIONS.items()}
URGENCY = {k: int(v[0]) for k, v in P.URGENCY_OPTIONS.items()}


@pytest.mark.parametrize("text,options,aliases,expected", [
    ("yes", P.YES_NO, None, True),
    ("No, it describes the spleen.", P.YES_NO, None, False),
    ("The sentence is informative, so the answer is yes.", P.YES_NO, None, True),
    ("mentioned as possible", CERTAINTY, P.CERTAINTY_ALIASES, -1),
    ("**Stated as absent or very unlikely.**", CERTAINTY, P.CERTAINTY_ALIASES, 0),
    ("Answer: not directly mentioned", CERTAINTY, P.CERTAINTY_ALIASES, -2),
    ("The finding is mentioned only for a broad area.", CERTAINTY, P.CERTAINTY_ALIASES, -3),
    ("ambiguous comparison with a prior report", CERTAINTY, P.CERTAINTY_ALIASES, -3),
    ("Present.", CERTAINTY, P.CERTAINTY_ALIASES, 1),
    ("It is not present.", CERTAINTY, P.CERTAINTY_ALIASES, 0),
    ("high urgency", URGENCY, P.URGENCY_ALIASES, 3),
    ("Normal, expected or chronic", URGENCY, P.URGENCY_ALIASES, 0),
    ("Medium.", URGENCY, P.URGENCY_ALIASES, 2),
])
def test_choice_answers_map_to_release_codes(text, options, aliases, expected):
    assert parse_choice(text, options, aliases) == expected


@pytest.mark.parametrize("text,reason", [
    ("", "empty answer"), ("I cannot tell from the report.", "none of the options"),
    ("yes and no", "several options"), ("low urgency or high urgency", "several options"),
])
def test_malformed_choice_answers_are_errors(text, reason):
    options = URGENCY if "urgency" in text else P.YES_NO
    with pytest.raises(AnswerParseError, match=reason):
        parse_choice(text, options, P.URGENCY_ALIASES if "urgency" in text else None)


def test_every_certainty_option_maps_to_the_paper_code():
    # Possible = radiologist unsure (-1); comparison ambiguity and broad area share -3.
    assert CERTAINTY == {"mentioned as possible": -1, "stated as present": 1,
                         "stated as absent or very unlikely": 0, "not directly mentioned": -2,
                         "ambiguous comparison with a prior report": -3,
                         "mentioned only for a broad area": -3}
    assert all(code in list(schema.Certainty) for code in CERTAINTY.values())


@pytest.mark.parametrize("text,expected", [
    ("Types: Focal, Diffuse", ["diffuse", "focal"]),
    ("Types: Normal", ["normal"]),
    ("The liver is not enlarged.\nTypes: Focal", ["focal"]),
    ("An abnormal organ with focal and post-surgical changes.", ["postsurgical", "focal"]),
    ("**Types:** Atrophic, Device", ["device", "atrophy"]),
])
def test_type_answers(text, expected):
    assert parse_types(text) == expected


@pytest.mark.parametrize("text", ["", "Types: none", "The organ has problems."])
def test_type_answers_without_a_type_are_errors(text):
    with pytest.raises(AnswerParseError):
        parse_types(text)


def test_parse_failure_becomes_a_row_error_with_one_repair_request():
    task = AnswerTask(ListSentences(), cot=False)
    row = organ_row()
    with pytest.raises(RowError, match="row 'r1' organ 'liver': unusable answer: sentence numbers"):
        task.parse(row, LLMResponse("Sentences: 8"))
    bad = LLMResponse("Sentences: 8")
    repair = task.repair_request(row, bad, RowError("x: sentence numbers [8] are outside 1..3"))
    assert repair.messages[-2] == {"role": "assistant", "content": "Sentences: 8"}
    assert "outside 1..3" in repair.messages[-1]["content"]
    assert AnswerTask(ListSentences(), cot=False, repair=False).repair_request(row, bad, RowError("x")) is None


# ------------------------------------------------------ the CoT stage in process

def run_stage(stage, rows):
    stage.setup()
    batch = pd.DataFrame(rows).assign(**{ERROR_COL: None, "_error_stage": None, "_error_type": None})
    return stage.process_batch(batch)


def test_cot_stage_counts_both_requests_and_repairs():
    rows = [{"report_id": "r1", "organ": "liver", "evidence_json": json.dumps(EVIDENCE)},
            {"report_id": "r1", "organ": "stomach",
             "evidence_json": json.dumps(["The stomach is unremarkable."])}]
    stage = question_stage(FindingTypes(), backend_config(**FAKE), cot=True, cot_max_tokens=64)
    out = run_stage(stage, rows).set_index("organ")
    assert out.loc["liver", "types"] == "enlarged,focal"
    # The fake answers the stomach's first summary in prose: one repair request.
    assert out.loc["stomach", "types"] == "normal"
    assert out["llm_calls"].to_dict() == {"liver": 2, "stomach": 3}
    for organ in ("liver", "stomach"):
        assert out.loc[organ, "prompt_tokens"] > out.loc[organ, "reasoning_prompt_tokens"] > 0
        assert out.loc[organ, "reasoning"].startswith(f"Considering the {organ}")


def test_cot_stage_keeps_rows_and_order_when_reasoning_fails():
    rows = [evidence_row(organ="liver", finding_type="focal"),
            evidence_row(organ="liver", finding_type="bogus"),
            evidence_row(organ="spleen", finding_type="normal")]
    out = run_stage(question_stage(Certainty(), backend_config(**FAKE), cot=True,
                                   cot_max_tokens=64), rows)
    assert list(out["finding_type"]) == ["focal", "bogus", "normal"]
    assert out[ERROR_COL].notna().tolist() == [False, True, False]
    assert "unknown finding_type 'bogus'" in out[ERROR_COL].iloc[1]
    assert out["certainty"].iloc[0] == 1 and out["certainty"].iloc[2] == -2


# --------------------------------------------------------------- fan-out / fan-in

def test_fan_out_keys_are_exact():
    corpus = pd.DataFrame([{"report_id": "a", "text": "The liver is normal. The spleen is normal.",
                            ERROR_COL: None},
                           {"report_id": "b", "text": None, ERROR_COL: "read failed"}])
    organs = organ_rows(corpus, ["liver", "spleen", "pancreas"])
    assert sorted(zip(organs["report_id"], organs["organ"])) == sorted(
        (r, o) for r in "ab" for o in ("liver", "spleen", "pancreas"))
    assert organs.loc[organs["report_id"] == "b", ERROR_COL].eq("read failed").all()
    listed = organs[organs["report_id"] == "a"].assign(listed=["1", "", "1,2"])
    checks = check_rows(listed)
    assert sorted(zip(checks["organ"], checks["sentence_idx"])) == [
        ("liver", 2), ("spleen", 1), ("spleen", 2)]
    assert check_rows(listed, fast=True).empty

    chosen = pd.DataFrame([{"report_id": "a", "organ": "liver", "types": "focal,normal",
                            "evidence_json": "[\"x\"]"}])
    ask_all = certainty_rows(chosen, ask_unselected=True)
    assert list(ask_all["finding_type"]) == list(schema.FINDING_TYPES)
    assert ask_all.set_index("finding_type")["selected"].sum() == 2
    only = certainty_rows(chosen, ask_unselected=False)
    assert list(only["finding_type"]) == ["normal", "focal"]
    answered = ask_all.assign(certainty=[1, 0, -1, -2, -3, 1, 0, -1, -2, -3, 1])
    urgent = urgency_rows(answered)  # normal (first) is present but never asked
    assert list(urgent["finding_type"]) == ["adjacent", "anatomy", "enlarged", "focal"]


def events_of(kind, rows):
    return A.events(pd.DataFrame(rows), kind, [f for f in A.EVENT_FIELDS[kind]
                                               if f in pd.DataFrame(rows).columns])


def organ_events(listed="1", checks=(), types=None, certainty=(), urgency=(), base=True):
    sentences = json.dumps(["s1", "s2", "s3"])
    parts = [events_of("base", [{"report_id": "r", "organ": "liver", "n_sentences": 3}])] if base else []
    parts.append(events_of("list", [{"report_id": "r", "organ": "liver",
                                     "sentences_json": sentences, "listed": listed,
                                     "llm_calls": 1, "prompt_tokens": 10, "completion_tokens": 2}]))
    if checks:
        parts.append(events_of("check", [{"report_id": "r", "organ": "liver", "sentence_idx": i,
                                          "informative": yes, "llm_calls": 2, "prompt_tokens": 5,
                                          "completion_tokens": 1} for i, yes in checks]))
    if types is not None:
        parts.append(events_of("types", [{"report_id": "r", "organ": "liver", "types": types}]))
    if certainty:
        parts.append(events_of("certainty", [{"report_id": "r", "organ": "liver",
                                              "finding_type": t, "certainty": c}
                                             for t, c in certainty]))
    if urgency:
        parts.append(events_of("urgency", [{"report_id": "r", "organ": "liver",
                                            "finding_type": t, "urgency": u} for t, u in urgency]))
    return pd.concat(parts, ignore_index=True)


def test_filtration_fan_in_is_the_union_and_waits_for_every_check():
    full = A.combine_filter(organ_events("1", [(2, True), (3, False)]), fast=False).iloc[0]
    assert json.loads(full["evidence_json"]) == ["s1", "s2"] and full["filter_complete"]
    waiting = A.combine_filter(organ_events("1", [(2, True)]), fast=False).iloc[0]
    assert not waiting["filter_complete"]
    fast = A.combine_filter(organ_events("1", [(2, True)]), fast=True).iloc[0]
    assert json.loads(fast["evidence_json"]) == ["s1"] and fast["filter_complete"]
    assert len(type_rows(pd.DataFrame([full, waiting]))) == 1


@pytest.mark.parametrize("kwargs,status", [
    ({"checks": [(2, False)]}, "incomplete:filter_check"),
    ({"checks": [(2, False), (3, False)]}, "incomplete:finding_types"),
    ({"checks": [(2, False), (3, False)], "types": "focal",
      "certainty": [("focal", 1)]}, "incomplete:certainty"),
])
def test_an_organ_is_labelled_only_when_every_question_has_an_answer(kwargs, status):
    assert A.assemble_group(organ_events(**kwargs), fast=False,
                            ask_unselected=True)["status"].iloc[0] == status


def test_assembly_codes_urgency_and_modes():
    answers = [(t, 0) for t in schema.FINDING_TYPES if t not in ("focal", "normal")]
    ev = organ_events("1,2,3", types="focal", certainty=answers + [("focal", 1), ("normal", -1)],
                      urgency=[("focal", 2)])
    row = A.assemble_group(ev, fast=False, ask_unselected=True).iloc[0]
    assert row["status"] == A.OK and row["focal"] == 1 and row["enlarged"] == 0
    assert row["urgency_focal"] == 2 and row["urgency_normal"] == 0  # normal: fixed, not asked
    assert row["urgency_enlarged"] == schema.URGENCY_MISSING
    assert row["merged_enlarged_atrophy"] == 0 and row["merged_focal"] == 1
    assert row["filter_list_llm_calls"] == 1 and row["filter_check_llm_calls"] == 0
    # Only the chosen type is asked: the others are "not mentioned" whatever else is stored.
    narrow = A.assemble_group(ev, fast=False, ask_unselected=False).iloc[0]
    assert narrow["focal"] == 1 and narrow["enlarged"] == -2 and narrow["normal"] == -2
    missing_urgency = organ_events("1,2,3", types="focal", certainty=[("focal", -1)])
    assert A.assemble_group(missing_urgency, fast=False,
                            ask_unselected=False)["status"].iloc[0] == "incomplete:urgency"
    nothing = A.assemble_group(organ_events("", [(1, False), (2, False), (3, False)]), fast=False,
                               ask_unselected=True).iloc[0]
    assert nothing["status"] == A.OK and (nothing[list(schema.FINDING_TYPES)] == -2).all()
    assert A.assemble_group(organ_events(base=False), fast=False, ask_unselected=True).empty


def test_release_rows_layout():
    wide = A.assemble_group(organ_events("", [(1, False), (2, False), (3, False)]), fast=False,
                            ask_unselected=True)
    rows = A.release_rows(wide)
    assert list(rows.columns) == A.RELEASE_COLUMNS
    assert list(rows["type_annotation"]) == ["labels", "urgency"]
    assert (rows[list(schema.FINDING_TYPES)].to_numpy() == [[-2] * 11, [-1] * 11]).all()


# ------------------------------------------------------------- a full staged run

FAIL_REPORT = {"report_id": "abd_broken", "text": "FINDINGS: ZZFAIL dictation fragment."}


@pytest.fixture(scope="module")
def leavs_run(ray_local, tmp_path_factory):
    from ctray.tasks.leavs.leavs_job import LeavsConfig, run_leavs

    base = tmp_path_factory.mktemp("leavs")
    corpus = base / "reports.jsonl"
    rows = [{"report_id": r["report_id"], "text": r["text"]} for r in REPORTS] + [FAIL_REPORT]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = LeavsConfig.model_validate({
        "run": {"output": str(base / "out")},
        "corpus": {"path": str(corpus), "id_column": "report_id", "text_column": "text"},
        "backend": {**FAKE, "batch_size": 128, "num_cpus": 0.5},
        "shuffle_partitions": 2, "shuffle_strategy": "sort_shuffle_pull_based"})
    first = run_leavs(cfg)
    return cfg, first, base / "out"


def results(out: Path, stage: str, which: str = "results") -> pd.DataFrame:
    return pd.read_parquet(out / stage / which)


def keys(df, cols):
    return sorted(map(tuple, df[list(cols)].astype(str).to_numpy().tolist()))


def test_full_run_produces_the_expected_codes(leavs_run):
    _, _, out = leavs_run
    labels = pd.read_parquet(out / "labels").set_index(["report_id", "organ"])
    for report in REPORTS:
        for organ in schema.ORGANS:
            row = labels.loc[(report["report_id"], organ)]
            want = {t: -2 for t in schema.FINDING_TYPES}
            want.update(report["expected_labels"].get(organ, {}))
            want_u = {t: -1 for t in schema.FINDING_TYPES}
            want_u.update(report["expected_urgency"].get(organ, {}))
            want_u.update({"normal": 0} if want["normal"] in (1, -1) else {})
            assert {t: int(row[t]) for t in schema.FINDING_TYPES} == want, (report["report_id"], organ)
            assert {t: int(row[f"urgency_{t}"]) for t in schema.FINDING_TYPES} == want_u, \
                (report["report_id"], organ)
    # A sentence only the per-sentence check found reached the later questions.
    liver = json.loads(labels.loc[("abd_001", "liver"), "evidence"])
    assert "A 1.2 cm simple cyst is present in segment 6." in liver
    listed = results(out, "filter_list").query("report_id == 'abd_001' and organ == 'liver'")
    assert "3" not in listed["listed"].iloc[0].split(",")


def test_fan_out_and_fan_in_keep_every_report_and_organ_exactly_once(leavs_run):
    _, first, out = leavs_run
    ids = [r["report_id"] for r in REPORTS]
    pairs = sorted((r, o) for r in ids for o in schema.ORGANS)
    listed = results(out, "filter_list")
    assert keys(listed, ["report_id", "organ"]) == pairs
    expected_checks = sorted(
        (r.report_id, r.organ, str(i)) for r in listed.itertuples()
        for i in range(1, r.n_sentences + 1) if str(i) not in r.listed.split(","))
    assert keys(results(out, "filter_check"), ["report_id", "organ", "sentence_idx"]) == expected_checks
    labels = pd.read_parquet(out / "labels")
    assert keys(labels, ["report_id", "organ"]) == pairs
    with_evidence = labels[labels["n_evidence"] > 0]
    assert keys(results(out, "finding_types"), ["report_id", "organ"]) == \
        keys(with_evidence, ["report_id", "organ"])
    assert keys(results(out, "certainty"), ["report_id", "organ", "finding_type"]) == sorted(
        (r, o, t) for r, o in keys(with_evidence, ["report_id", "organ"]) for t in schema.FINDING_TYPES)
    cert = results(out, "certainty")
    urgent = cert[cert["certainty"].isin([1, -1]) & (cert["finding_type"] != "normal")]
    assert keys(results(out, "urgency"), ["report_id", "organ", "finding_type"]) == \
        keys(urgent, ["report_id", "organ", "finding_type"])
    csv = pd.read_csv(out / A.CSV_NAME)
    assert list(csv.columns) == A.RELEASE_COLUMNS and len(csv) == 2 * len(pairs)
    assert keys(csv, ["subjectid_studyid", "organ", "type_annotation"]) == sorted(
        (r, o, k) for r, o in pairs for k in ("labels", "urgency"))
    # The broken report failed per row in the first stage; nothing else was lost.
    errors = results(out, "filter_list", "errors")
    assert keys(errors, ["report_id", "organ"]) == [("abd_broken", o) for o in sorted(schema.ORGANS)]
    assert errors["error"].str.contains("backend error").all()
    incomplete = pd.read_parquet(out / "incomplete")
    assert set(incomplete["status"]) == {"incomplete:filter_list"} and len(incomplete) == 9
    assert first.manifest["labels"]["organs_incomplete"] == 9


def test_manifest_usage_per_stage_and_per_report(leavs_run):
    _, first, out = leavs_run
    manifest = json.loads((out / "manifest.json").read_text())
    per_report = pd.read_parquet(out / "usage_per_report")
    assert sorted(per_report["report_id"]) == sorted([r["report_id"] for r in REPORTS] + ["abd_broken"])
    for stage in A.STAGES:
        done = results(out, stage)
        for col in ("llm_calls", "prompt_tokens", "completion_tokens"):
            assert per_report[f"{stage}_{col}"].sum() == done[col].sum() == \
                manifest["per_report"][f"{stage}_{col}"]
        assert manifest["usage_by_stage"][stage]["llm_calls"] >= done["llm_calls"].sum()
        assert json.loads((out / stage / "manifest.json").read_text())["fingerprint_hash"] == \
            manifest["passes"][stage]["fingerprint_hash"]
    # Chain of thought: every answer after the list step costs two calls (plus repairs).
    checks = results(out, "filter_check")
    assert (checks["llm_calls"] == 2).all() and (checks["reasoning"].str.len() > 0).all()
    assert per_report.set_index("report_id").loc["abd_broken", "total_llm_calls"] == 0
    assert manifest["per_report"]["total_llm_calls"] == per_report["total_llm_calls"].sum()
    assert manifest["this_run_usage"]["llm_calls"] == sum(
        first.passes[s].usage["llm_calls"] for s in A.STAGES)


def test_csv_round_trips_into_the_evaluation_loader(leavs_run):
    from ctray.tasks.leavs.evaluation import load_predictions

    _, _, out = leavs_run
    loaded = load_predictions(out / A.CSV_NAME)
    labels = pd.read_parquet(out / "labels").set_index(["report_id", "organ"])
    assert sorted(loaded.labels.index) == sorted(r["report_id"] for r in REPORTS)
    for (report_id, organ), row in labels.iterrows():
        for t in schema.FINDING_TYPES:
            assert loaded.labels.loc[report_id, (organ, t)] == row[t]
            u = row[f"urgency_{t}"]
            got = loaded.urgency.loc[report_id, (organ, t)]
            assert (pd.isna(got) and u == -1) or got == u


@pytest.mark.extended  # CI: tests/test_chain.py resumes a chained job and skips unchanged passes
def test_rerun_resumes_every_stage_without_llm_calls(leavs_run):
    from ctray.tasks.leavs.leavs_job import run_leavs

    cfg, first, out = leavs_run
    before = pd.read_parquet(out / "labels").sort_values(["report_id", "organ"])
    again = run_leavs(cfg)
    assert {s: again.passes[s].ok for s in A.STAGES} == {s: 0 for s in A.STAGES}
    assert {s: again.passes[s].usage["llm_calls"] for s in A.STAGES} == {s: 0 for s in A.STAGES}
    assert again.manifest["this_run_usage"]["llm_calls"] == 0
    # Later stages whose upstream results did not change are not even re-planned.
    assert [again.passes[s].run_id for s in A.STAGES[1:]] == ["unchanged"] * 4
    after = pd.read_parquet(out / "labels").sort_values(["report_id", "organ"])
    cols = list(schema.FINDING_TYPES) + [f"urgency_{t}" for t in schema.FINDING_TYPES]
    assert before[cols].to_numpy().tolist() == after[cols].to_numpy().tolist()
    assert again.manifest["per_report"]["total_llm_calls"] == first.manifest["per_report"]["total_llm_calls"]


def test_a_run_whose_first_stage_fails_for_every_organ_still_assembles(tmp_path):
    """Nothing reaches the later stages; the assembly still lists every organ as
    incomplete (waiting on the first stage) and every failure keeps its input."""
    from ctray.tasks.leavs.leavs_job import LeavsConfig, run_leavs

    cfg = LeavsConfig.model_validate({
        "run": {"output": str(tmp_path / "out")},
        "corpus": {"path": str(SAMPLE), "id_column": "report_id", "text_column": "text",
                   "limit": 2},
        "organs": ["liver", "spleen"],
        "backend": {"kind": "fake", "model": "unusable", "fake_default": "I cannot tell.",
                    "num_cpus": 0.5},
        "repair": False, "shuffle_partitions": 2,
        "shuffle_strategy": "sort_shuffle_pull_based"})
    run = run_leavs(cfg)
    first = run.passes["filter_list"]
    assert (first.ok, first.failed) == (0, 4)
    assert all(run.passes[s] is None for s in A.STAGES[1:])
    incomplete = pd.read_parquet(tmp_path / "out" / "incomplete")
    assert len(incomplete) == 4 and set(incomplete["status"]) == {"incomplete:filter_list"}
    errors = results(tmp_path / "out", "filter_list", "errors")
    assert len(errors) == 4 and errors["error"].str.len().gt(0).all()
    assert errors["input_json"].str.contains('"organ"').all()
    assert run.manifest["labels"]["organs_labelled"] == 0


# ------------------------------------------------------------------ job wiring

def test_jobs_are_registered_with_configs_and_entrypoints():
    from ctray.config import load_config
    from ctray.jobs import JOBS, load_job_modules
    from ctray.tasks.leavs.eval_job import LeavsEvalConfig
    from ctray.tasks.leavs.leavs_job import LeavsConfig

    load_job_modules()
    assert JOBS["eval-leavs"].needs_ray is False
    assert set(JOBS["eval-leavs"].flags) == {"--predictions", "--annotations"}
    cfg = load_config(LeavsConfig, REPO / "configs" / "label_leavs.yaml", ["fast=true"])
    assert cfg.organs == list(schema.ORGANS) and cfg.fast and cfg.unselected_types == "ask"
    assert load_config(LeavsEvalConfig, REPO / "configs" / "eval_leavs.yaml").n_bootstrap == 2000
    for name in ("label_leavs", "eval_leavs"):
        assert f'job_entrypoint("{name.replace("_", "-")}")' in (REPO / "jobs" / f"{name}.py").read_text()
    with pytest.raises(Exception, match="organs"):
        LeavsConfig.model_validate({"organs": ["liver", "Liver"]})


def test_leavs_eval_job_scores_the_released_outputs(tmp_path):
    from conftest import shared_file
    from ctray.cli import run_job

    preds = shared_file("leavs", "parsing_results_llm_test_amos.csv")
    notes = shared_file("leavs", "amos_test_annotations.csv")
    got = run_job("eval-leavs", ["--predictions", str(preds), "--annotations", str(notes),
                                 "--output", str(tmp_path), "--set", "n_bootstrap=200"])
    assert got["table1_micro"]["f1"] == pytest.approx(0.892, abs=0.005)
    assert (tmp_path / "tables.md").exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["job"] == "eval-leavs" and manifest["n_reports"] == got["n_reports"]
