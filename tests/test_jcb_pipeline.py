"""generate-jcb + score-jcb end to end through the fake backend, on a mini benchmark
written here in the release's layout (no shared data needed)."""

import csv
import json
from pathlib import Path

import pytest

from ctray.cli import main

# Items marked OK get right answers from tests/jcb_fake.py, the others wrong ones.
OK = [True, False, True, True]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _prompts(d: Path, head: str, body: str) -> None:
    _write(d / "prompt_zero_shot.txt", f"{head}\n### 入力\n{body}")
    _write(d / "prompt_one_shot.txt", f"{head}\n### 例\n例の入力と出力\n### 入力\n{body}")


def _mini_benchmarks(root: Path) -> Path:
    b = root / "benchmarks"
    mark = ["OK" if ok else "NG" for ok in OK]
    # ExamQA: the right answer is option 1 (0-based answer_idx).
    d = b / "CLR" / "MCQA"
    _prompts(d, "### 問題", "<text>\n<options>\n出力:")
    _write(d / "igakuqa_clinical_test.jsonl", "".join(json.dumps(
        {"sample_id": f"Q{i}", "question": f"{m} 設問{i}", "options": "['a', 'b', 'c', 'd']",
         "answer_idx": 1}, ensure_ascii=False) + "\n" for i, m in enumerate(mark)))
    # CCA: gold codes; NG items get a truncated list.
    d = b / "CLR" / "CCA"
    _prompts(d, "### CCA", "<text>\n<options>")
    rows = [["text", "medra_list", "doc_name"]] + [
        [f"{m} 文書{i}", "['肺炎', '発熱']" if ok else "['咳嗽']", f"doc{i}"]
        for i, (m, ok) in enumerate(zip(mark, OK))]
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "data_old.csv", "w", newline="", encoding="utf-8-sig") as fh:  # with a BOM
        csv.writer(fh).writerows(rows)
    # IRS: the summary is echoed for OK items.
    d = b / "CLG" / "IRS"
    _prompts(d, "### 要約", "<incident_description>\n<action_token>")
    rows = [["id", "incident_description", "action_token", "summary"]] + [
        [str(i + 10), f"{m} SUMMARY=食前血糖測定の遅れ", "対応", "食前血糖測定の遅れ"]
        for i, m in enumerate(mark)]
    with open(d / "data.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    # DC-TMN
    d = b / "CLU" / "DC_TMN"
    _prompts(d, "### TNM", "<text>")
    rows = [["id", "text", "t", "n", "m"]] + [
        [str(100 + i), f"{m} 所見\\n続き", "T1a" if ok else "T2a", "N0" if ok else "N1", "M0"]
        for i, (m, ok) in enumerate(zip(mark, OK))]
    with open(d / "data.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    # RE-Ent: row 0 is the one-shot example (skipped in one-shot).
    d = b / "CLU" / "RE_Ent"
    _prompts(d, "### RE", "<text>")
    rels = [{"text": "例", "relation": "change", "source": "x.xml"}] + [
        {"text": f"{m} <e1 type=a>肺</e1>の<e2 type=d>影</e2>", "relation": "region",
         "source": f"{i}.xml"} for i, m in enumerate(mark)]
    _write(d / "rel_data.json", json.dumps(rels, ensure_ascii=False))
    # NER-D: two JSON Lines files, concatenated then sampled.
    d = b / "CLU" / "NER_Disease"
    _prompts(d, "### NER", "入力:\n<text>[EOS]\n出力:")
    for name, part in (("test_cr.json", mark[:2]), ("test_rr.json", mark[2:])):
        _write(d / name, "".join(json.dumps(
            {"ID": f"[{name[5:7]!r}, {i}]", "text": f"{m}の患者に肺炎を認めた。",
             "entities": "[]", "annotated_sentence": f"{m}の患者に<d>肺炎</d>を認めた。"},
            ensure_ascii=False) + "\n" for i, m in enumerate(part)))
    return b


def _run(argv: list[str]) -> int:
    return main(argv)


@pytest.mark.extended
@pytest.mark.slow
def test_generate_then_score_through_the_fake_backend(ray_local, tmp_path, capsys):
    bench = _mini_benchmarks(tmp_path)
    out = tmp_path / "jcb"
    argv = ["generate-jcb", "--benchmarks", str(bench), "--output", str(out),
            "--set", "settings=[MCQA, CCA, IRS, DC_TMN, RE_Ent, NER_Disease]",
            "--set", "backend.kind=fake", "--set", "backend.model=fake-model",
            "--set", "backend.fake_responder=jcb_fake:respond"]
    assert _run(argv) == 0
    gen = out / "generated"
    mcqa = json.loads((gen / "CLR/MCQA/fake-model/one_shot.json").read_text())
    assert [r["generated"] for r in mcqa] == [1, 3, 1, 1]  # parsed to int, like the release
    assert list(mcqa[0]) == ["sample_id", "generated", "gold"]
    tmn_lines = (gen / "CLU/DC_TMN/fake-model/one_shot.json").read_text().splitlines()
    assert len(tmn_lines) == 4 and json.loads(tmn_lines[0])["id"] == 100  # JSON Lines, int id
    re_rows = [json.loads(x) for x in (gen / "CLU/RE_Ent/fake-model/one_shot.json").read_text()
               .splitlines()]
    assert [r["source"] for r in re_rows] == ["0.xml", "1.xml", "2.xml", "3.xml"]  # offset 1
    manifest = json.loads((out / "runs/MCQA/fake-model/one_shot/manifest.json").read_text())
    assert manifest["jcb"]["items"] == 4

    # A second run resumes: nothing is asked again, the files are rewritten the same.
    before = (gen / "CLG/IRS/fake-model/one_shot.json").read_text()
    again = [a if not a.startswith("settings=") else "settings=[IRS]" for a in argv]
    assert _run(again) == 0
    assert "4 already done" in capsys.readouterr().out
    assert (gen / "CLG/IRS/fake-model/one_shot.json").read_text() == before

    score = tmp_path / "score"
    assert _run(["score-jcb", "--generated", str(gen), "--output", str(score),
                 "--strict", "true", "--set", "bootstrap=50"]) == 0
    printed = capsys.readouterr().out
    assert "strict conventions" in printed
    res = score / "results"
    right = sum(OK) / len(OK)
    assert json.loads((res / "CLR/MCQA/fake-model/one_shot.json").read_text()) == {
        "accuracy": right}
    irs = json.loads((res / "CLG/IRS/fake-model/one_shot.json").read_text())
    assert irs["f1"] == pytest.approx(right)  # exact for OK items, no overlap otherwise
    tmn = json.loads((res / "CLU/DC_TMN/fake-model/one_shot.json").read_text())
    assert tmn["t"]["precision"] == right and tmn["n"]["precision"] == right
    assert tmn["m"]["precision"] == right  # NG items answer M1c for gold M0
    re_ent = json.loads((res / "CLU/RE_Ent/fake-model/one_shot.json").read_text())
    assert re_ent["accuracy"] == right and re_ent["precision"] == right
    ner = json.loads((res / "CLU/NER_Disease/fake-model/one_shot.json").read_text())
    assert (ner["total_tp"], ner["total_fp"], ner["total_fn"]) == (3, 0, 1)
    cca = json.loads((res / "CLR/CCA/fake-model/one_shot.json").read_text())
    cca_strict = json.loads((score / "results_strict/CLR/CCA/fake-model/one_shot.json").read_text())
    assert list(cca) == ["_precision", "recall", "_f1"]
    # The truncated NG answer ['咳嗽', 'やけど: comma split finds 咳嗽; strict counts it wrong.
    assert cca["recall"] == 1.0 and cca_strict["recall"] == right
    table = (score / "table4.md").read_text()
    assert "| fake-model | 75.0 |" in table
    assert (score / "table4_strict.md").exists() and (score / "table4.png").stat().st_size > 0
    with open(score / "table4.csv", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header[:3] == ["model", "ExamQA", "ExamQA 95% CI"]


def test_score_rejects_a_folder_without_the_layout(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _run(["score-jcb", "--generated", str(tmp_path / "empty"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "no <group>/<task>/<model>/<shot>.json files" in capsys.readouterr().err
    bad = tmp_path / "bad" / "CLR" / "MCQA" / "m"
    bad.mkdir(parents=True)
    (bad / "one_shot.json").write_text('[{"sample_id": "a", "answer": 1}]')
    assert _run(["score-jcb", "--generated", str(tmp_path / "bad"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "records lack ['generated', 'gold']" in capsys.readouterr().err
    (bad / "one_shot.json").write_text("{not json")
    assert _run(["score-jcb", "--generated", str(tmp_path / "bad"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "line 1 is neither part of a JSON array" in capsys.readouterr().err


def test_generate_rejects_a_missing_benchmarks_folder(tmp_path, capsys):
    assert _run(["generate-jcb", "--benchmarks", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "o"), "--set", "backend.kind=fake"]) == 2
    assert "no such folder" in capsys.readouterr().err
