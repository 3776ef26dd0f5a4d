"""A keyword-rule stand-in for the LEAVS LLM (fake backend responder, importable by workers).

It reads each LEAVS prompt the way the model would have to (the organ, the numbered
report, the organ's evidence sentences, the finding type) and answers from keyword
rules, so a pipeline run on the bundled synthetic reports must produce their expected
codes only if the right sentences, organs and types reach the right questions and
the answers are parsed and assembled correctly. It also answers in the messy forms
real models use (prose, markdown, out-of-range numbers, an unparseable first try).
"""

from __future__ import annotations

import re

from ctray.llm.base import LLMRequest

# Strict names: the list step finds only these (so the check step has work to do).
ORGAN_NAMES = {
    "liver": r"\bliver\b", "gallbladder": r"\bgallbladder\b", "spleen": r"\bspleen\b",
    "right kidney": r"\bright kidney\b|\bkidneys\b", "left kidney": r"\bleft kidney\b|\bkidneys\b",
    "pancreas": r"\bpancreas\b", "stomach": r"\bstomach\b", "small bowel": r"\bsmall bowel\b",
    "large bowel": r"\blarge bowel\b|\bcolon\b",
}
_GENERIC_BOWEL = r"(?<!small )(?<!large )\bbowel\b"
ORGAN_SYNONYMS = {
    "liver": r"hepat\w*|\bsegment [1-8]\b",
    "gallbladder": r"cholecyst\w*|cholelithiasis|gallstones?",
    "spleen": r"splen\w*",
    "right kidney": r"\bright (?:renal|kidney)\b",
    "left kidney": r"\bleft (?:renal|kidney)\b",
    "pancreas": r"pancrea\w*",
    "stomach": r"gastr\w*",
    "small bowel": r"ile(?:um|al|o)\w*|jejun\w*|duoden\w*|" + _GENERIC_BOWEL,
    "large bowel": r"colon\w*|\w*colectomy|sigmoid|cec(?:um|al)|rect(?:um|al)|" + _GENERIC_BOWEL,
}
BROAD = r"upper abdomen|abdominal organs"
BROAD_ORGANS = {"liver", "spleen"}

TYPE_KEYWORDS = {
    "absent": r"surgically absent|congenitally absent",
    "device": r"\bstent\b|\bcatheter\b|\bdrain\b|\btube\b",
    "postsurgical": r"post-?surgical|status post|anastomosis|\bclips?\b|postoperative",
    "enlarged": r"enlarged|enlargement|hepatomegaly|splenomegaly|dilated|distended",
    "atrophy": r"atroph\w*",
    "anatomy": r"ectopic|malrotation|horseshoe|displaced|hiatal hernia",
    "focal": (r"\bcysts?\b|\blesions?\b|\bmass\b|\bnodules?\b|\bstones?\b|gallstones?|"
              r"cholelithiasis|hemangioma|\bpolyps?\b|diverticulosis"),
    "diffuse": (r"fatty infiltration|steatosis|cirrho\w*|wall thickening|wall is thickened|"
                r"colitis|pancreatitis|cholecystitis|diverticulitis"),
    "quality": r"artifact|limited by|suboptimal",
    "adjacent": (r"pericholecystic|peripancreatic|perinephric|fat stranding|ascites|abut\w*|"
                 r"\badjacent\b|pneumoperitoneum|free intraperitoneal air"),
    "normal": r"\bnormal\b|unremarkable",
}
NEGATION = re.compile(r"\b(?:no|not|without|negative for|free of)\b", re.I)
HEDGE = re.compile(r"\b(?:possible|possibly|may represent|cannot be excluded|questionable|"
                   r"suspicious for|suggestive of|probable|probably)\b", re.I)
PRIOR = re.compile(r"\b(?:prior|previous\w*)\b", re.I)
CHANGE = re.compile(r"less conspicuous|improved|decreased|not clearly seen|resolved", re.I)
URGENCY_RULES = (
    (3, r"free (?:intraperitoneal )?air|pneumoperitoneum|perforat\w*|obstruction\b|volvulus"),
    (2, r"\bmass\b|carcinoma|malignan\w*|metasta\w*|abscess|cholecystitis|pancreatitis|"
        r"colitis|diverticulitis|ascites|cirrho\w*|ulcer"),
    (1, r"\bcysts?\b|\bstones?\b|gallstones?|cholelithiasis|hemangioma|steatosis|fatty|"
        r"enlarged|splenomegaly|hepatomegaly|diverticulosis|\bnodules?\b|\bpolyps?\b|"
        r"atroph\w*|hernia|\blesions?\b"),
)
CERTAINTY_LABEL = {1: "stated as present", -1: "mentioned as possible",
                   0: "stated as absent or very unlikely", -2: "not directly mentioned",
                   -3: "ambiguous comparison with a prior report"}
BROAD_LABEL = "mentioned only for a broad area"
URGENCY_LABEL = {0: "normal, expected or chronic", 1: "low urgency", 2: "medium urgency",
                 3: "high urgency"}
RANK = {0: 0, -2: 1, -3: 2, -1: 3, 1: 4}
DISPLAY = {"absent": "Absent", "device": "Device", "postsurgical": "Postsurgical",
           "enlarged": "Enlarged", "atrophy": "Atrophy", "anatomy": "Anatomy", "focal": "Focal",
           "diffuse": "Diffuse", "quality": "Quality", "adjacent": "Adjacent", "normal": "Normal"}


