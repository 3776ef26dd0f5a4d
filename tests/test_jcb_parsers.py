"""J-ClinicalBench parsers and metrics on hand-made cases (no shared data)."""

import pytest

from ctray.tasks.jcb.metrics import (bootstrap_ci, lcs_length, rouge_l_pair, score_records,
                                     set_prf)
from ctray.tasks.jcb.parsing import (ade_label, first_int, generation_text, leading_digit,
                                     python_list, tagged_entities, tnm_factors)
from ctray.tasks.jcb.registry import all_settings, get_setting, split_source


def test_registry_has_the_13_settings_in_table_4_order():
    settings = all_settings()
    assert [s.label for s in settings.values()] == [
        "ExamQA", "CCA", "MR", "HS-PN", "HS-DS", "IRS", "CTS", "NER-D", "NER-Med",
        "RE-Ent", "RE-Time", "DC-TMN", "DC-ADE"]
    # Variants and Table 4 labels resolve to their setting.
    assert get_setting("CCA_no_options").name == "CCA"
    assert get_setting("NER-Med").name == "NER_Medication"
    assert get_setting("RE_Time").parser_args["labels"][0] == "on"  # not YAML's True
    for s in settings.values():  # the record holds the output under the scored field
        assert s.record.get(s.generated_field) == "generated", s.name
    assert split_source("Unnamed: 0:int") == ("Unnamed: 0", "int")
    assert split_source("a:b") == ("a:b", "")


def test_unknown_setting_is_a_user_error():
    from ctray.errors import UserError

    with pytest.raises(UserError, match="unknown J-ClinicalBench setting 'NOPE'"):
        get_setting("NOPE")


def test_generation_text_cuts_at_the_next_input():
    assert generation_text("要約です\n\n### 入力:\n次の文") == "要約です\n\n"
    assert generation_text(None) == ""
    # The one-shot example's heading "### 入力例:" is not the next input: no cut.
    assert generation_text("### 入力例:\nS：\n本文") == "### 入力例:\nS：\n本文"
    # A Python code block after the answer is not part of it; a leading fence is kept.
    assert generation_text("```markdown\n## 経過\n全身状態良好\n\n```python\n# 以下") == \
        "```markdown\n## 経過\n全身状態良好\n\n"
    assert generation_text("## 退院時状況\n安定\n\npython\npython\n") == "## 退院時状況\n安定\n\n"


def test_rouge_l_mean_leaves_out_empty_answers_except_in_strict_mode():
    cts = get_setting("CTS")
    rows = [{"gold": "同じ文です", "generated": "同じ文です"}, {"gold": "別の文", "generated": ""},
            {"gold": "別の文", "generated": "### 入力:\n続き"}]
    assert score_records(rows, cts)[0]["f1"] == pytest.approx(1.0)
    assert score_records(rows, cts, strict=True)[0]["f1"] == pytest.approx(1 / 3)


def test_python_list_json_literal_fences_and_truncation():
    assert python_list('["発熱", "腹痛"]') == ["発熱", "腹痛"]
    assert python_list("['発熱', '腹痛']") == ["発熱", "腹痛"]
    assert python_list('```json\n["発熱"]\n```') == ["発熱"]
    # A list cut off by max_tokens: split on commas, strip brackets and quotes.
    assert python_list("['A', 'B', 'C") == ["A", "B", "C"]
    assert python_list("['A', 'B', 'C", strict=True) is None
    assert python_list("A, B") == ["A", "B"]


def test_first_int_ade_tnm_and_leading_digit():
    assert first_int(3) == 3 and first_int("答えは 2 です") == 2 and first_int("なし") is None
    assert ade_label("2") == "無" and ade_label("1") == "有"
    assert ade_label("判断できません") == "有"  # the paper: anything not starting with 2
    assert ade_label("判断できません", strict=True) is None
    assert tnm_factors("T因子: T2a  \nN因子: N1\nM因子: M0") == {"t": "T2a", "n": "N1", "m": "M0"}
    assert tnm_factors("T因子: TX")["n"] is None
    labels = ["on", "before", "after", "start", "finish"]
    assert leading_digit("1. e1が、e2に対応する時間に起こった", labels=labels) == "on"
    assert leading_digit(" 5", labels=labels) == "finish"
    assert leading_digit("6", labels=labels) is None and leading_digit("e1は", labels=labels) is None


def test_tagged_entities_offsets_ignore_all_tags_and_stop_at_eos():
    gold = '<m-key state="executed">VCM</m-key>を<m-val>1g</m-val>投与'
    assert tagged_entities(gold, types=("m-key", "m-val")) == {(0, 3, "m-key"), (4, 6, "m-val")}
    out = "<d>肺炎</d>と<d>発熱</d>[EOS]<d>余計</d>"
    assert tagged_entities(out, types=("d",)) == {(0, 2, "d"), (3, 5, "d")}
    # Non-greedy: two tags on one line are two entities.
    assert len(tagged_entities("<d>a</d>b<d>c</d>", types=("d",))) == 2
    # A stray (unclosed) tag is not removed: it shifts the spans after it (the release's
    # offsets; llm-jp's NER-Med one-shot file has one such answer).
    stray = "<m-key>A</m-key><m-val>を、<m-key>BC</m-key>"
    assert tagged_entities(stray, types=("m-key", "m-val")) == {(0, 1, "m-key"), (10, 12, "m-key")}


