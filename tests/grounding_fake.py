"""A fake LLM for the ground-text pipeline (importable by Ray workers).

It reads the JSON the real prompt carries and answers plausibly: light
terminology rewrites filed by keyword into regions, one finding per sentence with
negation / comparison flags, keyword categories. Marker words in a report make it
misbehave so tests can exercise validation and repair:

  DROPONCE / DROPALWAYS   the rewrite leaves that sentence out (first answer / always)
  NUMONCE                 the rewrite changes that sentence's first measurement once
  BADJSON                 every answer to that report is prose, not JSON
  FENCED                  the rewrite comes in a ```json fence after some prose
  CODEONCE / CODEALWAYS   the finding from that sentence cites a code that does not exist
  CATONCE / CATALWAYS     that finding gets a category code outside the schema
"""

from __future__ import annotations

import json
import re

from ctray.llm.base import LLMRequest
from ctray.tasks.grounding.text_checks import REGIONS
from ctray.tasks.grounding.prompts import REPAIR_PREFIX

_WORDING = [
    (r"\bmillimetric\b", "subcentimeter"), (r"\bsequelae?\b", "scarring"),
    (r"\bcalibration (?:is|was) normal\b", "is normal in caliber"),
    (r"\bspace-occupying lesion\b", "lesion"), (r"\b(?:are|is) natural\b", "are normal"),
    (r"\bin the study area\b", "within the field of view"),
    (r"\bwas observed\b", "is seen"), (r"\bwere observed\b", "are seen"),
    (r"\bwas not observed\b", "is not seen"), (r"\bwas detected\b", "is identified"),
    (r"\bwere detected\b", "are identified"), (r"\bopen\b", "patent"),
]
_REGION_WORDS = [
    ("Lower neck", r"thyroid|\bneck\b"),
    ("Bones", r"\bbones?\b|vertebra|\bribs?\b|osteophyt|spine|spinal|sternum|fracture|"
              r"degenerative|scoliosis|kyphosis|lytic|sclerotic"),
    ("Upper abdomen", r"liver|hepatic|kidney|renal|adrenal|spleen|splenic|gallbladder|"
                      r"pancrea|abdom|stomach|chol"),
    ("Heart/Vessels", r"heart|cardi|aort|coronary|pericard|\bvascular|vessel|atherom|plaque"),
    ("Mediastinum/Hila", r"mediastin|hilar|\bhila\b|lymph|esophag|thymus|hiatal"),
    ("Chest wall/Axilla", r"axilla|breast|chest wall|subcutaneous|\bskin\b|gynecomastia"),
]
_KEYWORDS = ["nodule", "effusion", "hernia", "emphysema", "atelectasis", "consolidation",
             "bronchiectasis", "plaque", "lymph", "scarring", "fibro", "cyst", "calcul",
             "stone", "osteophyt", "degenerative", "opacit", "glass", "cardiomegaly",
             "thickening", "mass", "mosaic", "clip"]
_CATEGORY_RULES = [
    (r"micronodul|tree-in-bud", "1e"), (r"thyroid", "3h"), (r"nodule|mass", "2d"),
    (r"emphysema", "1c"),
    (r"bronchiectasis", "1b"), (r"peribronchial|bronchial wall", "1a"),
    (r"septa|reticul", "1d"), (r"atelecta|consolidation", "2b"),
    (r"ground.glass|groundglass", "2c"), (r"pleural (?:effusion|thickening)", "2e"),
    (r"pericardial effusion", "8f"), (r"scarring|fibro|band|linear", "2a"),
    (r"hiatal hernia|hiatus hernia", "6a"), (r"plaque|atherom|atheroscler", "8a"),
    (r"cardiomegaly", "8d"), (r"aneurysm|ectasia|dilat", "8b"), (r"lymph", "3a"),
    (r"liver|hepatic", "3b"), (r"kidney|renal", "3d"), (r"adrenal", "3f"),
    (r"osteophyt|degenerative", "4b"), (r"scoliosis|kyphosis", "4c"),
    (r"fracture", "4a"), (r"steatosis", "9e"), (r"calcul|stone", "5a"),
    (r"clip", "11b"), (r"catheter|pacemaker", "11a"), (r"mosaic", "1f"),
]
_NEGATIVE = re.compile(r"\b(no|not|without|normal|patent|unremarkable|preserved)\b", re.I)
_PRIOR = re.compile(r"\b(stable|unchanged|new|increased|decreased|previous|prior|compared)\b",
                    re.I)
