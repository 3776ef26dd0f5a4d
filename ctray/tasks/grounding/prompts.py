"""Prompts of the three ReXGroundingCT text steps (rewrite, extract, categorise).

Written for this project after the paper's method (Supplementary Figures S2-S8),
not copied from it. Each step has one worked example as a few-shot turn; the
example is JSON built here with ``json.dumps`` so it is always valid output.
Instructions hold no literal braces because ``PromptTemplate`` formats them.
"""

from __future__ import annotations

import json

from ctray.llm.prompts import PromptTemplate
from ctray.tasks.grounding.categories import load_categories
from ctray.tasks.grounding.text_checks import REGIONS

_REGION_LIST = ", ".join(f'"{r}"' for r in REGIONS)
_LETTERS = ", ".join(f"{letter} = {region}" for region, letter in REGIONS.items())

# -- the worked example (a made-up report) ---------------------------------------------

EXAMPLE_SOURCE = {
    "F0": "Trachea and both main bronchi are open.",
    "F1": "Heart size is normal and pericardial effusion was not observed.",
    "F2": "Calcific atheroma plaques are observed in the aortic arch and coronary arteries.",
    "F3": "Millimetric lymph nodes are observed in the mediastinum.",
    "F4": "A 7x5 mm nodule is observed in the superior segment of the right lung lower lobe, "
          "stable compared to the previous examination.",
    "F5": "Sequelae bands are observed in the left lung lingular segment.",
    "F6": "A hypodense lesion of 1.25 cm is observed in segment 7 of the liver, cyst?",
    "F7": "Degenerative changes are observed in the thoracic vertebrae.",
    "I0": "Stable 7x5 mm nodule in the right lung lower lobe.",
    "I1": "Hypodense lesion in the liver.",
}

_EXAMPLE_REWRITE = {
    "findings": {
        "Lungs/Airways/Pleura": [
            {"sources": ["F0"], "text": "The trachea and both main bronchi are patent."},
            {"sources": ["F4"], "text": "A 7x5 mm nodule in the superior segment of the right "
                                        "lower lobe is stable compared with the prior "
                                        "examination."},
            {"sources": ["F5"], "text": "Linear scarring is present in the lingula."},
        ],
        "Heart/Vessels": [
            {"sources": ["F1"],
             "text": "The heart is normal in size without pericardial effusion."},
            {"sources": ["F2"], "text": "Calcified atherosclerotic plaques are present in the "
                                        "aortic arch and coronary arteries."},
        ],
        "Mediastinum/Hila": [
            {"sources": ["F3"], "text": "Subcentimeter mediastinal lymph nodes are present."},
        ],
        "Chest wall/Axilla": [],
        "Lower neck": [],
        "Bones": [
            {"sources": ["F7"], "text": "Degenerative changes of the thoracic spine are noted."},
        ],
        "Upper abdomen": [
            {"sources": ["F6"], "text": "A 1.25 cm hypodense lesion in hepatic segment 7 may "
                                        "represent a cyst."},
        ],
    },
    "impressions": [
        {"sources": ["I0"], "text": "Stable 7x5 mm right lower lobe nodule."},
        {"sources": ["I1"], "text": "Hypodense hepatic lesion."},
    ],
}

_EX = _EXAMPLE_REWRITE["findings"]
# The rewrite above as step 2 sees it: region codes assigned, empty regions left out.
EXAMPLE_REPORT = {
    "Findings": {
        "Lungs/Airways/Pleura": {"L0": _EX["Lungs/Airways/Pleura"][0]["text"],
                                 "L1": _EX["Lungs/Airways/Pleura"][1]["text"],
                                 "L2": _EX["Lungs/Airways/Pleura"][2]["text"]},
        "Heart/Vessels": {"H0": _EX["Heart/Vessels"][0]["text"],
                          "H1": _EX["Heart/Vessels"][1]["text"]},
        "Mediastinum/Hila": {"M0": _EX["Mediastinum/Hila"][0]["text"]},
        "Bones": {"B0": _EX["Bones"][0]["text"]},
        "Upper abdomen": {"A0": _EX["Upper abdomen"][0]["text"]},
    },
    "Impressions": {"I0": "Stable 7x5 mm right lower lobe nodule.",
                    "I1": "Hypodense hepatic lesion."},
}


def _f(phrase: str, codes: list[str], abnormal: str, prior: str = "N") -> dict:
    return {"phrase": phrase, "sentence_codes": codes, "abnormal": abnormal,
            "prior_reference": prior}


_EXAMPLE_FINDINGS = {"findings": [
    _f("Patent trachea and main bronchi", ["L0"], "N"),
    _f("7x5 mm nodule in the superior segment of the right lower lobe", ["L1", "I0"], "Y", "Y"),
    _f("Linear scarring in the lingula", ["L2"], "Y"),
    _f("Normal heart size", ["H0"], "N"),
    _f("No pericardial effusion", ["H0"], "N"),
    _f("Calcified atherosclerotic plaques in the aortic arch and coronary arteries", ["H1"], "Y"),
    _f("Subcentimeter mediastinal lymph nodes", ["M0"], "N"),
    _f("Degenerative changes of the thoracic spine", ["B0"], "Y"),
    _f("1.3 cm hypodense lesion in hepatic segment 7", ["A0", "I1"], "Y"),
]}

