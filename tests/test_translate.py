"""translate / eval-translate: marker parsing, BLEU/ROUGE, and end-to-end runs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from ctray.config import ConfigError, load_config
from ctray.metrics.translation import PairScorer, corpus_bleu, sentence_bleu
from ctray.tasks.translate.eval_job import TranslateEvalConfig, TranslationInput
from ctray.tasks.translate.evaluation import evaluate
from ctray.tasks.translate.parsing import TranslationParseError, extract_translation
from ctray.tasks.translate.prompts import TranslationPromptConfig
from ctray.tasks.translate.translate_job import TranslateConfig, run_translate

REPO = Path(__file__).resolve().parents[1]
JA = "気管および両主気管支は開存している。縦隔の主要血管構造に異常はない。"

# ------------------------------------------------------------------ marker parsing

GOOD_ANSWERS = {
    "plain": (f"和訳:\n{JA}", JA),
    "same line, full-width colon": (f"和訳：{JA}", JA),
    "reasoning before the marker": (
        f"考え中...\n'open' は「開存」と訳すのが一般的です。\n\n和訳:\n{JA}", JA),
    "instructions echoed with the marker first": (
        f"承知しました。最終行に\n和訳:\nの形式で出力します。\n\n和訳:\n{JA}", JA),
    "bold marker and code fence": (f"**和訳:**\n```text\n{JA}\n```", JA),
    "fence around everything": (f"```\n和訳:\n{JA}\n```", JA),
    "note after the translation": (
        f"和訳:\n{JA}\n\n注: 'patent' は文脈により「開通」とも訳せます。", JA),
    "literal \\n copied from the prompt": (f"和訳:\\n{JA}", JA),
    "think block containing a draft marker": (
        f"<think>和訳: 下書き</think>\n和訳:\n{JA}", JA),
    "translation in corner brackets": (f"和訳:「{JA}」", JA),
    "trailing empty marker after the real one": (f"和訳:\n{JA}\n\n和訳:", JA),
    "multi-paragraph translation": (
        "和訳:\n気管は開存している。\n\n両肺に結節を認めない。",
        "気管は開存している。\n\n両肺に結節を認めない。"),
}
BAD_ANSWERS = {
    "marker missing": (f"{JA}", "not found"),
    "empty answer": ("   \n", "empty model answer"),
    "nothing after the marker (truncated)": ("以下に翻訳します。\n和訳:\n", "nothing after"),
    "marker only inside a sentence": ("出力は「和訳:」から始めます。", "not found"),
    "untranslated echo of the source": ("和訳:\nTrachea and both main bronchi are open.",
                                        "not in 'ja'"),
}


@pytest.mark.parametrize("case", sorted(GOOD_ANSWERS))
def test_marker_parsing_extracts_the_translation(case):
    raw, expected = GOOD_ANSWERS[case]
    assert extract_translation(raw, "和訳:", "ja") == expected


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_marker_parsing_refuses_unusable_answers(case):
    raw, reason = BAD_ANSWERS[case]
    with pytest.raises(TranslationParseError, match=re.escape(reason)):
        extract_translation(raw, "和訳:", "ja")


def test_english_marker_for_back_translation():
    raw = "Here is the translation.\n\nTranslation:\nThe trachea and both main bronchi are patent."
    assert extract_translation(raw, "Translation:", "en") == \
        "The trachea and both main bronchi are patent."


def test_prompt_version_follows_the_marker_and_languages():
    base = TranslationPromptConfig()
    assert base.template().version != TranslationPromptConfig(marker="翻訳:").template().version
    generic = TranslationPromptConfig(source_lang="en", target_lang="de")
    messages = generic.template().render(source_text="x", section_label="Findings")
    assert "German" in messages[0]["content"] and "'Translation:'" in messages[0]["content"]
    ja = base.template().render(source_text="Trachea is open.", section_label=base.section_label("findings"))
    assert "「所見」" in ja[0]["content"] and "「和訳:」" in ja[0]["content"]
    assert ja[1] == {"role": "user", "content": "Trachea is open."}


# ------------------------------------------------------------------ metrics by hand

# MeCab (unidic-lite) words of the hand-made pairs; asserted, then counted by hand.
REF_A, HYP_A = "右肺上葉に結節を認める。", "左肺上葉に結節を認める。"
TOK_REF_A = ["右肺", "上葉", "に", "結節", "を", "認める", "。"]
TOK_HYP_A = ["左肺", "上葉", "に", "結節", "を", "認める", "。"]
REF_B, HYP_B = "両肺に小結節を認める。心嚢液はない。", "両肺に小結節を認める。胸水はない。"
TOK_REF_B = ["両肺", "に", "小", "結節", "を", "認める", "。", "心嚢", "液", "は", "ない", "。"]
TOK_HYP_B = ["両肺", "に", "小", "結節", "を", "認める", "。", "胸水", "は", "ない", "。"]


def f1(p, r):
    return 2 * p * r / (p + r)


def test_tokens_of_the_hand_made_pairs():
    tok = PairScorer("ja").tokenizer()
    assert tok.tokenize(REF_A) == TOK_REF_A and tok.tokenize(HYP_A) == TOK_HYP_A
    assert tok.tokenize(REF_B) == TOK_REF_B and tok.tokenize(HYP_B) == TOK_HYP_B


def test_bleu_and_rouge_match_hand_counts():
    # Pair A: only the first word differs. Matches: 6/7 unigrams, 5/6 bigrams,
    # 4/5 trigrams, 3/4 4-grams; equal lengths so no brevity penalty.
    a = PairScorer("ja").score(REF_A, HYP_A)
    assert a["bleu"] == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25)
    assert a["rouge1"] == pytest.approx(6 / 7)
    assert a["rouge2"] == pytest.approx(5 / 6)
    assert a["rougeL"] == pytest.approx(6 / 7)  # LCS 上葉 に 結節 を 認める 。
    # Pair B: 胸水 (1 word) replaces 心嚢 液 (2 words). Hypothesis 11 words, reference 12.
    # Clipped unigram matches 10 (。 twice), bigrams 8/10 (。胸水, 胸水は miss),
    # trigrams 6/9, 4-grams 4/8; brevity penalty exp(1 - 12/11).
    b = PairScorer("ja").score(REF_B, HYP_B)
    bp = math.exp(1 - 12 / 11)
    assert b["bleu"] == pytest.approx(bp * (10 / 11 * 8 / 10 * 6 / 9 * 4 / 8) ** 0.25)
    assert b["rouge1"] == pytest.approx(f1(10 / 11, 10 / 12))
    assert (b["rouge1_p"], b["rouge1_r"]) == pytest.approx((10 / 11, 10 / 12))
    # Reference bigrams: 11; shared: 両肺に に小 小結節 結節を を認める 認める。 はない ない。
    assert b["rouge2"] == pytest.approx(f1(8 / 10, 8 / 11))
    assert b["rougeL"] == pytest.approx(f1(10 / 11, 10 / 12))
    # Corpus BLEU pools the counts of both pairs before taking the geometric mean.
    pooled = ((6 + 10) / 18 * (5 + 8) / 16 * (4 + 6) / 14 * (3 + 4) / 12) ** 0.25
    assert corpus_bleu([TOK_REF_A, TOK_REF_B], [TOK_HYP_A, TOK_HYP_B]) == \
        pytest.approx(math.exp(1 - 19 / 18) * pooled)


def test_bleu_without_4gram_match_is_zero_unless_smoothed():
    ref, hyp = ["気管", "は", "開存", "。"], ["気管", "は", "閉塞", "。"]
    # nltk's method0 puts the smallest float in place of a zero precision: ~1e-154.
    assert 0.0 <= sentence_bleu(ref, hyp) < 1e-50
    # method1 replaces the zero 3- and 4-gram counts by epsilon 0.1: p = 3/4, 1/3, 0.1/2, 0.1/1.
    assert sentence_bleu(ref, hyp, smoothing="method1") == \
        pytest.approx((3 / 4 * 1 / 3 * 0.05 * 0.1) ** 0.25)
    assert sentence_bleu(ref, []) == 0.0


# ------------------------------------------------------------------ eval-translate

def _eval_cfg(tmp_path, hyp_path, ref_path, **kw) -> TranslateEvalConfig:
    return TranslateEvalConfig(
        hypotheses=TranslationInput(path=str(hyp_path), label="MT"),
        references=TranslationInput(path=str(ref_path), label="Refined", id_column="VolumeName",
                                    section_column=None,
                                    sections={"findings": "Findings_JA", "impressions": "Impressions_JA"}),
        run={"output": str(tmp_path / "eval")}, **kw)


def test_translate_eval_on_hand_made_pairs(ray_local, tmp_path):
    # Long hypotheses (as the translate job writes them), wide references (a CSV release).
    hyp = pd.DataFrame({"report_id": ["r1", "r1", "r2", "r3"],
                        "section": ["findings", "impressions", "findings", "findings"],
                        "translation": [HYP_A, HYP_B, HYP_B, "余分な行。"]})
    hyp.to_csv(tmp_path / "hyp.csv", index=False)
    pd.DataFrame({"VolumeName": ["r1", "r2"], "Findings_JA": [REF_A, REF_B],
                  "Impressions_JA": [REF_B, ""]}).to_csv(tmp_path / "ref.csv", index=False)
    cfg = _eval_cfg(tmp_path, tmp_path / "hyp.csv", tmp_path / "ref.csv")
    result = evaluate(cfg)
    assert result["counts"] == {"pairs": 3, "hypothesis_only": 1, "reference_only": 0}

    out = Path(result["output"])
    pairs = pd.read_csv(out / "pairs.csv", dtype={"report_id": str}).set_index(["report_id", "section"])
    bleu_a = (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25
    bleu_b = math.exp(1 - 12 / 11) * (10 / 11 * 8 / 10 * 6 / 9 * 4 / 8) ** 0.25
    assert pairs.loc[("r1", "findings"), "bleu"] == pytest.approx(bleu_a)
    assert pairs.loc[("r2", "findings"), "bleu"] == pytest.approx(bleu_b)
    assert pairs.loc[("r1", "impressions"), "rouge1"] == pytest.approx(f1(10 / 11, 10 / 12))
    assert "hypothesis" not in pairs.columns  # no report text in the per-pair table

    summary = pd.read_csv(out / "summary.csv").set_index("section")
    findings = pd.Series([bleu_a, bleu_b])
    assert summary.loc["findings", "N"] == 2
    assert summary.loc["findings", "bleu_mean"] == pytest.approx(findings.mean())
    assert summary.loc["findings", "bleu_sd"] == pytest.approx(findings.std(ddof=1))
    assert summary.loc["findings", "BLEU"] == f"{findings.mean():.3f} ({findings.std(ddof=1):.3f})"
    assert summary.loc["impressions", "N"] == 1
    assert summary.loc["findings", "corpus_bleu"] == pytest.approx(
        corpus_bleu([TOK_REF_A, TOK_REF_B], [TOK_HYP_A, TOK_HYP_B]))

    stats = pd.read_csv(out / "text_stats.csv")
    row = stats[(stats["section"] == "findings") & (stats["dataset"] == "Refined")].iloc[0]
    chars = pd.Series([len(REF_A), len(REF_B)])
    assert row["N"] == 2 and row["Characters"] == f"{chars.mean():.1f} ({chars.std(ddof=1):.1f})"
    assert set(stats["dataset"]) == {"MT", "Refined"}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| findings | 2 |" in report and "Unique Words" in report and "method0" in report

    # The Ray path (large corpora) gives the same numbers.
    ray_result = evaluate(_eval_cfg(tmp_path, tmp_path / "hyp.csv", tmp_path / "ref.csv",
                                    parallel_threshold=0), output=str(tmp_path / "eval_ray"))
    local = result["pairs"].sort_values(["section", "report_id"]).reset_index(drop=True)
    remote = ray_result["pairs"].sort_values(["section", "report_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(local, remote[local.columns], check_dtype=False)


def test_translate_eval_reports_unpaired_inputs(tmp_path):
    pd.DataFrame({"report_id": ["x"], "section": ["findings"], "translation": [HYP_A]}) \
        .to_csv(tmp_path / "hyp.csv", index=False)
    pd.DataFrame({"VolumeName": ["y"], "Findings_JA": [REF_A], "Impressions_JA": [REF_B]}) \
        .to_csv(tmp_path / "ref.csv", index=False)
    with pytest.raises(ValueError, match="no \\(report_id, section\\) pairs in common"):
        evaluate(_eval_cfg(tmp_path, tmp_path / "hyp.csv", tmp_path / "ref.csv"))


# ------------------------------------------------------------------ translate job (fake backend)

# A toy bilingual phrase book: the fake "model" translates sentence by sentence,
# so the expected translations and back-translations are known exactly.
PHRASES = {
    "Trachea and both main bronchi are open.": "気管および両主気管支は開存している。",
    "No pleural effusion.": "胸水は認めない。",
    "A 5 mm nodule is observed in the right upper lobe.": "右肺上葉に5mmの結節を認める。",
    "Heart size is normal.": "心臓の大きさは正常である。",
}
REVERSE = {ja: en for en, ja in PHRASES.items()}


def _sentences(text: str, lang: str) -> list[str]:
    from ctray.text.sentences import split_sentences

    return split_sentences(text, lang)


def phrasebook_translator(request) -> str:
    """Fake-backend responder: thinks aloud, then answers after the marker line."""
    system, text = request.messages[0]["content"], request.messages[-1]["content"]
    if "GARBLE" in text:
        return "I am not able to translate this section."
    if "日本語に翻訳" in system:
        return "考え中...\n\n和訳:\n" + "".join(PHRASES.get(s, "不明な文。") for s in _sentences(text, "en"))
    return "Translation:\n" + " ".join(REVERSE.get(s, "Unknown.") for s in _sentences(text, "ja"))


def write_ct_rate(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pd.DataFrame({"VolumeName": [r[0] for r in rows], "ClinicalInformation_EN": "Not given.",
                  "Technique_EN": "Non-contrast.", "Findings_EN": [r[1] for r in rows],
                  "Impressions_EN": [r[2] for r in rows]}).to_csv(path, index=False)
    return path


def test_translate_job_with_fake_backend_back_translation_cost_and_resume(ray_local, tmp_path):
    en = list(PHRASES)
    csv = write_ct_rate(tmp_path / "reports.csv", [
        ("r1", f"{en[0]} {en[1]}", en[2]),
        ("r2", f"{en[3]} {en[0]}", "GARBLE"),
        ("r3", en[1], ""),  # no impression: one row only
    ])
    cfg = TranslateConfig(
        corpus={"path": str(csv)}, run={"output": str(tmp_path / "out")}, back_translate=True,
        backend={"kind": "fake", "fake_responder": "test_translate:phrasebook_translator",
                 "price_per_1m_input_tokens": 0.15, "price_per_1m_output_tokens": 0.6})
    first = run_translate(cfg)
    assert (first["translate"].ok, first["translate"].failed) == (4, 1)

    out = tmp_path / "out"
    res = pd.read_parquet(out / "translate" / "results").set_index(["report_id", "section"])
    assert sorted(res.index) == [("r1", "findings"), ("r1", "impressions"), ("r2", "findings"),
                                 ("r3", "findings")]
    assert res.loc[("r1", "findings"), "translation"] == PHRASES[en[0]] + PHRASES[en[1]]
    assert res.loc[("r1", "findings"), "source_text"] == f"{en[0]} {en[1]}"
    assert res.loc[("r1", "findings"), "llm_raw"].startswith("考え中")
    assert set(res["llm_model"]) == {"fake:fake"}
    assert res["prompt_version"].str.startswith("translate-en-ja@").all()
    assert (res["prompt_tokens"] > 0).all() and (res["completion_tokens"] > 0).all()
    assert "findings" not in res.columns and "technique" not in res.columns

    err = pd.read_parquet(out / "translate" / "errors")
    assert list(zip(err["report_id"], err["section"])) == [("r2", "impressions")]
    assert "marker '和訳:' not found" in err["error"].iloc[0]
    assert err["llm_raw"].iloc[0] == "I am not able to translate this section."

    manifest = json.loads((out / "translate" / "manifest.json").read_text())
    usage = manifest["usage"]
    # The failed call was paid for too: 5 calls, more tokens than the results hold.
    assert usage["llm_calls"] == 5 and usage["prompt_tokens"] > int(res["prompt_tokens"].sum())
    cost = manifest["estimated_cost"]
    assert cost["total"] == pytest.approx(usage["prompt_tokens"] * 0.15e-6
                                          + usage["completion_tokens"] * 0.6e-6, abs=1e-6)
    assert manifest["translation"]["target_lang"] == "ja" and manifest["rate_budget"]["kind"] == "fake"

    back = pd.read_parquet(out / "back_translate" / "results").set_index(["report_id", "section"])
    assert back.loc[("r1", "findings"), "back_translation"] == f"{en[0]} {en[1]}"
    assert back["prompt_version"].str.startswith("back-translate-ja-en@").all()
    pairs = pd.read_csv(out / "back_translate" / "eval" / "pairs.csv").set_index(["report_id", "section"])
    assert len(pairs) == 4 and (pairs["rouge1"] == 1.0).all() and (pairs["rougeL"] == 1.0).all()
    assert pairs.loc[("r1", "findings"), "bleu"] == pytest.approx(1.0)
    # "no pleural effusion": an exact copy, but 3 words have no 4-gram, so unsmoothed BLEU ~0.
    assert pairs.loc[("r3", "findings"), "bleu"] < 1e-50
    summary = pd.read_csv(out / "back_translate" / "eval" / "summary.csv").set_index("section")
    assert summary.loc["findings", "N"] == 3

    # A second run has nothing left to do in either pass.
    again = run_translate(cfg)
    assert (again["translate"].ok, again["translate"].skipped) == (0, 5)
    assert (again["back_translate"].ok, again["back_translate"].skipped) == (0, 4)


def test_configs_load_and_bad_sections_are_rejected():
    cfg = load_config(TranslateConfig, REPO / "configs" / "translate.yaml", ["corpus.limit=4"])
    assert cfg.sections == ["findings", "impressions"] and cfg.corpus.limit == 4
    assert cfg.prompt.resolved_marker() == "和訳:"
    ev = load_config(TranslateEvalConfig, REPO / "configs" / "eval_translate.yaml")
    assert ev.references.sections == {"findings": "Findings_JA", "impressions": "Impressions_JA"}
    with pytest.raises(ConfigError, match="not in corpus.sections"):
        load_config(TranslateConfig, None, ["corpus.path=x.csv", "sections=[findings, summary]"])


# ------------------------------------------------------------------ hf backend, tiny model

TINY_TRANSLATION = "気管は開存している。"


@pytest.fixture(scope="module")
def scripted_lm(tmp_path_factory):
    pytest.importorskip("ctray.llm.hf")
    from tiny_models import build_scripted_lm

    return build_scripted_lm(tmp_path_factory.mktemp("tiny_lm"),
                             ["考え中…", "\n\n", "和訳:", "\n", TINY_TRANSLATION])


def test_translate_then_evaluate_on_the_hf_backend(ray_local, tmp_path, scripted_lm):
    en = list(PHRASES)
    csv = write_ct_rate(tmp_path / "reports.csv", [("r1", en[0], en[1]), ("r2", en[2], en[3])])
    cfg = TranslateConfig(corpus={"path": str(csv)}, run={"output": str(tmp_path / "out")},
                          backend={"kind": "hf", "model": scripted_lm, "max_tokens": 16,
                                   "batch_size": 2})
    summary = run_translate(cfg)["translate"]
    assert (summary.ok, summary.failed) == (4, 0)
    res = pd.read_parquet(tmp_path / "out" / "translate" / "results")
    assert set(res["translation"]) == {TINY_TRANSLATION}
    assert res["llm_raw"].str.startswith("考え中").all()
    assert set(res["llm_model"]) == {f"hf:{scripted_lm}"}
    assert (res["prompt_tokens"] > 0).all() and (res["completion_tokens"] > 0).all()

    pd.DataFrame({"VolumeName": ["r1", "r2"],
                  "Findings_JA": [TINY_TRANSLATION, "気管は閉塞している。"],
                  "Impressions_JA": [TINY_TRANSLATION, ""]}).to_csv(tmp_path / "ref.csv", index=False)
    result = evaluate(_eval_cfg(tmp_path, tmp_path / "out", tmp_path / "ref.csv"))
    assert result["counts"] == {"pairs": 3, "hypothesis_only": 1, "reference_only": 0}
    pairs = result["pairs"].set_index(["report_id", "section"])
    assert pairs.loc[("r1", "findings"), "bleu"] == pytest.approx(1.0)
    # 気管 は 開存|閉塞 し て いる 。: 6/7 unigrams, 4/6 bigrams, 2/5 trigrams, 1/4 4-grams.
    assert pairs.loc[("r2", "findings"), "bleu"] == pytest.approx((6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)
    assert pairs.loc[("r2", "findings"), "rouge2"] == pytest.approx(4 / 6)


# ------------------------------------------------------------------ openai backend, stub server

@pytest.mark.extended  # CI: the fake-backend translate run resumes; the OpenAI backend has its own tests
def test_openai_translation_resumes_without_translating_any_row_twice(ray_local, tmp_path):
    from openai_stub_server import StubOpenAIServer, prompt_token_count

    en = list(PHRASES)
    texts = {("r1", "findings"): en[0], ("r1", "impressions"): en[1],
             ("r2", "findings"): en[2], ("r2", "impressions"): en[3],
             ("r3", "findings"): f"{en[0]} {en[2]}", ("r3", "impressions"): f"{en[3]} {en[1]}"}
    csv = write_ct_rate(tmp_path / "reports.csv", [
        (r, texts[(r, "findings")], texts[(r, "impressions")]) for r in ("r1", "r2", "r3")])
    flaky = {en[3]}

    def responder(body):
        source = body["messages"][-1]["content"]
        if source in flaky:
            raise RuntimeError("model overloaded")
        return "考え中...\n和訳: " + "".join(PHRASES[s] for s in _sentences(source, "en"))

    def run(server, *overrides):
        cfg = load_config(TranslateConfig, None, [
            f"corpus.path={csv}", f"run.output={tmp_path / 'out'}", "backend.kind=openai",
            f"backend.base_url={server.base_url}", "backend.model=gpt-4o-mini-2024-07-18",
            "backend.api_key_env=CTRAY_TEST_NO_KEY", "backend.max_retries=0",
            "backend.requests_per_minute=6000", "backend.tokens_per_minute=1000000",
            "backend.price_per_1m_input_tokens=0.15", "backend.price_per_1m_output_tokens=0.6",
            *overrides])
        return run_translate(cfg)["translate"]

    with StubOpenAIServer(responder) as server:
        # Interrupted run: only the first two reports, and one section fails.
        first = run(server, "corpus.limit=2")
        assert (first.ok, first.failed, len(server.requests)) == (3, 1, 4)
        # Rerun on the whole corpus: only report r3 is new.
        second = run(server)
        assert (second.ok, second.failed, second.skipped) == (2, 0, 4)
        assert len(server.requests) == 6
        # The cause is gone; --retry-failed asks for exactly the failed section again.
        flaky.clear()
        retry = run(server, "run.retry_failed=true")
        assert (retry.ok, retry.failed) == (1, 0)
        assert run(server).ok == 0  # nothing left
        requested = [b["messages"][-1]["content"] for b in server.requests]

    assert sorted(requested) == sorted(list(texts.values()) + [en[3]])  # en[3]: failed once
    out = tmp_path / "out" / "translate"
    res = pd.read_parquet(out / "results")
    assert len(res) == 6 and not res.duplicated(["report_id", "section"]).any()
    for _, row in res.iterrows():
        src = texts[(row["report_id"], row["section"])]
        assert row["translation"] == "".join(PHRASES[s] for s in _sentences(src, "en"))
    assert set(res["llm_model"]) == {"openai:gpt-4o-mini-2024-07-18"}

    manifest = json.loads((out / "manifest.json").read_text())
    answered = [b for b in server.requests if b["messages"][-1]["content"] != en[3]] + \
        [b for b in server.requests if b["messages"][-1]["content"] == en[3]][1:]
    assert manifest["usage"]["prompt_tokens"] == sum(prompt_token_count(b) for b in answered)
    assert [r["mode"] for r in manifest["runs"]] == ["run", "run", "retry_failed", "run"]
    assert manifest["models"][0]["requests_per_minute"] == 6000
    assert manifest["rate_budget"]["tokens_per_minute"] == 1000000
    assert manifest["estimated_cost"]["input"] == pytest.approx(
        manifest["usage"]["prompt_tokens"] * 0.15e-6, abs=1e-6)