_SPECULATION = re.compile(r",\s*(?:suspicious|likely|consistent|which|may)\b| \(|\?")
# CT-RATE lead-ins such as "When examined in the lung parenchyma window; ..."
_LEAD_IN = re.compile(r"^[^;]{0,60};\s*")
# Clauses that usually carry separate findings ("no emphysema, but a 5 mm nodule").
_CLAUSES = re.compile(r",\s*but\s+|\s+and\s+(?=no\b)", re.I)
_MM = re.compile(r"(\d+)(\s*(?:mm|cm)\b)")


def _conversation(request: LLMRequest) -> tuple[str, bool]:
    """The original user message's text and whether this is the repair turn."""
    users = [m["content"] for m in request.messages if m["role"] == "user"]
    repair = users[-1].startswith(REPAIR_PREFIX)
    original = [u for u in users if not u.startswith(REPAIR_PREFIX)][-1]
    return original, repair


def _payload(text: str) -> dict:
    return json.loads(text.split("\n", 1)[1])


def _rewrite_sentence(text: str) -> str:
    for pattern, repl in _WORDING:
        text = re.sub(pattern, repl, text, flags=re.I)
    return text


def _region(text: str) -> str:
    for region, pattern in _REGION_WORDS:
        if re.search(pattern, text, re.I):
            return region
    return "Lungs/Airways/Pleura"


def _bump_first_number(text: str) -> str:
    return _MM.sub(lambda m: f"{int(m.group(1)) + 1}{m.group(2)}", text, count=1)


def rewrite(request: LLMRequest) -> str:
    original, repair = _conversation(request)
    sentences = _payload(original)
    findings = {r: [] for r in REGIONS}
    impressions = []
    for code, text in sentences.items():
        if "DROPALWAYS" in text or ("DROPONCE" in text and not repair):
            continue
        new = _rewrite_sentence(text)
        if "NUMONCE" in text and not repair:
            new = _bump_first_number(new)
        item = {"sources": [code], "text": new}
        if code.startswith("I"):
            impressions.append(item)
        else:
            findings[_region(text)].append(item)
    answer = json.dumps({"findings": findings, "impressions": impressions})
    if "FENCED" in original:
        return f"Here is the structured report:\n```json\n{answer}\n```"
    return answer


def extract(request: LLMRequest) -> str:
    original, repair = _conversation(request)
    report = _payload(original)
    impressions = report.get("Impressions", {})
    out = []
    for region in report["Findings"].values():
        for code, text in region.items():
            if re.search(r"recommend", text, re.I):
                continue
            kept = _SPECULATION.split(_LEAD_IN.sub("", text), maxsplit=1)[0].strip().rstrip(".")
            for phrase in filter(None, (p.strip() for p in _CLAUSES.split(kept))):
                abnormal = not _NEGATIVE.search(phrase)
                codes = [code]
                if abnormal:
                    words = [k for k in _KEYWORDS if k in phrase.lower()]
                    codes += [i for i, t in impressions.items()
                              if any(k in t.lower() for k in words)]
                if "CODEALWAYS" in text or ("CODEONCE" in text and not repair):
                    codes.append("L99")
                out.append({"phrase": phrase, "sentence_codes": codes,
                            "abnormal": "Y" if abnormal else "N",
                            "prior_reference": "Y" if _PRIOR.search(text) else "N"})
    return json.dumps({"findings": out})


def categorise(request: LLMRequest) -> str:
    original, repair = _conversation(request)
    findings = _payload(original)
    codes = {}
    for fid, phrase in findings.items():
        code = next((c for p, c in _CATEGORY_RULES if re.search(p, phrase, re.I)), "12")
        if "CATALWAYS" in phrase:
            code = "13b"
        elif "CATONCE" in phrase and not repair:
            code = "2z"
        codes[fid] = code
    return json.dumps({"categories": codes})


_STEPS = {"ground_rewrite": rewrite, "ground_findings": extract, "ground_categories": categorise}


def respond(request: LLMRequest) -> str:
    if any("BADJSON" in m["content"] for m in request.messages if m["role"] == "user"):
        return "I am sorry, but I cannot produce that report in the requested format."
    title = (request.json_schema or {}).get("title")
    if title not in _STEPS:
        raise ValueError(f"grounding_fake: unexpected request (schema title {title!r})")
    return _STEPS[title](request)
