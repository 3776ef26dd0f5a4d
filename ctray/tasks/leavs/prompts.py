"""LEAVS questions: prompt texts, answer options and their release codes.

Every prompt puts the instructions (identical for every row of a stage) first and
the report text after them, and the part that varies fastest (organ, sentence,
finding type) last. An engine with prefix caching (vLLM) then computes the
instructions once per stage, and the report or organ sentences once for all the
questions asked about them.

The chain-of-thought variant asks for step-by-step reasoning in a first request
and, in a second request that continues the same conversation, for a short
answer restricted to the options (guided choice where the backend has it).
"""

from __future__ import annotations

import json

from ctray.llm.prompts import PromptTemplate
from ctray.tasks.leavs import schema

SYSTEM = (
    "You are an experienced abdominal radiologist who turns CT reports into structured "
    "labels. Consider every piece of information you are given, and base each answer "
    "only on what the report says."
)

# Display name and definition of each finding type, in the order the paper lists them.
TYPE_DEFINITIONS: dict[str, tuple[str, str]] = {
    "absent": ("Absent", "the organ is not present, for example removed by surgery or "
                         "congenitally missing"),
    "device": ("Device", "a support or medical device (stent, catheter, drain, tube) is in "
                         "or on the organ"),
    "postsurgical": ("Postsurgical", "the organ shows changes from a previous operation "
                                     "(resection, anastomosis, surgical clips)"),
    "enlarged": ("Enlarged", "the organ is larger than normal, or a hollow organ is dilated"),
    "atrophy": ("Atrophy", "the organ is smaller than normal or has atrophied"),
    "anatomy": ("Anatomy", "the organ has an uncommon position, displacement, relation to "
                           "neighbouring structures, or shape"),
    "focal": ("Focal", "a finding in the organ whose size could be measured from its "
                       "borders (lesion, mass, cyst, nodule, stone)"),
    "diffuse": ("Diffuse", "a finding in the organ without a well-defined border or shape "
                           "to measure, or one affecting large regions of it (fatty "
                           "infiltration, cirrhosis, wall thickening, inflammation)"),
    "quality": ("Quality", "a statement about how well the organ could be imaged "
                           "(artifacts, motion, contrast timing, limited evaluation)"),
    "adjacent": ("Adjacent", "a finding outside the organ but next to it (fluid, fat "
                             "stranding, or a mass of a neighbouring structure)"),
    "normal": ("Normal", "the organ is described as normal"),
}
assert set(TYPE_DEFINITIONS) == set(schema.FINDING_TYPES)

# Uncertainty options (paper, Sec. 2) -> release certainty codes (schema.Certainty).
# "Possible" is the radiologist being unsure (-1); comparison ambiguity and
# broad-area mentions share -3, as in the release's code book.
CERTAINTY_OPTIONS: dict[str, tuple[int, str]] = {
    "mentioned as possible": (
        schema.Certainty.UNCERTAIN,
        "the report considers the finding possible or probable, or cannot exclude it"),
    "stated as present": (schema.Certainty.PRESENT, "the report states that the finding is there"),
    "stated as absent or very unlikely": (
        schema.Certainty.ABSENT, "the report rules the finding out or calls it very unlikely"),
    "not directly mentioned": (
        schema.Certainty.NOT_MENTIONED, "the report says nothing directly about such a finding"),
    "ambiguous comparison with a prior report": (
        schema.Certainty.AMBIGUOUS,
        "the report compares with an earlier study in words that leave unclear whether the "
        "finding is present now"),
    "mentioned only for a broad area": (
        schema.Certainty.AMBIGUOUS,
        "the finding is described for a larger region (such as the abdomen) without saying "
        "whether this organ is involved"),
}
CERTAINTY_ALIASES: dict[str, int] = {
    "possible": -1, "probable": -1, "uncertain": -1, "present": 1, "positive": 1,
    "absent": 0, "negative": 0, "unlikely": 0, "not present": 0, "ruled out": 0, "not mentioned": -2, "ambiguous": -3,
    "broad area": -3, "broad": -3,
}

URGENCY_OPTIONS: dict[str, tuple[int, str]] = {
    "normal, expected or chronic": (schema.Urgency.NORMAL, "no action is needed"),
    "low urgency": (schema.Urgency.LOW, "it could cause problems in the future"),
    "medium urgency": (schema.Urgency.MEDIUM, "it requires treatment"),
    "high urgency": (schema.Urgency.HIGH, "it requires immediate treatment"),
}
URGENCY_ALIASES: dict[str, int] = {"normal": 0, "expected": 0, "chronic": 0, "none": 0,
                                   "low": 1, "medium": 2, "moderate": 2, "high": 3}

YES_NO: dict[str, bool] = {"yes": True, "no": False}

COT = ("Think step by step. First explain the medical meaning of each sentence for the "
       "{organ}, then give your answer.")

# ------------------------------------------------------------------ stage 1a: list

LIST_SENTENCES = PromptTemplate(
    name="leavs-filter-list",
    system=SYSTEM,
    user=(
        "You will see the numbered sentences of an abdominal CT report and then the name "
        "of one organ. Find every sentence that is informative about that organ: a finding "
        "in it, its normal appearance, its absence or removal, a device in it, how well it "
        "was imaged, or a finding right next to it. Sentences about several organs at once "
        "count too. Answer on one line that starts with \"Sentences:\" followed by the "
        "sentence numbers separated by commas, or \"Sentences: none\".\n\n"
        "Report sentences:\n{numbered_sentences}\n\n"
        "Organ: {organ}\n"
        "Which sentences are informative about the {organ}?"
    ),
)

