"""Loader for the CXR dev gold set (tests/data/cxr_dev_gold.csv) and its reproducible selection.

The gold file holds labels only (uid + the 14 CheXpert observations); the report text stays in
../shared/data/openi/indiana_reports.csv and is read from there by uid. The conventions behind
the labels are in docs/cxr_labeling.md.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

from ctray.tasks.cxr.schema import OBSERVATIONS

GOLD_PATH = Path(__file__).parent / "data" / "cxr_dev_gold.csv"
GOLD_COLUMNS: tuple[str, ...] = ("uid",) + tuple(OBSERVATIONS)
# The exact cell spellings allowed in the file (CheXpert labeler layout).
ALLOWED_CELLS = {"1.0": 1.0, "0.0": 0.0, "-1.0": -1.0, "": math.nan}

SELECTION_SEED = 0
PER_STRATUM = 40  # 40 reports coded MeSH "normal" + 40 coded with any other finding
ENRICHED = 20  # + 20 more whose MeSH codes name a finding that is rare in a plain sample
# Top-level MeSH terms (before the first "/") that mark the rare positive classes.
ENRICH_TERMS = frozenset({
    "Pleural Effusion", "Pulmonary Edema", "Pulmonary Congestion", "Pneumonia", "Consolidation",
    "Pneumothorax", "Fractures, Bone", "Catheters, Indwelling", "Tube, Inserted",
    "Implanted Medical Device", "Medical Device", "Airspace Disease", "Mass", "Nodule", "Cardiomegaly",
})
RARE = 20  # + 20 more for the classes still without positives after the first 100
RARE_TERMS = frozenset({"Pneumothorax", "Pneumonia", "Consolidation", "Pulmonary Edema", "Fractures, Bone"})


def load_gold(path: Path = GOLD_PATH) -> dict[str, dict[str, float]]:
    """uid -> {observation: 1.0 / 0.0 / -1.0 / NaN}; ValueError on a malformed file."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != GOLD_COLUMNS:
            raise ValueError(f"{path}: columns must be {GOLD_COLUMNS}, got {reader.fieldnames}")
        rows: dict[str, dict[str, float]] = {}
        for line_no, row in enumerate(reader, start=2):
            uid = row["uid"].strip()
            if not uid or uid in rows:
                raise ValueError(f"{path}:{line_no}: empty or duplicate uid {uid!r}")
            labels = {}
            for obs in OBSERVATIONS:
                cell = row[obs].strip()
                if cell not in ALLOWED_CELLS:
                    raise ValueError(f"{path}:{line_no}: {obs} = {cell!r} is not 1.0/0.0/-1.0/empty")
                labels[obs] = ALLOWED_CELLS[cell]
            rows[uid] = labels
    return rows


def read_openi(csv_path: Path) -> dict[str, dict[str, str]]:
    """uid -> row of the Open-i CSV (all columns as strings)."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {row["uid"]: row for row in csv.DictReader(fh)}


def report_text(row: dict[str, str]) -> str:
    """The text the labels were read from: findings, then impression (see docs/cxr_labeling.md)."""
    parts = [(row.get("findings") or "").strip(), (row.get("impression") or "").strip()]
    return "\n".join(p for p in parts if p)


def _mesh_terms(row: dict[str, str]) -> set[str]:
    return {part.split("/")[0].strip() for part in (row.get("MeSH") or "").split(";")}


def select_dev_uids(csv_path: Path, seed: int = SELECTION_SEED, per_stratum: int = PER_STRATUM,
                    enriched: int = ENRICHED, rare: int = RARE) -> list[str]:
    """The documented selection of the dev set: reports with a non-empty findings or impression,
    split by MeSH == "normal" vs anything else, `per_stratum` drawn from each with one
    random.Random(seed) (sample over the rows in file order), then `enriched` more drawn by the
    same generator from the not yet chosen reports whose MeSH codes include an ENRICH_TERMS term,
    then `rare` more the same way for RARE_TERMS. Returned in drawn order. MeSH codes are used
    only to select, never to label."""
    rows = list(read_openi(csv_path).values())
    usable = [r for r in rows if report_text(r)]
    normal = [r["uid"] for r in usable if r["MeSH"].strip().lower() == "normal"]
    other = [r["uid"] for r in usable if r["MeSH"].strip().lower() != "normal"]
    rng = random.Random(seed)
    chosen = rng.sample(normal, per_stratum) + rng.sample(other, per_stratum)
    taken = set(chosen)
    for terms, count in ((ENRICH_TERMS, enriched), (RARE_TERMS, rare)):
        pool = [r["uid"] for r in usable if r["uid"] not in taken and _mesh_terms(r) & terms]
        drawn = rng.sample(pool, count)
        chosen += drawn
        taken.update(drawn)
    return chosen
