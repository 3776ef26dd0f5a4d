"""Generate the synthetic sample corpus: EN and JA chest CT reports with 18-finding labels.

Labels are drawn first (fixed seed), then each report is composed from the paired
templates in ``sample_templates``: positive findings get a positive sentence and
an impression line, absent findings get an explicit negative sentence part of the
time (or none), so the labels are correct by construction and a classifier must
learn negation. The Japanese report is the sentence-by-sentence translation of
the English one.

    python -m ctray.tasks.findings.make_sample            # writes ctray/data/sample_*.csv
    python -m ctray.tasks.findings.make_sample --n 240 --seed 7 --out-dir /tmp/sample
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pandas as pd

from ctray.tasks.findings import sample_templates as T
from ctray.tasks.findings.schema import COLUMN_TO_NAME, FINDING_COLUMNS

DEFAULT_SEED = 20250611
DEFAULT_N = 240
# Per-finding positive rate (the CT-RATE ordering of frequencies, compressed into
# 15-40% so every finding has enough positives to learn from in 240 reports).
PREVALENCE = {
    "medical_material": 0.17, "arterial_wall_calcification": 0.35, "cardiomegaly": 0.2,
    "pericardial_effusion": 0.16, "coronary_artery_wall_calcification": 0.3,
    "hiatal_hernia": 0.18, "lymphadenopathy": 0.27, "emphysema": 0.25, "atelectasis": 0.28,
    "lung_nodule": 0.4, "lung_opacity": 0.35, "pulmonary_fibrotic_sequela": 0.3,
    "pleural_effusion": 0.2, "mosaic_attenuation_pattern": 0.16,
    "peribronchial_thickening": 0.18, "consolidation": 0.22, "bronchiectasis": 0.18,
    "interlobular_septal_thickening": 0.16,
}
# Chance that an absent finding is denied explicitly rather than left unmentioned.
NEGATIVE_MENTION = 0.6
LUNG_ORDER = ("emphysema", "lung_nodule", "lung_opacity", "consolidation",
              "interlobular_septal_thickening", "atelectasis", "pulmonary_fibrotic_sequela",
              "bronchiectasis", "peribronchial_thickening", "mosaic_attenuation_pattern")


def _slots(rng: random.Random) -> dict[str, tuple[str, str]]:
    deg = rng.choice(T.DEG)
    mm = rng.randint(4, 24)
    big = rng.randint(14, 30)
    return {
        "side": rng.choice(T.SIDE), "lobe": rng.choice(T.LOBE), "where": rng.choice(T.WHERE),
        "Deg": deg, "deg": (deg[0].lower(), deg[1]), "amount": rng.choice(T.AMOUNT),
        "station": rng.choice(T.STATION), "mm": (str(mm), str(mm)),
        "mm2": (str(max(3, mm - rng.randint(1, 3))),) * 2,
        "ln": (str(rng.randint(11, 19)),) * 2, "big": (str(big),) * 2,
        "small": (str(rng.randint(4, 8)),) * 2,
    }


def _fill(template: tuple[str, str], rng: random.Random) -> tuple[str, str]:
    slots = _slots(rng)
    en = template[0].format(**{k: v[0] for k, v in slots.items()})
    ja = template[1].format(**{k: v[1] for k, v in slots.items()})
    return en[0].upper() + en[1:], ja


def draw_labels(rng: random.Random) -> dict[str, int]:
    labels = {c: int(rng.random() < PREVALENCE[c]) for c in FINDING_COLUMNS}
    # Coronary calcification mostly comes with aortic calcification, as in real reports.
    if labels["arterial_wall_calcification"]:
        labels["coronary_artery_wall_calcification"] = int(rng.random() < 0.6)
    else:
        labels["coronary_artery_wall_calcification"] = int(rng.random() < 0.12)
    return labels


class _Composer:
    def __init__(self, labels: dict[str, int], rng: random.Random):
        self.labels, self.rng = labels, rng
        self.done: set[str] = set()
        self.sentences: list[tuple[str, str]] = []

    def combo(self, a: str, b: str, p: float = 0.5) -> None:
        key = (a, b, self.labels[a], self.labels[b])
        if a in self.done or b in self.done or key not in T.COMBO or self.rng.random() >= p:
            return
        self.sentences.append(_fill(self.rng.choice(T.COMBO[key]), self.rng))
        self.done |= {a, b}

    def single(self, col: str) -> None:
        if col in self.done:
            return
        self.done.add(col)
        if self.labels[col]:
            self.sentences.append(_fill(self.rng.choice(T.POSITIVE[col]), self.rng))
        elif self.rng.random() < NEGATIVE_MENTION:
            self.sentences.append(_fill(self.rng.choice(T.NEGATIVE[col]), self.rng))


def compose(labels: dict[str, int], rng: random.Random) -> dict[str, str]:
    """One report (EN and JA sections) whose content matches ``labels``."""
    c = _Composer(labels, rng)
    c.sentences.append(rng.choice(T.OPENING))
    if rng.random() < 0.12:
        c.sentences.append(_fill(T.DISTRACTOR[0], rng))
    c.combo("arterial_wall_calcification", "coronary_artery_wall_calcification", 0.9)
    c.single("cardiomegaly")
    c.combo("pleural_effusion", "pericardial_effusion", 0.35)
    c.single("pericardial_effusion")
    if labels["medical_material"] or rng.random() < 0.3:
        c.single("medical_material")
    c.sentences.append(rng.choice(T.ESOPHAGUS))
    c.single("hiatal_hernia")
    c.single("lymphadenopathy")
    header = rng.choice(T.LUNG_WINDOW)
    first_lung = len(c.sentences)
    for a, b in (("bronchiectasis", "peribronchial_thickening"), ("lung_opacity", "consolidation"),
                 ("lung_opacity", "interlobular_septal_thickening"), ("emphysema", "lung_nodule"),
                 ("lung_nodule", "lung_opacity")):
        c.combo(a, b, 0.5)
    order = list(LUNG_ORDER)
    rng.shuffle(order)
    for col in order:
        c.single(col)
    c.single("pleural_effusion")
    c.single("pericardial_effusion")
    if len(c.sentences) > first_lung:
        en, ja = c.sentences[first_lung]
        c.sentences[first_lung] = (f"{header[0]} {en}", f"{header[1]}{ja}")
    c.sentences.extend(rng.sample(T.CLOSING, k=rng.randint(1, 3)))
    if rng.random() < 0.12:
        c.sentences.append(_fill(T.DISTRACTOR[1], rng))

    positives = [col for col in FINDING_COLUMNS if labels[col]]
    impression = ([T.IMPRESSION[col] for col in positives] if positives
                  else [rng.choice(T.NORMAL_IMPRESSION)])
    clinical, technique = rng.choice(T.CLINICAL), rng.choice(T.TECHNIQUE)
    return {
        "ClinicalInformation_EN": clinical[0], "Technique_EN": technique[0],
        "Findings_EN": " ".join(s[0] for s in c.sentences),
        "Impressions_EN": " ".join(s[0] for s in impression),
        "ClinicalInformation_JA": clinical[1], "Technique_JA": technique[1],
        "Findings_JA": "".join(s[1] for s in c.sentences),
        "Impressions_JA": "".join(s[1] for s in impression),
    }


def make_sample(n: int = DEFAULT_N, seed: int = DEFAULT_SEED
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(reports_en, reports_ja, labels) frames; labels use CT-RATE display-name headers."""
    rng = random.Random(seed)
    rows, label_rows = [], []
    for i in range(1, n + 1):
        labels = draw_labels(rng)
        vol = f"sample_{i:04d}_a"
        rows.append({"VolumeName": vol, **compose(labels, rng)})
        label_rows.append({"VolumeName": vol, **{COLUMN_TO_NAME[c]: labels[c] for c in labels}})
    reports = pd.DataFrame(rows)
    en = reports[["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN",
                  "Impressions_EN"]]
    ja = reports[["VolumeName", "ClinicalInformation_JA", "Technique_JA", "Findings_JA",
                  "Impressions_JA"]]
    return en, ja, pd.DataFrame(label_rows)


def write_sample(out_dir: Path, n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    en, ja, labels = make_sample(n, seed)
    paths = [out_dir / "sample_reports_en.csv", out_dir / "sample_reports_ja.csv",
             out_dir / "sample_labels.csv"]
    for frame, path in zip((en, ja, labels), paths):
        frame.to_csv(path, index=False, lineterminator="\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=DEFAULT_N)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    # Default: the package data folder the jobs read their samples from.
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[2] / "data")
    args = ap.parse_args(argv)
    for path in write_sample(args.out_dir, args.n, args.seed):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