# ------------------------------------------------------------ stage 1b: check one

_CHECK_BODY = (
    "You will see the numbered sentences of an abdominal CT report, the name of one organ "
    "and one sentence of the report. Decide whether that sentence is informative about the "
    "organ: whether it tells anything about a finding in it, its normal appearance, its "
    "absence or removal, a device in it, how well it was imaged, or a finding right next "
    "to it, including statements about several organs at once.\n\n"
    "Report sentences:\n{numbered_sentences}\n\n"
    "Organ: {organ}\n"
    "Sentence {sentence_number}: \"{sentence}\"\n"
    "Is sentence {sentence_number} informative about the {organ}?"
)
CHECK_SENTENCE = PromptTemplate(name="leavs-filter-check", system=SYSTEM, user=_CHECK_BODY)
CHECK_SUMMARY = PromptTemplate(
    name="leavs-filter-check-summary",
    user="Summarise your answer: is sentence {sentence_number} informative about the "
         "{organ}? Reply with yes or no only.")
CHECK_DIRECT = "Reply with yes or no only."

# ------------------------------------------------------------ stage 2: types


def _type_list() -> str:
    order = ("absent", "device", "postsurgical", "enlarged", "atrophy", "anatomy", "focal",
             "diffuse", "quality", "adjacent", "normal")
    return "\n".join(f"- {TYPE_DEFINITIONS[t][0]}: {TYPE_DEFINITIONS[t][1]}." for t in order)


TYPE_NAMES_LINE = ", ".join(TYPE_DEFINITIONS[t][0] for t in (
    "absent", "device", "postsurgical", "enlarged", "atrophy", "anatomy", "focal",
    "diffuse", "quality", "adjacent", "normal"))

FINDING_TYPES_Q = PromptTemplate(
    name="leavs-finding-types",
    system=SYSTEM,
    user=(
        "You will see the sentences of an abdominal CT report that concern one organ. "
        "Decide which types of findings the report describes for that organ. The types "
        "are:\n" + _type_list() + "\n"
        "Every finding has exactly one type, but the organ can have several findings and "
        "so several types. Findings mentioned as possible count; findings the report "
        "rules out do not.\n\n"
        "Organ: {organ}\n"
        "Report sentences about the {organ}:\n{evidence}\n\n"
        "Which types of findings does the report describe for the {organ}?"
    ),
)
TYPES_SUMMARY = PromptTemplate(
    name="leavs-finding-types-summary",
    user="Summarise your answer as one line that starts with \"Types:\" followed by the "
         "chosen types separated by commas, using only these names: " + TYPE_NAMES_LINE + ".")
TYPES_DIRECT = ("Answer with one line that starts with \"Types:\" followed by the chosen "
                "types separated by commas, using only these names: " + TYPE_NAMES_LINE + ".")

# ------------------------------------------------------------ stage 3: certainty

CERTAINTY_Q = PromptTemplate(
    name="leavs-certainty",
    system=SYSTEM,
    user=(
        "You will see the sentences of an abdominal CT report that concern one organ, and "
        "one type of finding. Decide how the report states a finding of that type in that "
        "organ. The options are:\n"
        + "\n".join(f"- {k}: {v[1]}." for k, v in CERTAINTY_OPTIONS.items()) + "\n\n"
        "Organ: {organ}\n"
        "Report sentences about the {organ}:\n{evidence}\n\n"
        "Finding type: {type_name}: {type_definition}.\n"
        "How does the report state a finding of type {type_name} in the {organ}?"
    ),
)
CERTAINTY_SUMMARY = PromptTemplate(
    name="leavs-certainty-summary",
    user="Summarise your answer with exactly one of these options: "
         + "; ".join(CERTAINTY_OPTIONS) + ".")
CERTAINTY_DIRECT = "Answer with exactly one of these options: " + "; ".join(CERTAINTY_OPTIONS) + "."

# ------------------------------------------------------------ stage 4: urgency

URGENCY_Q = PromptTemplate(
    name="leavs-urgency",
    system=SYSTEM,
    user=(
        "You will see the sentences of an abdominal CT report that concern one organ, and "
        "one finding in that organ. Rate how urgent the finding is:\n"
        + "\n".join(f"- {k}: {v[1]}." for k, v in URGENCY_OPTIONS.items()) + "\n\n"
        "Organ: {organ}\n"
        "Report sentences about the {organ}:\n{evidence}\n\n"
        "Finding type: {type_name}: {type_definition}. The report has it {certainty_phrase}.\n"
        "How urgent is the {type_name} finding in the {organ}?"
    ),
)
URGENCY_SUMMARY = PromptTemplate(
    name="leavs-urgency-summary",
    user="Summarise your answer with exactly one of these options: "
         + "; ".join(URGENCY_OPTIONS) + ".")
URGENCY_DIRECT = "Answer with exactly one of these options: " + "; ".join(URGENCY_OPTIONS) + "."

CERTAINTY_PHRASES = {1: "stated as present", -1: "mentioned as possible"}


def numbered(sentences: list[str]) -> str:
    return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, start=1))


def bulleted(sentences: list[str]) -> str:
    return "\n".join(f"- {s}" for s in sentences)


def loads_list(value) -> list:
    """JSON-encoded list column -> list (Parquet-safe storage of variable-length lists)."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    return json.loads(value) if isinstance(value, str) else list(value)
