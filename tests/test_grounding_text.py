"""ReXGroundingCT text pipeline: checks, repair, category schema, and the job end to end."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

import grounding_fake
from conftest import shared_file
from ctray.cli import run_job
from ctray.config import ConfigError, load_config
from ctray.llm.base import LLMResponse
from ctray.llm.config import backend_config
from ctray.llm.task import LLMStage
from ctray.pipeline.stage import RowError
from ctray.tasks.grounding import prompts as P
from ctray.tasks.grounding.categories import load_categories
from ctray.tasks.grounding.text_checks import (FINDINGS_SCHEMA, REGIONS, REWRITE_SCHEMA,
                                               CheckError, Measurement, check_categories,
                                               check_findings, check_rewrite, code_sentences,
                                               load_json_object, measurements,
                                               round_measurements, validate_schema)
from ctray.tasks.grounding.text_job import GroundTextConfig
from ctray.tasks.grounding.llm_tasks import CategoriseTask, ExtractTask, RewriteTask

REPO = Path(__file__).resolve().parents[1]
FAKE = backend_config(kind="fake", fake_responder="grounding_fake:respond")
PAPER = REPO.parent / "shared" / "papers" / "rexgroundingct_text-prompted-segmentation.txt"


def mm(value: str) -> Measurement:
    return Measurement(Decimal(value), "mm")


# --- the category schema --------------------------------------------------------------

def test_category_file_has_12_categories_and_61_subcategories():
    schema = load_categories()
    assert [c.code for c in schema.categories] == [str(i) for i in range(1, 13)]
    assert len(schema.subcategories) == 61
    for c in schema.categories:
        letters = [s.code[len(c.code):] for s in c.subcategories]
        assert letters == [chr(ord("a") + i) for i in range(len(letters))], c.code
        assert all(s.parent == c.code for s in c.subcategories)
    # "12 Other" has no subcategories, so it is the one parent code a finding can get.
    assert len(schema.assignable_codes()) == 62 and "12" in schema.assignable_codes()
    assert "1" not in schema.assignable_codes() and "2" not in schema.assignable_codes()
    assert schema.name_of("1a") == "Bronchial wall thickening"
    assert schema.name_of("3j") == "Bone/Osseous structures lesions"
    assert schema.name_of("11b") == "Surgical clips"
    # Category 1 is the non-focal group (22% in the paper), 2 the focal one.
    assert schema.focality("1c") == "non-focal" and schema.focality("2d") == "focal"
    others = [c for c in schema.assignable_codes() if schema.parent_of(c).code not in ("1", "2")]
    assert len(others) == 62 - 14 and {schema.focality(c) for c in others} == {None}
    assert schema.normalize(" 2D)") == "2d" and schema.normalize("12.") == "12"
    assert schema.normalize("13b") is None and schema.normalize("2z") is None
    assert schema.normalize(7) is None


def test_category_file_matches_figure_s9_of_the_paper():
    if not PAPER.exists():
        pytest.skip(f"paper text not available: {PAPER}")
    text = PAPER.read_text(encoding="utf-8")
    figure = text[text.index("Figure S9: Hierarchical Tree Finding Categories"):]
    parents = dict(re.findall(r"^- (\d+)\) (.+?)\s*$", figure, re.M))
    subs = dict(re.findall(r"^ +- (\d+[a-z])\) (.+?)\s*$", figure, re.M))
    schema = load_categories()
    assert {c.code: c.name for c in schema.categories} == parents
    assert {s.code: s.name for s in schema.subcategories} == subs
    assert len(subs) == 61


# --- sentence codes, measurements, rounding -------------------------------------------

def test_sentence_coding_keeps_report_order_and_skips_not_given():
    coded = code_sentences(
        "Trachea and both main bronchi are open. A nodule of approx. 1.5 cm is seen in the "
        "right lung.No pleural effusion.", "Right lung nodule.  Stable emphysema.", "en")
    assert coded == {
        "F0": "Trachea and both main bronchi are open.",
        "F1": "A nodule of approx. 1.5 cm is seen in the right lung.",
        "F2": "No pleural effusion.",
        "I0": "Right lung nodule.",
        "I1": "Stable emphysema.",
    }
    assert list(code_sentences("One finding.", "Not given.", "en")) == ["F0"]
    assert list(code_sentences(None, "Impression only. Second.", "en")) == ["I0", "I1"]
    assert code_sentences(" ", float("nan")) == {}


def test_measurements_are_a_multiset_in_canonical_units():
    found = measurements("Nodules of 9x5x6 mm and 4.3 cm, 2-3 mm cysts, a 43 mm aorta, "
                         "a 12,5 mm node, 1,500 ml, -20 HU over a 2.5-year interval; 5x4x5.")
    assert found[mm("43")] == 2  # 4.3 cm and 43 mm are the same length
    assert found[mm("5")] == 1 and found[mm("9")] == 1 and found[mm("6")] == 1
    assert found[mm("2")] == 1 and found[mm("3")] == 1 and found[mm("12.5")] == 1
    assert found[Measurement(Decimal(20), "HU")] == 1
    assert found[Measurement(Decimal("2.5"), "year")] == 1
    # A thousands separator is not a decimal comma, and unit-less numbers are ignored.
    assert not any(m.unit == "ml" for m in found)
    assert sum(found.values()) == 10


@pytest.mark.parametrize("text, expected", [
    ("A 2.5 mm nodule", "A 3 mm nodule"),
    ("a 12.4 mm node", "a 12 mm node"),
    ("measuring 9.5x5.2 mm", "measuring 10x5 mm"),
    ("a 4.36 cm mass", "a 4.4 cm mass"),
    ("1.25 cm and 1.05 cm", "1.3 cm and 1.1 cm"),
    ("a 4,36 cm lesion", "a 4.4 cm lesion"),
    ("2.45-3.55 cm", "2.5-3.6 cm"),
    ("3 cm, 15x11 mm, 4.3 cm", "3 cm, 15x11 mm, 4.3 cm"),  # already compliant
    ("a 0.4 mm focus", "a 0.4 mm focus"),  # not erased to "0 mm"
    ("over 2.45 years, -12.5 HU", "over 2.45 years, -12.5 HU"),  # only lengths
])
def test_rounding_rule_mm_whole_cm_one_decimal(text, expected):
    assert round_measurements(text) == expected
    assert round_measurements(expected) == expected  # idempotent


def test_json_answers_in_fences_or_prose_are_read_and_garbage_is_not():
    assert load_json_object('Sure:\n```json\n{"a": [1]}\n```\nDone.') == {"a": [1]}
    assert load_json_object('{"a": 1} trailing words') == {"a": 1}
    for bad, why in [("", "empty"), ("no json here", "no JSON object"),
                     ('{"a": [1, }', "not valid JSON")]:
        with pytest.raises(CheckError, match=why):
            load_json_object(bad)


# --- step 1: the rewrite checks -------------------------------------------------------

SOURCE = {
    "F0": "Trachea and both main bronchi are open.",
    "F1": "A nodule of 12 mm is observed in the right lung upper lobe.",
    "F2": "Millimetric lymph nodes are observed in the mediastinum.",
    "F3": "A cyst of 2.5 cm is seen in the left kidney.",
    "I0": "Right upper lobe nodule of 12 mm.",
}


def good_rewrite() -> dict:
    regions = {r: [] for r in REGIONS}
    regions["Lungs/Airways/Pleura"] = [
        {"sources": ["F0"], "text": "The trachea and main bronchi are patent."},
        {"sources": ["F1"], "text": "A 12 mm nodule is present in the right upper lobe."}]
    regions["Mediastinum/Hila"] = [{"sources": ["F2"], "text": "Subcentimeter mediastinal "
                                                               "lymph nodes are present."}]
    regions["Upper abdomen"] = [{"sources": ["F3"], "text": "A 25 mm left renal cyst."}]
    return {"findings": regions,
            "impressions": [{"sources": ["I0"], "text": "12 mm right upper lobe nodule."}]}


def test_rewrite_check_accepts_a_faithful_answer_and_assigns_region_codes():
    rewrite = check_rewrite(SOURCE, good_rewrite())
    assert rewrite.code_map == {"L0": ["F0"], "L1": ["F1"], "M0": ["F2"], "A0": ["F3"],
                                "I0": ["I0"]}
    assert rewrite.sentences["A0"] == "A 25 mm left renal cyst."  # 2.5 cm == 25 mm
    assert list(rewrite.as_report()["Findings"]) == list(REGIONS)


def _problems(answer) -> str:
    with pytest.raises(CheckError) as info:
        check_rewrite(SOURCE, answer)
    return str(info.value)


def test_rewrite_check_names_each_kind_of_silent_failure():
    dropped = good_rewrite()
    dropped["findings"]["Mediastinum/Hila"] = []
    assert _problems(dropped) == "sentence(s) F2 missing from the rewrite"

    changed = good_rewrite()
    changed["findings"]["Lungs/Airways/Pleura"][1]["text"] = "A 21 mm nodule in the RUL."
    msg = _problems(changed)
    assert "measurement(s) 12 mm missing or changed" in msg
    assert "measurement(s) 21 mm not in the source" in msg

    invented = good_rewrite()
    invented["findings"]["Bones"] = [{"sources": ["F9"], "text": "Degenerative changes."}]
    assert "sentence code(s) F9 do not exist in the input" in _problems(invented)

    bad_region = good_rewrite()
    bad_region["findings"]["Abdomen"] = bad_region["findings"].pop("Upper abdomen")
    msg = _problems(bad_region)
    assert "schema" in msg and "Upper abdomen" in msg

    wrong_section = good_rewrite()
    wrong_section["impressions"][0]["sources"] = ["F1"]
    assert "schema: at impressions/0/sources/0" in _problems(wrong_section)


def test_check_errors_name_codes_and_numbers_but_never_report_text():
    dropped = good_rewrite()
    dropped["findings"]["Upper abdomen"] = []
    msg = _problems(dropped)
    assert "F3" in msg and "25 mm" in msg
    assert "kidney" not in msg and "cyst" not in msg


# --- step 2: the findings checks ------------------------------------------------------

def test_findings_check_rounds_maps_codes_and_rejects_invented_codes_and_numbers():
    rewrite = check_rewrite({**SOURCE, "F4": "A 4.36 cm mass, 2.5 mm nodule."},
                            {**good_rewrite(), "findings": {
                                **good_rewrite()["findings"],
                                "Heart/Vessels": [{"sources": ["F4"],
                                                   "text": "A 4.36 cm mass, 2.5 mm nodule."}]}})
    answer = {"findings": [
        {"phrase": "12 mm right upper lobe nodule", "sentence_codes": ["L1", "I0"],
         "abnormal": "Y", "prior_reference": "N"},
        {"phrase": "A 4.36 cm mass and a 2.5 mm nodule", "sentence_codes": ["H0"],
         "abnormal": "Y", "prior_reference": "Y"},
        {"phrase": "Patent trachea", "sentence_codes": ["L0"], "abnormal": "N",
         "prior_reference": "N"},
    ]}
    found = check_findings(rewrite.sentences, rewrite.code_map, answer)
    assert [f["id"] for f in found] == ["S1", "S2", "S3"]
    assert found[0]["source_codes"] == ["F1", "I0"]
    assert found[1]["phrase"] == "A 4.4 cm mass and a 3 mm nodule"
    assert found[1]["source_codes"] == ["F4"]
    assert [f["abnormal"] for f in found] == [True, True, False]
    assert [f["prior_reference"] for f in found] == [False, True, False]

    invented = json.loads(json.dumps(answer))
    invented["findings"][2]["sentence_codes"] = ["L0", "L7"]
    with pytest.raises(CheckError, match="finding S3 cites sentence code.s. L7"):
        check_findings(rewrite.sentences, rewrite.code_map, invented)
    changed = json.loads(json.dumps(answer))
    changed["findings"][0]["phrase"] = "15 mm right upper lobe nodule"
    with pytest.raises(CheckError, match=r"finding S1: measurement\(s\) 15 mm are not in"):
        check_findings(rewrite.sentences, rewrite.code_map, changed)
    with pytest.raises(CheckError, match="no findings extracted from 6 sentences"):
        check_findings(rewrite.sentences, rewrite.code_map, {"findings": []})
    with pytest.raises(CheckError, match="abnormal"):
        bad_flag = json.loads(json.dumps(answer))
        bad_flag["findings"][0]["abnormal"] = "yes"
        check_findings(rewrite.sentences, rewrite.code_map, bad_flag)


def test_categories_check_accepts_schema_codes_only():
    schema = load_categories()
    ids = ["S1", "S4"]
    assert check_categories(ids, {"categories": {"S1": "2D", "S4": "12"}}, schema) == \
        {"S1": "2d", "S4": "12"}
    with pytest.raises(CheckError) as info:
        check_categories(ids, {"categories": {"S1": "13b", "S9": "2a"}}, schema)
    msg = str(info.value)
    assert "no category for finding(s) S4" in msg and "S9 were not asked for" in msg
    assert "S1: '13b' is not a category code" in msg


def test_the_worked_examples_in_the_prompts_pass_the_checks():
    # The few-shot answers are what the model imitates: they must be accepted answers.
    validate_schema(json.loads(P.REWRITE.few_shot[0][1]), REWRITE_SCHEMA)
    rewrite = check_rewrite(P.EXAMPLE_SOURCE, json.loads(P.REWRITE.few_shot[0][1]))
    shown = {"Findings": {r: s for r, s in rewrite.as_report()["Findings"].items() if s},
             "Impressions": rewrite.impressions}
    assert shown == P.EXAMPLE_REPORT
    findings = check_findings(rewrite.sentences, rewrite.code_map,
                              json.loads(P.EXTRACT.few_shot[0][1]))
    validate_schema(json.loads(P.EXTRACT.few_shot[0][1]), FINDINGS_SCHEMA)
    abnormal = {f["id"]: f["phrase"] for f in findings if f["abnormal"]}
    assert abnormal == P.EXAMPLE_ABNORMAL
    assert set(check_categories(list(abnormal), json.loads(P.CATEGORISE.few_shot[0][1]),
                                load_categories())) == set(abnormal)
    versions = {t.version_tag for t in (P.REWRITE, P.EXTRACT, P.CATEGORISE)}
    assert len(versions) == 3
    # Every schema code is offered to the model.
    assert all(f"{c}:" in P.CATEGORISE.system for c in load_categories().assignable_codes()
               if c != "12")


# --- the three steps through LLMStage: validation, repair, row errors --------------------

def run_stage(task, rows: list[dict]) -> pd.DataFrame:
    stage = LLMStage(task, FAKE)
    stage.setup()
    out = stage.process_batch(pd.DataFrame(rows))
    if "_error" not in out.columns:  # only StageWorker adds it when every row succeeds
        out["_error"] = None
    return out.set_index("report_id")


def report(rid: str, findings: str, impressions: str = "Right lung nodule.") -> dict:
    return {"report_id": rid, "findings": findings, "impressions": impressions}


BASE = ("Trachea and both main bronchi are open. A nodule of 2.5 mm is observed in the right "
        "lung upper lobe, stable compared to the previous examination. Heart size is normal. ")


def test_rewrite_step_repairs_once_then_fails_with_the_raw_answer_kept():
    out = run_stage(RewriteTask(lang="en"), [
        report("good", BASE),
        report("drop_once", BASE + "Sequelae bands DROPONCE are seen in the lingula."),
        report("num_once", BASE + "A cyst NUMONCE of 14 mm is seen in the left kidney."),
        report("fenced", BASE + "FENCED Calcified plaques are seen in the aorta."),
        report("drop_always", BASE + "Sequelae bands DROPALWAYS are seen in the lingula."),
        report("prose", BASE + "BADJSON"),
        report("empty", "Not given.", " "),
    ])
    ok = out[out["_error"].isna()]
    assert sorted(ok.index) == ["drop_once", "fenced", "good", "num_once"]
    assert ok.loc["good", "llm_calls"] == 1 and ok.loc["fenced", "llm_calls"] == 1
    assert ok.loc["drop_once", "llm_calls"] == 2 and ok.loc["num_once", "llm_calls"] == 2
    code_map = json.loads(ok.loc["drop_once", "code_map"])
    assert sorted(c for v in code_map.values() for c in v) == ["F0", "F1", "F2", "F3", "I0"]
    rewrite = json.loads(ok.loc["num_once", "rewrite"])
    assert "14 mm" in rewrite["Findings"]["Upper abdomen"]["A0"]
    assert ok.loc["good", "n_source_sentences"] == 4 == ok.loc["good", "n_rewritten_sentences"]
    assert json.loads(ok.loc["good", "source_sentences"])["F1"].startswith("A nodule of 2.5 mm")

    bad = out[out["_error"].notna()]
    assert "sentence(s) F3 missing from the rewrite" in bad.loc["drop_always", "_error"]
    assert bad.loc["drop_always", "llm_calls"] == 2  # the repair was paid for too
    assert json.loads(bad.loc["drop_always", "llm_raw"])["findings"]  # raw answer kept
    assert "no JSON object" in bad.loc["prose", "_error"]
    assert bad.loc["prose", "llm_raw"].startswith("I am sorry")
    assert "hold no sentences" in bad.loc["empty", "_error"]
    assert set(bad["_error_stage"]) == {"ground_rewrite"}


def test_repair_turn_lists_the_problems_and_keeps_the_schema():
    task = RewriteTask(lang="en")
    row = report("r", BASE)
    error = RowError("row 'r': ground_rewrite: sentence(s) F1 missing from the rewrite; "
                     "measurement(s) 3 mm not in the source")
    req = task.repair_request(row, LLMResponse('{"findings": {}}'), error)
    assert req.json_schema == REWRITE_SCHEMA
    assert req.messages[-2] == {"role": "assistant", "content": '{"findings": {}}'}
    last = req.messages[-1]["content"]
    assert last.startswith(P.REPAIR_PREFIX)
    assert "- sentence(s) F1 missing from the rewrite\n- measurement(s) 3 mm not in" in last
    assert RewriteTask(repair=False).repair_request(row, LLMResponse("x"), error) is None


def test_findings_and_categories_steps_repair_invented_codes_and_categories():
    rewritten = run_stage(RewriteTask(lang="en"), [
        report("good", BASE + "A cyst of 1.26 cm is seen in the left kidney."),
        report("code_once", BASE + "Sequelae bands CODEONCE are seen in the lingula."),
        report("code_always", BASE + "Sequelae bands CODEALWAYS are seen in the lingula."),
        report("cat_once", BASE + "Emphysema CATONCE is seen in both lungs."),
        report("cat_always", BASE + "Emphysema CATALWAYS is seen in both lungs."),
    ]).reset_index()
    assert rewritten["_error"].isna().all()
    found = run_stage(ExtractTask(), rewritten.to_dict("records"))
    assert found.loc["code_once", "llm_calls"] == 2 and pd.isna(found.loc["code_once", "_error"])
    assert "cites sentence code(s) L99 that do not exist" in found.loc["code_always", "_error"]
    good = json.loads(found.loc["good", "finding_list"])
    cyst = next(f for f in good if "cyst" in f["phrase"])
    assert "1.3 cm" in cyst["phrase"] and cyst["source_codes"] == ["F3"]
    nodule = next(f for f in good if "nodule" in f["phrase"])
    assert "3 mm" in nodule["phrase"] and nodule["prior_reference"] and nodule["abnormal"]
    assert nodule["source_codes"] == ["F1", "I0"]

    ok = found[found["_error"].isna()].reset_index()
    cats = run_stage(CategoriseTask(), ok.to_dict("records"))
    assert cats.loc["cat_once", "llm_calls"] == 2 and pd.isna(cats.loc["cat_once", "_error"])
    assert "'13b' is not a category code" in cats.loc["cat_always", "_error"]
    codes = json.loads(cats.loc["good", "categories"])
    abnormal = [f["id"] for f in good if f["abnormal"]]
    assert sorted(codes) == sorted(abnormal)
    assert codes[nodule["id"]] == "2d" and codes[cyst["id"]] == "3d"
    assert json.loads(cats.loc["cat_once", "categories"])  # repaired to schema codes
    assert all(load_categories().normalize(c) for c in
               json.loads(cats.loc["cat_once", "categories"]).values())


def test_checks_catch_a_changed_number_in_real_ct_rate_reports():
    csv = shared_file("ct-rate", "validation_reports.csv")
    reports = pd.read_csv(csv, nrows=60)
    task = RewriteTask(lang="en")
    measured = 0
    for rec in reports.to_dict("records"):
        row = report(rec["VolumeName"], rec["Findings_EN"], rec["Impressions_EN"])
        request = task.build_request(row)
        answer = json.loads(grounding_fake.respond(request))
        task.parse(row, LLMResponse(json.dumps(answer)))  # a faithful rewrite passes
        items = [it for r in REGIONS for it in answer["findings"][r]] + answer["impressions"]
        target = next((it for it in items
                       if any(m.unit == "mm" for m in measurements(it["text"]))), None)
        if target is None:
            continue
        measured += 1
        target["text"] = re.sub(r"(\d+)(\s*(?:mm|cm)\b)",
                                lambda m: f"{int(m.group(1)) + 7}{m.group(2)}",
                                target["text"], count=1)
        with pytest.raises(RowError, match="missing or changed"):
            task.parse(row, LLMResponse(json.dumps(answer)))
    assert measured >= 20  # most CT-RATE reports carry a measurement


# --- configuration and the job end to end ------------------------------------------------

def test_configs_load_and_a_single_text_column_is_rejected():
    cfg = load_config(GroundTextConfig, REPO / "configs" / "ground_text.yaml", ["corpus.limit=3"])
    assert cfg.backend.kind == "vllm" and cfg.corpus.limit == 3 and cfg.repair
    fake = load_config(GroundTextConfig, REPO / "tests" / "configs" / "ground_text_fake.yaml")
    assert fake.backend.fake_responder == "tests.grounding_fake:respond"
    with pytest.raises(ConfigError, match="findings"):
        load_config(GroundTextConfig, None, ["corpus.path=x.csv", "corpus.text_column=report"])


def write_ct_rate(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pd.DataFrame({"VolumeName": [r[0] for r in rows], "ClinicalInformation_EN": "Not given.",
                  "Technique_EN": "Non-contrast.", "Findings_EN": [r[1] for r in rows],
                  "Impressions_EN": [r[2] for r in rows]}).to_csv(path, index=False)
    return path


@pytest.mark.extended
def test_ground_text_job_writes_three_passes_and_the_final_table_and_resumes(ray_local, tmp_path):
    csv = write_ct_rate(tmp_path / "reports.csv", [
        ("r1", BASE + "A cyst of 1.26 cm is seen in the left kidney.", "Right lung nodule."),
        ("r2", BASE + "Sequelae bands DROPONCE are seen in the lingula. Emphysema CATONCE is "
                      "seen in both lungs.", "Right lung nodule. Emphysema."),
        ("r3", BASE + "Sequelae bands DROPALWAYS are seen in the lingula.", "Nodule."),
        ("r4", BASE + "Emphysema CATALWAYS is seen in both lungs.", "Emphysema."),
        ("r5", "Trachea and both main bronchi are open. Heart size is normal.", "Normal."),
    ])
    out = tmp_path / "gt"
    args = ["--config", str(REPO / "tests" / "configs" / "ground_text_fake.yaml"), "--output", str(out),
            "--set", f"corpus.path={csv}", "--set", "backend.batch_size=2"]
    first = run_job("ground-text", args)
    assert (first["rewrite"].ok, first["rewrite"].failed) == (4, 1)
    assert (first["findings"].ok, first["findings"].failed) == (4, 0)
    # r5 has no abnormal finding, so it is not sent to the categoriser at all.
    assert (first["categories"].ok, first["categories"].failed) == (2, 1)

    rewrite_err = pd.read_parquet(out / "rewrite" / "errors")
    assert list(rewrite_err["report_id"]) == ["r3"]
    assert "F3 missing from the rewrite" in rewrite_err["error"].iloc[0]
    assert json.loads(rewrite_err["llm_raw"].iloc[0])["impressions"]
    cat_err = pd.read_parquet(out / "categories" / "errors")
    assert list(cat_err["report_id"]) == ["r4"]

    manifest = json.loads((out / "rewrite" / "manifest.json").read_text())
    assert manifest["usage"]["llm_calls"] == 7  # 5 reports + 2 repair turns (r2, r3)
    assert manifest["prompt_versions"][0].startswith("ground-rewrite@")
    assert manifest["fingerprint"]["pass"] == "rewrite"

    findings = pd.read_parquet(out / "findings" / "results").set_index("report_id")
    final = pd.read_parquet(out / "final")
    assert len(final) == int(findings["n_findings"].sum())
    assert set(final["report_id"]) == {"r1", "r2", "r4", "r5"}
    assert (final.groupby("report_id").size() == findings["n_findings"]).all()
    status = final.set_index(["report_id", "finding_id"])["category_status"]
    assert set(status.loc["r4"]) == {"missing", "not_abnormal"}  # categoriser failed
    assert set(status.loc["r5"]) == {"not_abnormal"}
    ok = final[final["category_status"] == "ok"]
    assert set(ok["report_id"]) == {"r1", "r2"} and ok["abnormal"].all()
    assert ok["category"].map(load_categories().normalize).notna().all()
    emphysema = ok[ok["phrase"].str.contains("Emphysema")].iloc[0]
    assert (emphysema["category"], emphysema["focality"]) == ("1c", "non-focal")
    assert emphysema["parent_name"] == "Typically non-focal lung/airway/pleural abnormalities"
    cyst = final[final["phrase"].str.contains("cyst")].iloc[0]
    assert "1.3 cm" in cyst["phrase"] and cyst["regions"] == "Upper abdomen"
    assert not final["abnormal"].isna().any()

    index = json.loads((out / "manifest.json").read_text())
    assert index["final"]["rows"] == len(final)
    assert index["passes"]["categories"]["error_rows"] == 1

    # Resume: a second run finds every pass done and rewrites the same final table.
    again = run_job("ground-text", args)
    assert [again[p].ok for p in ("rewrite", "findings", "categories")] == [0, 0, 0]
    assert (again["rewrite"].skipped, again["categories"].skipped) == (5, 3)
    assert len(pd.read_parquet(out / "final")) == len(final)
