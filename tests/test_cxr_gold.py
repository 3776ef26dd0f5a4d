"""Integrity of the CXR dev gold set (tests/data/cxr_dev_gold.csv; conventions in docs/cxr_labeling.md)."""

from __future__ import annotations

import math
import shutil

import pytest

from conftest import shared_file
from cxr_gold import (
    ALLOWED_CELLS,
    GOLD_COLUMNS,
    GOLD_PATH,
    load_gold,
    read_openi,
    report_text,
    select_dev_uids,
)
from ctray.tasks.cxr.schema import OBSERVATIONS

PATHOLOGIES = [o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices")]
LUNG_OPACITY_CHILDREN = ("Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis")


@pytest.fixture(scope="module")
def gold():
    return load_gold()


def test_layout_and_size(gold):
    assert GOLD_COLUMNS == ("uid",) + tuple(OBSERVATIONS)
    assert len(gold) >= 80
    assert all(uid.isdigit() for uid in gold)


def test_only_allowed_values(gold):
    allowed = {1.0, 0.0, -1.0}
    for uid, labels in gold.items():
        for obs, value in labels.items():
            assert math.isnan(value) or value in allowed, (uid, obs, value)


def test_no_finding_consistency(gold):
    # No Finding is 1 or blank, and 1 only when no pathology (Support Devices excepted) is 1 or -1.
    for uid, labels in gold.items():
        nf = labels["No Finding"]
        assert math.isnan(nf) or nf == 1.0, uid
        if nf == 1.0:
            assert not [o for o in PATHOLOGIES if labels[o] in (1.0, -1.0)], uid


def test_lung_opacity_is_parent_of_positive_children(gold):
    for uid, labels in gold.items():
        if any(labels[c] == 1.0 for c in LUNG_OPACITY_CHILDREN):
            assert labels["Lung Opacity"] == 1.0, uid


def test_every_class_occurs(gold):
    # The set must exercise all four classes somewhere, and positives for the common findings.
    values = [v for labels in gold.values() for v in labels.values()]
    assert any(math.isnan(v) for v in values)
    for cls in (1.0, 0.0, -1.0):
        assert values.count(cls) >= 5, cls
    for obs in ("Cardiomegaly", "Lung Opacity", "Pleural Effusion", "Support Devices", "No Finding"):
        assert sum(labels[obs] == 1.0 for labels in gold.values()) >= 3, obs


def test_loader_rejects_bad_cells(tmp_path):
    bad = tmp_path / "gold.csv"
    shutil.copy(GOLD_PATH, bad)
    text = bad.read_text(encoding="utf-8").splitlines()
    first = text[1].split(",")
    first[2] = "2.0"
    text[1] = ",".join(first)
    bad.write_text("\n".join(text) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not 1.0/0.0/-1.0/empty"):
        load_gold(bad)
    assert "1" not in ALLOWED_CELLS  # the file uses the labeler's float spelling only


def test_loader_rejects_duplicate_uid(tmp_path):
    bad = tmp_path / "gold.csv"
    lines = GOLD_PATH.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate uid"):
        load_gold(bad)


def test_uids_exist_and_match_documented_selection(gold):
    csv_path = shared_file("openi", "indiana_reports.csv")
    reports = read_openi(csv_path)
    for uid in gold:
        assert uid in reports, uid
        assert report_text(reports[uid]), uid
    # The file holds exactly the reproducible selection, in drawn order.
    assert list(gold) == select_dev_uids(csv_path)