EXAMPLE_ABNORMAL = {f"S{i}": f["phrase"] for i, f in enumerate(_EXAMPLE_FINDINGS["findings"], 1)
                    if f["abnormal"] == "Y"}
_EXAMPLE_CATEGORIES = {"categories": {"S2": "2d", "S3": "2a", "S6": "8a", "S8": "4b", "S9": "3b"}}


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1)


# -- step 1 ----------------------------------------------------------------------------

REWRITE = PromptTemplate(
    name="ground-rewrite",
    system=(
        "You are a board-certified radiologist who writes chest CT reports in standard "
        "American English.\n"
        "You receive the Findings and Impressions of one chest CT report, one sentence per "
        "code: F0, F1, ... are Findings sentences and I0, I1, ... are Impressions sentences. "
        "The text may be a machine translation with unusual wording.\n\n"
        "Rules:\n"
        "1. Rewrite every sentence with the terminology an American radiologist would use, "
        "e.g. 'subcentimeter' for 'millimetric', 'scarring' or 'fibrosis' for 'sequelae', "
        "'patent' for 'open' airways, 'normal in caliber' for 'calibration was normal', "
        "'within the field of view' for 'in the sections' or 'in the study area'.\n"
        "2. Keep the meaning. Copy every measurement exactly as written (same number, same "
        "unit); do not round or convert.\n"
        "3. Leave out no sentence and add nothing the report does not say. You may merge "
        "sentences about the same thing or split one sentence, but every rewritten sentence "
        "lists the code(s) of the input sentence(s) it comes from, and every input code is "
        "listed at least once.\n"
        f"4. File each rewritten Findings sentence under exactly one of these regions: "
        f"{_REGION_LIST}. A region without sentences gets an empty list.\n"
        "5. Findings sentences cite F codes only; Impressions sentences cite I codes only.\n\n"
        "Answer with one JSON object and nothing else. Key \"findings\": an object with all "
        "seven region names as keys, each holding a list of objects with \"sources\" (list of "
        "codes) and \"text\" (the rewritten sentence). Key \"impressions\": a list of objects "
        "with \"sources\" and \"text\"."
    ),
    user="Report sentences by code:\n{sentences}",
    few_shot=((f"Report sentences by code:\n{dumps(EXAMPLE_SOURCE)}", dumps(_EXAMPLE_REWRITE)),),
)

# -- step 2 ----------------------------------------------------------------------------

EXTRACT = PromptTemplate(
    name="ground-extract",
    system=(
        "You are a radiologist preparing chest CT reports for finding-level image "
        "annotation.\n"
        "You receive one report as JSON. \"Findings\" groups sentences by region; a sentence "
        f"code's letter names its region ({_LETTERS}). \"Impressions\" holds sentences "
        "coded I0, I1, ...\n\n"
        "List every distinct finding that can be seen, or is stated to be absent, on the CT.\n"
        "Rules:\n"
        "1. One finding per entry: split a sentence that describes several findings; combine "
        "sentences (Impressions included) that describe the same finding and keep all their "
        "details: location, size, number, change over time.\n"
        "2. Leave out speculation and interpretation ('suspicious for', 'likely', 'may "
        "represent', 'consistent with'), anything phrased as a question, and "
        "recommendations.\n"
        "3. Keep measurements; write millimetres as whole numbers and centimetres with one "
        "decimal.\n"
        "4. Each entry has \"phrase\" (a short self-contained description), "
        "\"sentence_codes\" (the codes of every sentence it comes from), \"abnormal\" (\"Y\" "
        "or \"N\") and \"prior_reference\" (\"Y\" when the wording refers to an earlier study, "
        "such as stable, new, unchanged, increased; otherwise \"N\").\n\n"
        "Answer with one JSON object and nothing else, with the key \"findings\" holding the "
        "list."
    ),
    user="Report:\n{report}",
    few_shot=((f"Report:\n{dumps(EXAMPLE_REPORT)}", dumps(_EXAMPLE_FINDINGS)),),
)

# -- step 3 ----------------------------------------------------------------------------

CATEGORISE = PromptTemplate(
    name="ground-categorise",
    system=(
        "You are a radiologist who classifies abnormal chest CT findings.\n"
        "Category schema (code: name):\n"
        f"{load_categories().prompt_text()}\n\n"
        "Rules:\n"
        "1. Give every finding exactly one code of the schema: a subcategory code such as "
        "2d, or 12 when no category fits.\n"
        "2. Decide the category first, then its subcategory; when no named subcategory fits, "
        "use that category's Other subcategory.\n"
        "3. Lesions of bone are 3j, not category 4.\n"
        "4. Never use a code that is not listed above.\n\n"
        "Answer with one JSON object and nothing else: the key \"categories\" maps each "
        "finding id to its code."
    ),
    user="Abnormal findings by id:\n{findings}",
    few_shot=((f"Abnormal findings by id:\n{dumps(EXAMPLE_ABNORMAL)}",
               dumps(_EXAMPLE_CATEGORIES)),),
)

# -- the repair turn -------------------------------------------------------------------

REPAIR_PREFIX = "Your answer could not be accepted:"


def repair_message(problems: list[str]) -> str:
    listed = "\n".join(f"- {p}" for p in problems[:8])
    return (f"{REPAIR_PREFIX}\n{listed}\n"
            "Answer again with the complete, corrected JSON object and nothing else.")
