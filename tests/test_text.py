import math

import pandas as pd
import pytest

from ctray.text.sentences import detect_lang, split_sentences
from ctray.text.stats import stats_table, text_stats
from ctray.text.tokenize import is_punctuation, mecab_words, words


@pytest.mark.parametrize("text, expected", [
    ("The nodule measures approx. 1.5 cm. No effusion.",
     ["The nodule measures approx. 1.5 cm.", "No effusion."]),
    ("See Fig. 2 for the 2.5 mm nodule. Stable.",
     ["See Fig. 2 for the 2.5 mm nodule.", "Stable."]),
    ("Findings, e.g. nodules, are stable. No LAP.",
     ["Findings, e.g. nodules, are stable.", "No LAP."]),
    # CT-RATE sometimes drops the space after a full stop.
    ("Hiatal hernia at the lower end.No pathological LAP was detected.",
     ["Hiatal hernia at the lower end.", "No pathological LAP was detected."]),
    ("No. 5 lymph node is 12 mm. No effusion.", ["No. 5 lymph node is 12 mm.", "No effusion."]),
    ("Metastatic breast ca.  Multiple nodules.", ["Metastatic breast ca.", "Multiple nodules."]),
    ("Is there effusion? No!\nHeart normal", ["Is there effusion?", "No!", "Heart normal"]),
    ("· Emphysema · Hiatal hernia", ["Emphysema", "Hiatal hernia"]),
])
def test_split_sentences_en(text, expected):
    assert split_sentences(text, "en") == expected


def test_split_sentences_ja_keeps_delimiters_and_splits_lines():
    text = "両肺に結節を認める。胸水なし！心拡大は？\nリンパ節腫大なし"
    assert split_sentences(text, "ja") == ["両肺に結節を認める。", "胸水なし！", "心拡大は？", "リンパ節腫大なし"]
    # A closing bracket after 。 stays with its sentence.
    assert split_sentences("「結節あり。」次の文。", "ja") == ["「結節あり。」", "次の文。"]
    assert split_sentences("結節は１．５cm大．胸水なし．", "ja") == ["結節は１．５cm大．", "胸水なし．"]


def test_split_sentences_auto_and_empty():
    assert split_sentences("胸水なし。心拡大なし。") == ["胸水なし。", "心拡大なし。"]
    assert split_sentences("No effusion. No nodule.") == ["No effusion.", "No nodule."]
    assert split_sentences("") == []
    assert split_sentences(None) == []  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        split_sentences("text", "de")


def test_detect_lang():
    assert detect_lang("両肺に結節を認める。") == "ja"
    assert detect_lang("No nodule in the lungs.") == "en"
    # Japanese text with English abbreviations stays Japanese.
    assert detect_lang("LADにステントを認める。CT所見。") == "ja"
    assert detect_lang("") == "en"


def test_mecab_words_segments_japanese():
    assert mecab_words("両肺に結節を認めない。") == ["両肺", "に", "結節", "を", "認め", "ない", "。"]
    assert mecab_words("") == []


def test_words_en_and_ja():
    assert words("Ground-glass opacity of 1.5 cm, patient's nodule (3x4 mm).", "en") == [
        "Ground-glass", "opacity", "of", "1.5", "cm", "patient's", "nodule", "3x4", "mm"]
    assert words("胸水なし。", "ja") == ["胸水", "なし", "。"]
    assert words("胸水なし。", "ja", keep_punct=False) == ["胸水", "なし"]
    assert is_punctuation("。") and is_punctuation("、") and not is_punctuation("結節")


def test_text_stats_en_by_hand():
    # 10 + 1 + 29 characters; words No nodule No nodule was seen in 1.5 cm; 7 types.
    assert text_stats("No nodule. No nodule was seen in 1.5 cm.", "en") == {
        "characters": 40, "words": 9, "sentences": 2, "unique_words": 7}


def test_text_stats_ja_counts_mecab_tokens_with_punctuation():
    # 両肺/に/結節/を/認め/ない/。/胸水/なし/。 -> 10 tokens, 9 types (。 twice).
    assert text_stats("両肺に結節を認めない。胸水なし。", "ja") == {
        "characters": 16, "words": 10, "sentences": 2, "unique_words": 9}
    # Surrounding whitespace is not counted.
    assert text_stats("  胸水なし。\n", "ja")["characters"] == 5


def test_stats_table_mean_sd_by_group():
    df = pd.DataFrame({
        "text": ["A b.", "C dd ee. Ff.", "G.", None],
        "split": ["train", "train", "valid", "valid"],
    })
    table = stats_table(df, ["text"], group_column="split", lang="en")
    train = table[table["split"] == "train"].iloc[0]
    # characters 4 and 12: mean 8, sample SD sqrt(16 + 16) = 5.66
    assert train["N"] == 2
    assert train["Characters"] == f"8.0 ({math.sqrt(32):.1f})"
    assert train["Words"] == "3.0 (1.4)"  # 2 and 4 words
    assert train["Sentences"] == "1.5 (0.7)"  # 1 and 2 sentences
    valid = table[table["split"] == "valid"].iloc[0]
    assert valid["N"] == 1  # the missing text is left out
    assert valid["Characters"] == "2.0 (nan)"


def test_stats_table_without_groups_has_one_row_per_column():
    df = pd.DataFrame({"f": ["No nodule.", "No effusion. Stable."], "i": ["Normal.", "Normal."]})
    table = stats_table(df, ["f", "i"], lang="en")
    assert list(table["section"]) == ["f", "i"]
    assert list(table["N"]) == [2, 2]
    assert table.loc[1, "Sentences"] == "1.0 (0.0)"
