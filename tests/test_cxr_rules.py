"""CXR rule labeler: negation scope, hedges, "no new", "resolved", lists, parent and
No Finding rules (docs/cxr_labeling.md), and its score on the dev gold set."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import shared_file
from ctray.tasks.cxr.rules import CxrRuleLabeler
from ctray.tasks.cxr.schema import OBSERVATIONS

L = CxrRuleLabeler()
NAN = math.nan


def labels(text: str) -> dict[str, float]:
    """The non-blank labels of ``text``."""
    return {k: v for k, v in L.label(text).labels.items() if not math.isnan(v)}


@pytest.mark.parametrize("text, expected", [
    # a negation covers a list, "or" inside a negated list is no hedge
    ("No pneumothorax, effusion, or consolidation.",
     {"Pneumothorax": 0.0, "Pleural Effusion": 0.0, "Consolidation": 0.0, "No Finding": 1.0}),
    ("There is no focal airspace consolidation, pleural effusion or pneumothorax.",
     {"Consolidation": 0.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0, "No Finding": 1.0}),
    ("The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.",
     {"Lung Opacity": 0.0, "Consolidation": 0.0, "Edema": 0.0, "Pneumonia": 0.0,
      "Pneumothorax": 0.0, "Pleural Effusion": 0.0, "No Finding": 1.0}),
    # negation scope ends at a contrast word / a new clause
    ("No pneumothorax, but there is a small left pleural effusion.",
     {"Pneumothorax": 0.0, "Pleural Effusion": 1.0}),
    ("The heart is enlarged. There is no pulmonary edema.", {"Cardiomegaly": 1.0, "Edema": 0.0}),
    ("Mildly enlarged heart with small bilateral effusions.",
     {"Cardiomegaly": 1.0, "Pleural Effusion": 1.0}),
    # post-mention negation
    ("Pleural effusion is not seen.", {"Pleural Effusion": 0.0, "No Finding": 1.0}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0.0, "No Finding": 1.0}),
    # pre-negation uncertainty beats negation; "no new" is uncertain (conventions §3)
    ("Pneumothorax cannot be excluded.", {"Pneumothorax": -1.0}),
    ("Cannot exclude a small left effusion.", {"Pleural Effusion": -1.0}),
    ("No new focal consolidation.", {"Consolidation": -1.0, "Lung Opacity": -1.0}),
    # hedges; the hedged alternative does not reach back over a comma
    ("Left basilar opacity, likely atelectasis.", {"Lung Opacity": 1.0, "Atelectasis": -1.0}),
    ("Increased interstitial markings may represent edema or atypical infection.",
     {"Lung Opacity": 1.0, "Edema": -1.0, "Pneumonia": -1.0}),
    ("Pleural effusion may be present.", {"Pleural Effusion": -1.0}),
    ("Atelectasis or pneumonia in the left base.",
     {"Atelectasis": -1.0, "Pneumonia": -1.0, "Lung Opacity": -1.0}),
    ("Minimal right basilar atelectasis versus scarring.",
     {"Atelectasis": -1.0, "Lung Opacity": -1.0}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": -1.0}),
    ("The cardiac silhouette is borderline enlarged.", {"Cardiomegaly": -1.0}),
    # "resolved" / "removed" are negations
    ("Resolved right pleural effusion.", {"Pleural Effusion": 0.0, "No Finding": 1.0}),
    ("Interval resolution of the left pleural effusion.", {"Pleural Effusion": 0.0,
                                                          "No Finding": 1.0}),
    ("The right chest tube has been removed.", {"Support Devices": 0.0, "No Finding": 1.0}),
    # not hedges: consistent with, stable, residual
    ("Hyperinflated lungs. Right lower lobe consolidation consistent with pneumonia.",
     {"Consolidation": 1.0, "Pneumonia": 1.0, "Lung Opacity": 1.0}),
    ("Stable cardiomegaly.", {"Cardiomegaly": 1.0}),
    # stable silhouette without normal/enlarged -> -1; with "normal" -> 0
    ("Stable cardiomediastinal silhouette.",
     {"Enlarged Cardiomediastinum": -1.0, "Cardiomegaly": -1.0}),
    ("Stable normal cardiomediastinal silhouette.",
     {"Enlarged Cardiomediastinum": 0.0, "Cardiomegaly": 0.0, "No Finding": 1.0}),
    # global phrases
    ("Heart size is normal. Lungs are clear.",
     {"Cardiomegaly": 0.0, "Lung Opacity": 0.0, "Consolidation": 0.0, "Edema": 0.0,
      "Pneumonia": 0.0, "No Finding": 1.0}),
    ("Cardiac and mediastinal contours are within normal limits.",
     {"Enlarged Cardiomediastinum": 0.0, "Cardiomegaly": 0.0, "No Finding": 1.0}),
    ("Heart size at the upper limits of normal.", {"Cardiomegaly": 0.0, "No Finding": 1.0}),
    # de-identification placeholders are unknown words
    ("There are no XXXX of a pleural effusion.", {"Pleural Effusion": 0.0, "No Finding": 1.0}),
    # clinical questions set nothing
    ("Evaluate for pneumonia.", {"No Finding": 1.0}),
    # signs: blunting -> possible effusion, vascular congestion -> possible edema
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": -1.0}),
    ("Mild pulmonary vascular congestion.", {"Edema": -1.0, "Lung Opacity": -1.0}),
    # CHF adds an uncertain cardiomegaly; an explicit statement wins
    # (Edema is a child of Lung Opacity)
    ("Findings consistent with CHF.", {"Edema": 1.0, "Cardiomegaly": -1.0, "Lung Opacity": 1.0}),
    ("Normal heart size. Findings consistent with CHF.",
     {"Edema": 1.0, "Cardiomegaly": -1.0, "Lung Opacity": 1.0}),
    # devices; wires and clips are not support devices and do not block No Finding
    ("Median sternotomy wires. Cholecystectomy clips. No acute disease.", {"No Finding": 1.0}),
    ("Pacemaker in place. Lungs clear. Heart size normal.",
     {"Support Devices": 1.0, "Cardiomegaly": 0.0, "Lung Opacity": 0.0, "Consolidation": 0.0,
      "Edema": 0.0, "Pneumonia": 0.0, "No Finding": 1.0}),
    ("Mild plate-like atelectasis.", {"Atelectasis": 1.0, "Lung Opacity": 1.0}),
    # fractures, old or new; age-indeterminate is no hedge
    ("Old healed right rib fracture.", {"Fracture": 1.0}),
    ("Age-indeterminate fracture of the right 9th rib.", {"Fracture": 1.0}),
    ("No displaced rib fracture.", {"Fracture": 0.0, "No Finding": 1.0}),
    # found while reading Open-i reports outside the dev set
    ("Nodular opacity may represent nipple shadow.", {"Lung Lesion": -1.0, "Lung Opacity": -1.0}),
    ("Cannot assess heart size.", {"Cardiomegaly": -1.0}),
    ("Minimal fluid within the right horizontal fissure.", {"Pleural Effusion": 1.0}),
    ("There is some minimal biapical scarring.", {"Pleural Other": 1.0}),
    ("Calcified granuloma in the right lung and patchy opacity in the left base.",
     {"Lung Opacity": 1.0}),
    ("Calcified sequelae of prior granulomatous infection.", {}),
    ("Chest views with external cardiac monitor leads show normal heart size.",
     {"Support Devices": 1.0, "Cardiomegaly": 0.0, "No Finding": 1.0}),
    ("Interstitial opacities which may be compatible with mild pulmonary edema.",
     {"Lung Opacity": 1.0, "Edema": -1.0}),
    ("Abnormal interstitial pattern, differential diagnosis including fibrosis, infection, edema.",
     {"Lung Opacity": 1.0, "Pneumonia": -1.0, "Edema": -1.0}),
    ("Left upper lobe airspace disease most XXXX pneumonia.",
     {"Lung Opacity": 1.0, "Pneumonia": -1.0}),
    ("If there is continued concern for occult fracture, consider rib series.",
     {"No Finding": 1.0}),
    # examples written in docs/cxr_labeling.md
    ("Midline sternotomy XXXX.", {"No Finding": 1.0}),
    ("XXXX opacity in the right base.", {"Lung Opacity": 1.0}),
    ("No new opacity.", {"Lung Opacity": -1.0}),
    ("Findings may be consistent with pneumonia.", {"Pneumonia": -1.0, "Lung Opacity": -1.0}),
    ("Stable enlarged heart.", {"Cardiomegaly": 1.0}),
    ("Mediastinal silhouette unremarkable.", {"Enlarged Cardiomediastinum": 0.0, "No Finding": 1.0}),
    ("Prominent mediastinum.", {"Enlarged Cardiomediastinum": -1.0}),
    ("No infiltrates.", {"Lung Opacity": 0.0, "No Finding": 1.0}),
    ("No vascular congestion.", {"Edema": 0.0, "No Finding": 1.0}),
    ("No evidence of infection.", {"Pneumonia": 0.0, "No Finding": 1.0}),
    ("Normal pulmonary vascularity.", {"No Finding": 1.0}),
    ("Opacity may represent pneumonia.", {"Lung Opacity": 1.0, "Pneumonia": -1.0}),
    ("Large left hydropneumothorax.", {"Pneumothorax": 1.0, "Pleural Effusion": 1.0}),
    ("Blunting of the right costophrenic angle, likely scarring or pleural thickening.",
     {"Pleural Other": -1.0}),
    ("Vertebral compression deformity.", {"Fracture": 1.0}),
])
def test_rule_labels(text, expected):
    assert labels(text) == expected


def test_aggregation_positive_beats_uncertain_beats_negative():
    assert labels("No effusion on the right. Small left pleural effusion.")["Pleural Effusion"] == 1.0
    assert labels("No focal consolidation. Possible left basilar consolidation.")[
        "Consolidation"] == -1.0


def test_lung_opacity_is_parent_of_its_children_only_for_1_and_minus_1():
    assert labels("Left basilar atelectasis.")["Lung Opacity"] == 1.0
    assert labels("Cannot exclude pneumonia.")["Lung Opacity"] == -1.0
    # a child's 0 never sets Lung Opacity
    assert "Lung Opacity" not in labels("No pneumonia.")
    # 1 from a child beats the 0 of "lungs clear"
    assert labels("Lungs clear. Mild bibasilar atelectasis.")["Lung Opacity"] == 1.0


def test_no_finding_blocked_by_other_abnormalities_but_not_by_negated_ones():
    assert "No Finding" not in labels("Heart size normal. Calcified right hilar granuloma.")
    assert "No Finding" not in labels("Hyperinflated lungs consistent with COPD.")
    assert "No Finding" not in labels("Degenerative changes of the thoracic spine.")
    assert labels("No hyperinflation. Heart size normal.")["No Finding"] == 1.0
    assert labels("Normal chest.") == {"No Finding": 1.0}
    # No Finding is never 0 or -1
    assert "No Finding" not in labels("Possible small effusion.")


def test_evidence_is_the_deciding_sentence():
    result = L.label("Heart size is normal. Small right pleural effusion. No pneumothorax.")
    assert result.evidence["Pleural Effusion"] == "Small right pleural effusion."
    assert result.evidence["Pneumothorax"] == "No pneumothorax."
    assert result.evidence["Lung Lesion"] is None
    row = result.row()
    assert row["evidence_pleural_effusion"] == "Small right pleural effusion."
    assert math.isnan(row["Lung Lesion"])


def test_label_batch_layout():
    df = pd.DataFrame({"report_id": ["a", "b"],
                       "text": ["Cardiomegaly.", "No pneumothorax."]})
    out = L.label_batch(df, "text")
    assert list(out.columns[:2]) == ["report_id", "text"]
    assert all(o in out.columns for o in OBSERVATIONS)
    assert out[list(OBSERVATIONS)].dtypes.eq("float64").all()
    assert out.loc[0, "Cardiomegaly"] == 1.0 and math.isnan(out.loc[1, "Cardiomegaly"])


def test_shipped_sample_matches_its_hand_labels():
    """ctray/data/sample_cxr_labels.csv was labeled by reading the sample reports."""
    from importlib import resources

    from ctray.tasks.cxr.eval_job import LabelsInput, read_labels

    data = resources.files("ctray") / "data"
    reports = pd.read_csv(data / "sample_cxr_reports.csv", dtype=str)
    gold = read_labels(LabelsInput(path=str(data / "sample_cxr_labels.csv")), "gold")
    for r in reports.itertuples():
        text = "\n\n".join(x for x in (r.findings, r.impression) if isinstance(x, str))
        got = L.label(text).labels
        want = gold.loc[r.uid]
        for obs in OBSERVATIONS:
            assert (math.isnan(got[obs]) and math.isnan(want[obs])) or got[obs] == want[obs], \
                (r.uid, obs, got[obs], want[obs])


def test_dev_gold_mean_weighted_f1_reaches_the_papers_chexpert_figure():
    """The issue's bar: mean weighted F1 (all certainty levels) >= 0.886 (CheXpert in
    the paper) on the hand-labeled dev set (report text read from ../shared/data)."""
    from ctray.tasks.cxr import evaluation as ev

    from pathlib import Path

    gold_csv = Path(__file__).parent / "data" / "cxr_dev_gold.csv"
    if not gold_csv.exists():
        pytest.skip("dev gold set not present")
    reports = pd.read_csv(shared_file("openi", "indiana_reports.csv"), dtype=str)
    from ctray.tasks.cxr.eval_job import LabelsInput, read_labels

    gold = read_labels(LabelsInput(path=str(gold_csv), id_column="uid"), "gold")
    reports = reports.set_index("uid").loc[gold.index]
    texts = ["\n\n".join(x.strip() for x in (f, i) if isinstance(x, str) and x.strip())
             for f, i in zip(reports.findings, reports.impression)]
    pred = pd.DataFrame([L.label(t).labels for t in texts], index=gold.index)
    table = ev.f1_table(gold, {"rules": pred})
    assert table.loc["Average", "rules"] >= 0.886, table
