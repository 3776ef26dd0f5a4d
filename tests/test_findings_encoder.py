"""train-findings on English reports: the packaged encoder as the default, rule labels as
targets, the split by patient, and the held-out split written for eval-findings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ctray.errors import UserError
from ctray.tasks.findings.schema import FINDING_COLUMNS
from tiny_bert import SAMPLE_DIR, build_en_tokenizer, build_tiny_bert

EN_SECTIONS = {"findings": "Findings_EN", "impressions": "Impressions_EN"}


def _config(tmp_path, **overrides):
    from ctray.tasks.findings.train_job import TrainFindingsConfig

    data = {"run": {"output": str(tmp_path / "run")},
            "corpus": {"path": str(SAMPLE_DIR / "sample_reports_en.csv"), "sections": EN_SECTIONS},
            "labels": {"source": "rules"},
            "training": {"epochs": 1, "learning_rate": 3e-3, "max_length": 32, "stride": 8,
                         "batch_size": 8, "eval_batch_size": 32},
            "scaling": {"num_workers": 1, "use_gpu": False}}
    data.update(overrides)
    return TrainFindingsConfig.model_validate(data)


def test_split_is_by_patient_and_keeps_identical_texts_together():
    from ctray.tasks.findings.train_job import split_groups, split_reports

    rng = np.random.default_rng(0)
    ids, texts = [], []
    for patient in range(1, 61):
        for scan in "abc"[: rng.integers(1, 4)]:
            ids.append(f"valid_{patient}_{scan}")
            texts.append(f"report of patient {patient} scan {scan}")
    texts[5] = texts[50]  # the same text for two patients: they must stay together
    df = pd.DataFrame({"report_id": ids, "text": texts})
    groups = split_groups(df)
    patient = df["report_id"].str.extract(r"^(valid_\d+)_")[0]
    assert (pd.Series(groups).groupby(patient.values).nunique() == 1).all()
    assert groups[5] == groups[50]
    train, val = split_reports(df, 0.2, 7)
    assert len(train) + len(val) == len(df) and 0.1 < len(val) / len(df) < 0.35
    train_patients = set(train["report_id"].str.extract(r"^(valid_\d+)_")[0])
    assert not train_patients & set(val["report_id"].str.extract(r"^(valid_\d+)_")[0])
    assert not set(train["text"]) & set(val["text"])
    # The order the corpus was read in does not change the split.
    again, _ = split_reports(df.sample(frac=1, random_state=3), 0.2, 7)
    assert again["report_id"].tolist() == train["report_id"].tolist()


def test_rule_labels_are_the_rule_labelers_output(tmp_path, ray_local):
    from ctray.tasks.findings.rules import RuleLabeler
    from ctray.tasks.findings.train_job import load_labeled_reports

    cfg = _config(tmp_path, corpus={"path": str(SAMPLE_DIR / "sample_reports_en.csv"),
                                    "sections": EN_SECTIONS, "limit": 40},
                  labels={"source": "rules", "path": str(tmp_path / "no-such-labels.csv")})
    df, stats = load_labeled_reports(cfg.corpus, cfg.labels, cfg.lang)
    assert len(df) == 40 and stats["label_source"] == "rules (en)"
    labeler = RuleLabeler("en")
    for _, row in df.sample(5, random_state=0).iterrows():
        assert {c: int(row[c]) for c in FINDING_COLUMNS} == labeler.label(row["text"]).labels
    assert sum(stats["positives"].values()) > 40  # real findings, not all zeros


def test_default_encoder_follows_the_language(tmp_path):
    from ctray.tasks.findings.train_job import choose_model

    cfg = _config(tmp_path)
    assert cfg.model is None
    assert choose_model(cfg, ["Bilateral pleural effusion."] * 3) == "all-minilm-l6-v2"
    assert choose_model(cfg, ["両側に胸水を認める。"] * 3) == "tohoku-nlp/bert-base-japanese-v3"
    assert choose_model(_config(tmp_path, lang="ja"), ["effusion"]) == \
        "tohoku-nlp/bert-base-japanese-v3"
    assert choose_model(_config(tmp_path, model="org/other"), ["x"]) == "org/other"


def test_trains_on_rule_labels_and_writes_the_split(tmp_path, ray_local):
    from ctray.tasks.findings.model import FindingsClassifier
    from ctray.tasks.findings.train_job import run_train_findings

    tok = build_en_tokenizer(tmp_path / "tok")
    model = build_tiny_bert(tmp_path / "tiny", tok, hidden=32, layers=1, heads=2,
                            max_position=64, dropout=0.0, init_range=0.2, zero_positions=True)
    summary = run_train_findings(_config(tmp_path, model=model))
    assert summary["data"]["label_source"] == "rules (en)"
    assert summary["data"]["train_reports"] + summary["data"]["val_reports"] == 240
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert sorted(split["split"].unique()) == ["train", "val"]
    assert (split["split"] == "val").sum() == summary["data"]["val_reports"]
    patients = split["report_id"].str.extract(r"^(sample_\d+)_")[0]
    assert patients.notna().all()
    assert not set(patients[split["split"] == "train"]) & set(patients[split["split"] == "val"])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["fingerprint"]["split"] == "patient"
    clf = FindingsClassifier.from_pretrained(summary["model_dir"], device="cpu")
    assert clf.predict_proba(["Bilateral pleural effusion."]).shape == (1, 18)


def test_unknown_encoder_is_one_user_error_line(tmp_path, ray_local):
    from ctray.tasks.findings.train_job import run_train_findings

    with pytest.raises(UserError, match="neither a packaged encoder"):
        run_train_findings(_config(tmp_path, model="minilm-l6"))
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        run_train_findings(_config(tmp_path, model=str(folder)))