def test_set_prf_per_document():
    assert set_prf(["A", "B"], ["A", "C", "D"]) == pytest.approx((0.5, 1 / 3, 0.4))
    assert set_prf([], ["A"]) == (0.0, 0.0, 0.0)
    assert set_prf(None, ["A"]) == (0.0, 0.0, 0.0)


def test_rouge_l_uses_mecab_ipadic_tokens():
    # IPADIC splits 高カルシウム血症 into 高 / カルシウム / 血 / 症: 4 of 5 tokens shared.
    p, r, f = rouge_l_pair("高カルシウム血症", "低カルシウム血症")
    assert (p, r) == pytest.approx((0.75, 0.75))
    assert rouge_l_pair("同じ文です", "同じ文です")[2] == pytest.approx(1.0)
    assert rouge_l_pair("", "文") == (0.0, 0.0, 0.0)


def test_bit_parallel_lcs_equals_rouge_score_on_random_token_lists():
    import random

    from rouge_score.rouge_scorer import _score_lcs

    rng = random.Random(0)
    for _ in range(60):
        a = [rng.choice("abcde") for _ in range(rng.randint(1, 70))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(1, 70))]
        expected = _score_lcs(a, b)
        lcs = lcs_length(a, b)
        assert lcs == lcs_length(b, a)
        assert (lcs / len(b), lcs / len(a)) == (expected.precision, expected.recall)


def test_metrics_keys_and_values_on_hand_made_records():
    mr = get_setting("MR")
    records = [{"doc_name": "a", "generated": "['A', 'B']", "gold": "['A']"},
               {"doc_name": "b", "generated": "['C', 'D", "gold": "['C', 'E']"}]
    result, _ = score_records(records, mr)
    assert list(result) == ["_precision", "recall", "_f1", "_accuracy"]
    assert result["_precision"] == pytest.approx((0.5 + 0.5) / 2)
    assert result["recall"] == pytest.approx((1 + 0.5) / 2) == result["_accuracy"]
    strict, _ = score_records(records, mr, strict=True)
    assert strict["recall"] == pytest.approx(0.5)  # the truncated list counts as empty

    re_time = get_setting("RE_Time")
    rows = [{"relation": "on", "generated": "1"}, {"relation": "after", "generated": "3. e1"},
            {"relation": "before", "generated": "わからない"}, {"relation": "on", "generated": "2"}]
    result, _ = score_records(rows, re_time)
    assert result["accuracy"] == 0.5 and result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == 0.5
    assert score_records(rows, re_time, strict=True)[0]["precision"] == 0.5

    ade = get_setting("DC_ADE")
    rows = [{"label": "有", "generated": "1"}, {"label": "無", "generated": "?"},
            {"label": "有", "generated": "2"}, {"label": "無", "generated": "2"}]
    result, _ = score_records(rows, ade)
    assert result == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    all_positive = [{"label": r["label"], "generated": "1"} for r in rows]
    assert score_records(all_positive, ade)[0]["recall"] == 1.0

    tmn = get_setting("DC_TMN")
    rows = [{"t": "T1", "n": "N0", "m": "M0", "generated": "T因子: T1a\nN因子: N0\nM因子: M0"},
            {"t": "T2a", "n": "N1", "m": "M1", "generated": "T因子: T2a\nN因子: N0\nM因子: M1a"}]
    result, _ = score_records(rows, tmn)
    assert list(result) == ["t", "n", "m"]
    # T: 1 correct of 2 rows; recall only over golds among the options (T2a, not T1).
    assert result["t"]["precision"] == 0.5 and result["t"]["recall"] == 1.0
    assert result["m"]["precision"] == 0.5 and result["m"]["recall"] == 1.0
    assert score_records(rows, tmn, strict=True)[0]["t"]["recall"] == 0.5
    # A gold that is not an option (T2) scores nothing even when the answer repeats it
    # (all five open models answer "T2" for such a row; the release counts it wrong).
    rows.append({"t": "T2", "n": "N0", "m": "M0", "generated": "T因子: T2\nN因子: N0\nM因子: M0"})
    result, _ = score_records(rows, tmn)
    assert result["t"]["precision"] == pytest.approx(1 / 3) and result["t"]["recall"] == 1.0
    assert result["n"]["precision"] == pytest.approx(2 / 3)
    assert score_records(rows, tmn, strict=True)[0]["t"]["precision"] == pytest.approx(2 / 3)
    rows.pop()
    assert tmn.headline_value(result) == pytest.approx(
        (result["t"]["f1"] + result["n"]["f1"] + result["m"]["f1"]) / 3)

    ner = get_setting("NER_Disease")
    rows = [{"annotated_sentence": "<d>肺炎</d>と<d>発熱</d>", "generated": "<d>肺炎</d>と発熱[EOS]"},
            {"annotated_sentence": " <d>咳</d>", "generated": " <d>咳</d>[EOS]"}]
    result, stats = score_records(rows, ner)
    # The release strips the output only: the second row's span moves by one -> fp + fn.
    assert (result["total_tp"], result["total_fp"], result["total_fn"]) == (1, 1, 2)
    assert score_records(rows, ner, strict=True)[0]["total_tp"] == 2
    lo, hi = bootstrap_ci(stats, ner, resamples=200)
    assert 0.0 <= lo <= result["f1"] <= hi <= 1.0