def _has(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.I) is not None


def mentions(organ: str, sentence: str, strict: bool) -> bool:
    if strict:
        return _has(ORGAN_NAMES[organ], sentence)
    return names_organ(organ, sentence) or (organ in BROAD_ORGANS and _has(BROAD, sentence))


def _matches(t: str, sentence: str) -> list[tuple[bool, str]]:
    """(negated, text before any negation) for each keyword hit of type ``t``."""
    hits = []
    for m in re.finditer(TYPE_KEYWORDS[t], sentence, re.I):
        before = sentence[max(0, m.start() - 60):m.start()]
        negated = NEGATION.search(before) is not None
        cue = NEGATION.search(sentence)
        hits.append((negated, sentence[:cue.start()] if cue and cue.start() > m.start() else sentence))
    return hits


def names_organ(organ: str, sentence: str) -> bool:
    return _has(ORGAN_NAMES[organ], sentence) or _has(ORGAN_SYNONYMS[organ], sentence)


def certainty(organ: str, t: str, evidence: list[str]) -> tuple[int, bool]:
    """(code, from a broad-area mention) of type ``t`` for the organ, from its evidence."""
    best, broad = None, False
    for s in evidence:
        for negated, _ in _matches(t, s):
            is_broad = False
            if negated:
                code = 0
            elif not names_organ(organ, s) and _has(BROAD, s):
                code, is_broad = -3, True
            elif PRIOR.search(s) and CHANGE.search(s):
                code = -3
            elif HEDGE.search(s):
                code = -1
            else:
                code = 1
            if best is None or RANK[code] > RANK[best]:
                best, broad = code, is_broad
    return (-2, False) if best is None else (best, broad)


def finding_types(organ: str, evidence: list[str]) -> list[str]:
    chosen = [t for t in DISPLAY if certainty(organ, t, evidence)[0] in (1, -1, -3)]
    return chosen or ["normal"]


def urgency(t: str, evidence: list[str]) -> int:
    level = 0
    for s in evidence:
        for negated, unnegated in _matches(t, s):
            if negated:
                continue
            for value, pattern in URGENCY_RULES:
                if _has(pattern, unnegated):
                    level = max(level, value)
                    break
    return level


# ------------------------------------------------------------------ prompt reading

def _organ(prompt: str) -> str:
    return re.search(r"^Organ: (.+)$", prompt, re.M).group(1).strip()


def _numbered(prompt: str) -> list[str]:
    block = prompt.split("Report sentences:\n", 1)[1].split("\n\nOrgan:", 1)[0]
    return [re.sub(r"^\d+\. ", "", line) for line in block.split("\n")]


def _evidence(prompt: str) -> list[str]:
    block = re.split(r"Report sentences about the [^:\n]+:\n", prompt, maxsplit=1)[1]
    block = block.split("\n\n", 1)[0]
    return [line[2:] for line in block.split("\n") if line.startswith("- ")]


def _type(prompt: str) -> str:
    return re.search(r"^Finding type: (\w+):", prompt, re.M).group(1).lower()


def _list_answer(organ: str, numbers: list[int]) -> str:
    """The same content in the different shapes models produce."""
    style = sorted(ORGAN_NAMES).index(organ) % 5
    if not numbers:
        return "None of the sentences mention the %s." % organ if style == 1 else "Sentences: none"
    joined = ", ".join(map(str, numbers))
    if style == 0:
        return f"Sentences: {joined}"
    if style == 1:
        words = " and ".join(map(str, numbers))
        return f"The informative sentences are {words}."
    if style == 2:
        return f"Sentences: {joined}, 42"  # one number that does not exist
    if style == 3:
        return f"**Sentences:** {joined}"
    return f"[{joined}]"


def answer(request: LLMRequest) -> str:
    """The fake_responder: reasoning for CoT steps, the formatted answer otherwise."""
    prompt = next(m["content"] for m in request.messages if m["role"] == "user")
    if "ZZFAIL" in prompt:
        raise RuntimeError("simulated engine failure")  # the backend records a row error
    last = request.messages[-1]["content"]
    organ = _organ(prompt)
    if "Which sentences are informative about the" in prompt:
        sentences = _numbered(prompt)
        return _list_answer(organ, [i for i, s in enumerate(sentences, 1)
                                    if mentions(organ, s, strict=True)])
    if "Think step by step" in last:
        return (f"Considering the {organ}: each sentence is read for its medical meaning. "
                f"Based on this, my answer follows.")
    if re.search(r"Is sentence \d+ informative", prompt):
        idx = int(re.search(r"^Sentence (\d+):", prompt, re.M).group(1))
        return "yes" if mentions(organ, _numbered(prompt)[idx - 1], strict=False) else "no"
    evidence = _evidence(prompt)
    if "Which types of findings" in prompt:
        if organ == "stomach" and "could not be read" not in last:
            return "The stomach findings were explained above."  # unparseable first try
        return "Types: " + ", ".join(DISPLAY[t] for t in finding_types(organ, evidence))
    if "How does the report state a finding of type" in prompt:
        code, broad = certainty(organ, _type(prompt), evidence)
        return BROAD_LABEL if broad else CERTAINTY_LABEL[code]
    if "How urgent is the" in prompt:
        return URGENCY_LABEL[urgency(_type(prompt), evidence)]
    raise ValueError("unrecognised LEAVS prompt")
