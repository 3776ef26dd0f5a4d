"""The 18 CT-RATE findings in CT-RATE's label-column order.

Three names per finding: the CT-RATE display name (the column header of CT-RATE's
multi-abnormality label CSV and of ``ctray/data/sample_labels.csv``), a snake_case
column name used inside ctray frames, and a Japanese name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    name: str  # CT-RATE display name / label CSV header
    column: str  # snake_case column inside ctray frames
    ja: str


FINDINGS: tuple[Finding, ...] = (
    Finding("Medical material", "medical_material", "医療材料"),
    Finding("Arterial wall calcification", "arterial_wall_calcification", "動脈壁石灰化"),
    Finding("Cardiomegaly", "cardiomegaly", "心拡大"),
    Finding("Pericardial effusion", "pericardial_effusion", "心嚢液貯留"),
    Finding("Coronary artery wall calcification", "coronary_artery_wall_calcification",
            "冠動脈壁石灰化"),
    Finding("Hiatal hernia", "hiatal_hernia", "食道裂孔ヘルニア"),
    Finding("Lymphadenopathy", "lymphadenopathy", "リンパ節腫大"),
    Finding("Emphysema", "emphysema", "肺気腫"),
    Finding("Atelectasis", "atelectasis", "無気肺"),
    Finding("Lung nodule", "lung_nodule", "肺結節"),
    Finding("Lung opacity", "lung_opacity", "肺野濃度上昇"),
    Finding("Pulmonary fibrotic sequela", "pulmonary_fibrotic_sequela", "肺線維性後遺変化"),
    Finding("Pleural effusion", "pleural_effusion", "胸水"),
    Finding("Mosaic attenuation pattern", "mosaic_attenuation_pattern", "モザイク状濃度"),
    Finding("Peribronchial thickening", "peribronchial_thickening", "気管支周囲肥厚"),
    Finding("Consolidation", "consolidation", "コンソリデーション"),
    Finding("Bronchiectasis", "bronchiectasis", "気管支拡張"),
    Finding("Interlobular septal thickening", "interlobular_septal_thickening", "小葉間隔壁肥厚"),
)

FINDING_NAMES: tuple[str, ...] = tuple(f.name for f in FINDINGS)
FINDING_COLUMNS: tuple[str, ...] = tuple(f.column for f in FINDINGS)
NAME_TO_COLUMN: dict[str, str] = {f.name: f.column for f in FINDINGS}
COLUMN_TO_NAME: dict[str, str] = {f.column: f.name for f in FINDINGS}
COLUMN_TO_JA: dict[str, str] = {f.column: f.ja for f in FINDINGS}


def to_columns(df):
    """Rename CT-RATE display-name headers to snake_case columns (others untouched)."""
    return df.rename(columns=NAME_TO_COLUMN)


def to_names(df):
    """Rename snake_case finding columns back to CT-RATE display names."""
    return df.rename(columns=COLUMN_TO_NAME)
