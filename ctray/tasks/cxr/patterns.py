"""Phrase lists of the CXR rule labeler: mentions per observation and the cues.

Written from ``docs/cxr_labeling.md`` (the project's conventions, which follow the
CheXpert labeler's mention / unmention / pattern lists and say where ctray differs).
Kinds of mention:

- ``finding``: the observation itself ("cardiomegaly", "left basilar atelectasis"):
  positive unless a cue says otherwise.
- ``anatomy``: a structure whose state decides ("heart size", "mediastinal contours"):
  0 when called normal, 1 with an enlargement word, -1 when hedged or only "stable",
  nothing when merely named.
- ``sign``: signs that only suggest the observation (vascular congestion for Edema,
  blunted costophrenic angles for Pleural Effusion): -1 when affirmed, 0 when negated.
- ``clear``: "lungs are clear": 0 for the observations it names, never 1.
- ``other``: abnormalities outside the 14 that only block No Finding (CheXpert's
  ``no_finding`` list): emphysema, granuloma, degenerative changes, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ctray.tasks.cxr.context import (BACKWARD, BOTH, FORWARD, HISTORY, NEGATED, PSEUDO, STABLE,
                                     TERMINATE, UNCERTAIN, UNCERTAIN_PRE, Cue, cue)

_I = re.IGNORECASE

EC, CM, LO, LL = "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion"
ED, CO, PN, AT = "Edema", "Consolidation", "Pneumonia", "Atelectasis"
PX, PE, PO, FR, SD = ("Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                      "Support Devices")
OTHER = "other"  # blocks No Finding only


@dataclass(frozen=True)
class Term:
    observations: tuple[str, ...]
    regex: re.Pattern
    kind: str = "finding"
    # Sentence context that makes the match about something else ("calcified nodule").
    exclude: re.Pattern | None = None
    # For ``anatomy``: words that state the abnormality ("enlarged", "widened").
    abnormal: re.Pattern | None = None
    # ``exclude`` is looked for this many characters (before, after) the match (None: the
    # whole sentence), so "calcified granuloma and a left basilar opacity" keeps the opacity.
    window: tuple[int, int] | None = None
    # (match text, sentence): a match whose text fits the first pattern is dropped when the
    # sentence fits the second ("scarring" near a blunted costophrenic angle is pleural).
    context_exclude: tuple[re.Pattern, re.Pattern] | None = None

    def excluded(self, sentence: str, m: re.Match) -> bool:
        if self.context_exclude is not None:
            text_rx, sentence_rx = self.context_exclude
            if text_rx.match(m.group(0)) and sentence_rx.search(sentence):
                return True
        if self.exclude is None:
            return False
        if self.window is None:
            return bool(self.exclude.search(sentence))
        lo, hi = max(0, m.start() - self.window[0]), m.end() + self.window[1]
        return bool(self.exclude.search(sentence[lo:hi]))


def T(obs: str | tuple[str, ...], pattern: str, kind: str = "finding",
      exclude: str | None = None, abnormal: str | None = None,
      window: tuple[int, int] | None = None,
      context_exclude: tuple[str, str] | None = None) -> Term:
    observations = (obs,) if isinstance(obs, str) else obs
    return Term(observations, re.compile(pattern, _I), kind,
                re.compile(exclude, _I) if exclude else None,
                re.compile(abnormal, _I) if abnormal else None, window,
                tuple(re.compile(c, _I) for c in context_exclude) if context_exclude else None)


_ENLARGED = (r"\b(?:enlarg\w*|large|increased|cardiomegaly|widen\w*|prominen\w*|"
             r"exaggerated)\b")
_HEART_ENLARGED = r"\b(?:enlarg\w*|large|increased|exaggerated)\b"
_PROMINENT = r"\bprominen\w*\b"

TERMS: tuple[Term, ...] = (
    # --- Enlarged Cardiomediastinum ------------------------------------------------
    T(EC, r"\b(?:widen(?:ed|ing)\s+(?:of\s+the\s+)?(?:superior\s+)?mediastin\w*|"
          r"mediastinal\s+widening|enlarged\s+(?:cardio)?mediastin\w*(?:\s+(?:silhouette|"
          r"contours?))?|enlargement\s+of\s+the\s+(?:cardio)?mediastin\w*(?:\s+silhouette)?|"
          r"mediastinal\s+(?:mass|lymphadenopathy|adenopathy))"),
    T((EC, CM), r"\bcardio[-\s]?mediastinal(?:\s+(?:silhouettes?|contours?|shadows?|"
                r"structures?|size|borders?|outlines?|width))?\b|"
                r"\b(?:cardiac|heart)\s+and\s+mediastinal\s+(?:silhouettes?|contours?|"
                r"borders?|structures?)\b|\bheart\s+and\s+mediastinum\b|"
                r"\bmediastinum\s+and\s+heart\b|\bcardiac\s+and\s+mediastinal\b",
      "anatomy", abnormal=_ENLARGED),
    # bare "mediastinal" is mostly an adjective of something else (clips, lymph nodes)
    T(EC, r"\bmediastinum\b|\bmediastinal\s+(?:and\s+hilar\s+)?(?:silhouettes?|contours?|"
          r"configuration|width|structures?|shadows?|borders?|size|outlines?)\b|"
          r"\bpericardial\s+silhouette\b",
      "anatomy", exclude=r"\bpneumomediastinum\b", abnormal=r"\b(?:enlarg\w*|widen\w*|"
      r"prominen\w*|wide)\b"),
    # --- Cardiomegaly ----------------------------------------------------------------
    T(CM, r"\bcardiomegaly\b|\bcardiac\s+enlargement\b|\benlarged\s+(?:heart|cardiac\s+"
          r"(?:silhouette|shadow|size|contours?))\b|\benlargement\s+of\s+the\s+(?:heart|"
          r"cardiac\s+(?:silhouette|shadow))\b|\bcardiomegalic\b"),
    T(CM, r"\b(?:heart|cardiac)\s+(?:size|silhouette|shadow|contours?|diameter|borders?|"
          r"dimensions?)\b|\bheart\b",
      "anatomy", exclude=r"\bheart\s+failure\b", abnormal=_HEART_ENLARGED + "|" + _PROMINENT),
    # --- Lung Opacity (own mentions; children propagate in rules.py) ----------------
    T(LO, r"\bopaci(?:ty|ties|fication|fied)\b|\bincreased\s+(?:density|densities|"
          r"opacity|markings)\b|\bdensit(?:y|ies)\b|\bair[-\s]?space\s+(?:disease|process|"
          r"opacit\w+|filling)\b|\binfiltrat(?:e|es|ion|ive)\b|\binterstitial\s+(?:markings|"
          r"pattern|opacities|changes|prominence|thickening|disease|lung\s+disease)\b|"
          r"\breticul(?:ar|onodular|ation)\b|\b(?:parenchymal\s+)?scar(?:s|ring|red)?\b|"
          r"\bfibrotic\s+changes\b|\b(?:pulmonary|interstitial|lung)\s+fibrosis\b|"
          r"\bperibronchial\s+thickening\b|\bbronchial\s+wall\s+thickening\b|\bhaz(?:iness|y)\b",
      exclude=r"\bnipple\s+shadows?\b|\bpleural(?:[-\s]parenchymal)?\s+scar|"
              r"\bpleuroparenchymal\s+scar|\bbone\s+density|\bsoft\s+tissue\s+densit|"
              r"\bcalcified\s+(?:granuloma|nodul)|\b(?:bi)?apical\s+(?:pleural\s+)?scar|"
              r"\bcalcifi\w*\s+densit|\bdensit\w*[^.;]{0,50}\bgranulom|\bsubsternal\s+densit|"
              r"\bdensit\w*\s+(?:over|overlying)\s+the\s+heart", window=(25, 60),
      context_exclude=(r"(?:parenchymal\s+)?scar", r"\bblunt\w*\b[^.;]*\bscar")),
    # --- Lung Lesion -------------------------------------------------------------------
    T(LL, r"\bmass(?:es)?\b|\bnodul(?:e|es|ar\s+(?:density|densities|opacity|opacities|"
          r"lesions?))\b|\blump\b|\bcavitary\s+lesions?\b|\bcavitation\b|\bcarcinoma\b|"
          r"\bneoplasm\w*\b|\btumou?rs?\b|\blung\s+lesions?\b|\bpulmonary\s+lesions?\b|"
          r"\b(?:pulmonary|lung)\s+metasta\w+\b|\bmetastatic\s+nodul\w+\b",
      exclude=r"\bcalcified\s+(?:\w+\s+)?nodul|\bnodul\w*\s+calcif|\bgranulom|"
              r"\b(?:consistent|compatible)\s+with\s+(?:an?\s+|the\s+)?(?:\w+\s+)?nipple|"
              r"\brepresents\s+(?:an?\s+|the\s+)?(?:\w+\s+)?nipple|\bnipple\s+markers?|"
              r"\bmediastinal\s+mass|\bsoft\s+tissue\s+mass|\bbreast\s+mass|\bmass\s+effect"),
    # --- Edema ---------------------------------------------------------------------------
    T(ED, r"\bedema\b|\bedematous\b|\bchf\b|\b(?:congestive\s+)?heart\s+failure\b|"
          r"\bfluid\s+overload\b"),
    T(ED, r"\b(?:pulmonary\s+)?vascular\s+(?:congestion|prominence|engorgement)\b|"
          r"\bpulmonary\s+(?:venous\s+)?congestion\b|\bcongestion\b|\bcephalization\b|"
          r"\bindistinct(?:ness)?\s+(?:of\s+the\s+)?(?:pulmonary\s+)?(?:vessels|vasculature|"
          r"vascular\w*)\b|\bvascular\s+indistinctness\b|\bprominen\w*\s+(?:of\s+the\s+)?(?:pulmonary\s+)?"
          r"(?:vasculature|vascular\s+markings)\b|"
          r"\bvascular\s+(?:crowding|redistribution)\b",
      "sign"),
    # --- Consolidation / Pneumonia / Atelectasis ------------------------------------------
    T(CO, r"\bconsolidat\w*\b"),
    T(PN, r"\b(?:broncho)?pneumonias?\b|\binfections?\b|\binfectious\b|\bpneumonitis\b",
      exclude=r"\bgranulomatous\s+(?:infection|disease|process)|\b(?:prior|old|previous|remote|"
              r"healed)\s+(?:\w+\s+)?(?:granulomatous\s+)?infection"),
    T(AT, r"\batelecta\w+\b|\bcollapse[ds]?\b",
      exclude=r"\b(?:vertebra\w*|vertebral\s+body|spine|spinal|T\d+|L\d+)\b[^.]{0,20}collapse|"
              r"collapse[ds]?\b[^.]{0,25}\b(?:vertebra\w*|vertebral|spine|T\d+|L\d+)\b"),
    # --- Pleura ---------------------------------------------------------------------------
    T((PX, PE), r"\bhydro-?pneumothora\w+\b"),
    T(PX, r"\bpneumothora(?:x|ces)\b"),
    T(PE, r"\beffusions?\b|\bpleural\s+fluid\b|\bfluid\s+(?:in|within|tracking\s+into)\s+"
          r"the\s+(?:\w+\s+){0,2}fissures?\b|\bfissural\s+fluid\b|\bhydrothorax\b",
      exclude=r"\bpericardial\s+effusion|\bjoint\s+effusion"),
    T(PE, r"\bblunt(?:ing|ed)\b[^.;]{0,40}\bcosto-?phrenic\b|\bcosto-?phrenic\s+(?:angles?\s+|"
          r"sulcus\s+|recess\s+)?(?:are\s+|is\s+)?blunt\w*\b|\bblunt(?:ing|ed)\b",
      "sign", exclude=r"\bblunt[^.;]*\b(?:scar\w*|pleural\s+thickening)\b"),
    T(PO, r"\bpleural\s+(?:thickening|plaques?|calcifications?|scar\w*|fibrosis|"
          r"reaction|based\s+(?:density|opacity|thickening))\b|\bcalcified\s+pleural\s+"
          r"plaques?\b|\bpleural[-\s]parenchymal\s+(?:scar\w*|thickening|changes)\b|"
          r"\bpleuroparenchymal\s+(?:scar\w*|thickening|changes|opacit\w+)\b|"
          r"\b(?:bi)?apical\s+(?:pleural\s+)?(?:capping|thickening|scar\w*|fibrosis)\b|"
          r"\bpleural\s+capping\b|\bfibrothorax\b"),
    # --- Fracture ---------------------------------------------------------------------------
    T(FR, r"\bfractur\w*\b|\b(?:compression|wedge)\s+(?:\w+\s+){0,2}deformit\w*\b"),
    # --- Support Devices ----------------------------------------------------------------------
    T(SD, r"\bpace(?:maker|r)s?\b|\ba?icd\b|\bdefibrillator\w*\b|\bleads?\b(?!\s+to\b)|"
          r"\b(?:central|venous|picc|arterial|dialysis|ij|subclavian|jugular|femoral|"
          r"swan[-\s]ganz)\s+(?:venous\s+)?(?:lines?|catheters?)\b|\bpicc\b|"
          r"\bport(?:-a-cath|acath|a\s+cath)?s?\b(?!ion|able|al)|\bmediport\b|\bcatheters?\b|"
          r"\b(?:endotracheal|tracheostomy|trach|nasogastric|orogastric|ng|og|et|feeding|"
          r"chest|enteric|gastric|dobhoff|thoracostomy)\s+tubes?\b|\btubes?\b|"
          r"\btracheostomy\b|\bdrains?\b|\bstents?\b|\bcoils?\b|\b(?:prosthetic|mechanical|"
          r"bioprosthetic)\s+(?:\w+\s+)?valves?\b|\bvalve\s+(?:replacement|prosthesis)\b|"
          r"\b(?:avr|mvr|tavr|tavi)\b|\bhardware\b|\bscrews?\b|\bplates?\b(?![-\s]like)|\brods?\b|"
          r"\barthroplast\w*\b|\bfixation\b|\bprosthes[ie]s\b|\bdevices?\b|\bshunt\b|"
          r"\bloop\s+recorder\b|\bgenerator\b|\belectrodes?\b|\bimpella\b|\blvad\b|"
          r"\bballoon\s+pump\b|\biabp\b|\bsurgical\s+(?:anchors?|hardware)\b",
      exclude=r"\bnipple\s+markers?\b|\btube\s+(?:current|voltage)\b|\bskin\s+folds?\b|"
              r"\bbreast\s+(?:prosthes|implant)"),
    # --- "lungs are clear" ---------------------------------------------------------------------
    T((LO, CO, ED, PN),
      r"\b(?:lungs?|lung\s+fields?)\s+(?:are\s+|is\s+|remain\s+|appear\s+|now\s+)*"
      r"(?:otherwise\s+|grossly\s+|essentially\s+|both\s+|bilaterally\s+|again\s+)*clear\b|"
      r"\bclear\s+(?:right\s+|left\s+)?lungs?\b|\blungs?\s+(?:[\w-]+\s+){0,4}clear\b",
      "clear"),
    # --- other abnormalities: block No Finding only (CheXpert's no_finding list) ---------------
    T(OTHER, r"\bemphysema\w*\b|\bcopd\b|\bhyper-?(?:inflat|expan|aerat|lucen)\w*\b|"
             r"\bbullae\b|\bbullous\b|\belevat\w+\s+(?:of\s+the\s+)?(?:\w+\s+)?"
             r"(?:hemi-?)?diaphragm\w*\b|\b(?:hemi-?)?diaphragm\w*\s+(?:is\s+|are\s+)?"
             r"(?:\w+\s+)?elevat\w*\b|\beventration\b|\b\w*scolio\w+\b|"
             r"\b(?:dextro|levo)?[-\s]?curvature\b|\bkyphos\w+\b|"
             r"\bkyphotic\b|\bdegenerat\w+\b|\bosteophyt\w*\b|\bspondylo\w+\b|"
             r"\barthropath\w*\b|\bgranulom\w*\b|\bcalcified\s+(?:\w+\s+)?nodul\w*\b|"
             r"\bcalcif\w+\b(?=[^.]{0,30}\b(?:aort\w*|lymph|node|hil\w*|knob|arch)\b)|"
             r"\b(?:aort\w*|arch|knob)\b[^.]{0,20}\bcalcif\w+\b|\batheroscl\w+\b|"
             r"\btortu\w+\b|\bectatic\b|\bectasia\b|\bunfold\w*\b|\bhiatal\s+hernia\b|"
             r"\bhernia\b|\bbronchitis\b|\bbronchiolitis\b|\bairways?\s+disease\b|"
             r"\bperibronchial\s+cuffing\b|\baspiration\b|\bcontusion\b|\bosteopeni\w*\b|"
             r"\bmetasta\w+\b|\bpneumomediastinum\b|\bpneumoperitoneum\b|\bpulmonary\s+"
             r"(?:arterial\s+)?hypertension\b|\benlarged\s+pulmonary\s+arter\w+\b|"
             r"\bprominen\w*\s+(?:\w+\s+)?hil(?:a|um|ar)\b|\bhil(?:a|um|ar)\s+(?:\w+\s+){0,2}"
             r"(?:are\s+|is\s+)?prominen\w*\b|\bvolume\s+loss\b|\bdeformit\w*\b|"
             r"\bhemorrhage\b|\bhematoma\b|\bforeign\s+body\b|\bchronic\s+changes\b|"
             r"\bpost-?inflammatory\b|\bcalcified\s+(?:\w+\s+)?(?:lymph\s+)?nodes?\b|"
             r"\bhyperdistention\b|\bflattening\s+of\s+the\s+(?:\w+\s+)?diaphragm\w*\b|"
             r"\bflattened\s+(?:\w+\s+)?diaphragm\w*\b|\blymphadenopathy\b|\badenopathy\b|"
             r"\bcardiac\s+aneurysm\b|\bepicardial\s+fat\b"),
)

# ---------------------------------------------------------------------------------- cues

_NEG_STOP = r"\bwith\b|\balthough\b"

CUES: tuple[Cue, ...] = (
    # pre-negation uncertainty: beats negation (CheXpert), incl. "no new X" (conventions §3)
    cue(UNCERTAIN_PRE, r"\b(?:cannot|can\s*not|can't|could\s+not|not|may\s+not)\s+(?:be\s+)?"
                       r"(?:entirely\s+|completely\s+|totally\s+|definitely\s+)?"
                       r"(?:excluded|exclude|ruled\s+out|rule\s+out)\b", BOTH, 8),
    cue(UNCERTAIN_PRE, r"\bno\s+evidence\s+to\s+rule\s+out\b|\bdifficult\s+to\s+(?:exclude|"
                       r"rule\s+out)\b|\bnot\s+(?:be\s+)?(?:entirely\s+)?excluded\b", BOTH, 8),
    cue(UNCERTAIN_PRE, r"\bno\s+(?:definite\s+|significant\s+|large\s+|other\s+|obvious\s+)?"
                       r"new\b|\bwithout\s+(?:\w+\s+)?new\b", FORWARD, 8),
    # negation
    cue(NEGATED, r"\bno\b|\bnone\b|\bwithout\b|\bnegative\s+for\b|\bfree\s+of\b|"
                 r"\babsence\s+of\b|\bthere\s+(?:is|are)\s+no\b|\brather\s+than\b|"
                 r"\bnor\b|\bneither\b|\bclear\s+of\b", FORWARD, 12,
        stop=r"\bwith\s+(?:a|an|mild|small|moderate|large|minimal|slight|some)\b"),
    cue(NEGATED, r"\bnot\b|\bno\s+longer\b", BOTH, 5, stop_at_comma=True),
    cue(NEGATED, r"\b(?:is|are|has\s+been|have\s+been|was|were)\s+absent\b|\babsent\b|"
                 r"\bhas\s+(?:since\s+)?(?:resolved|cleared)\b|\bhave\s+(?:since\s+)?"
                 r"(?:resolved|cleared)\b|\bresolved\b|\bresolution\s+of\b|\bclearing\s+of\b|"
                 r"\bcleared\b|\b(?:has|have)\s+been\s+removed\b|\bremoved\b|"
                 r"\bremoval\s+of\b", BOTH, 6, stop_at_comma=True),
    cue(NEGATED, r"\b(?:within|at|upper)\s+(?:the\s+)?(?:upper\s+)?(?:limits?|range)\s+of\s+"
                 r"normal\b|\bwithin\s+normal\s+(?:limits|range)\b|\bwnl\b|\btop(?:[-\s]of)?"
                 r"[-\s]normal\b|\bhigh[-\s]normal\b|\bnormal\b|\bunremarkable\b|"
                 r"\bnot\s+(?:enlarged|widened)\b|\bnormal(?:ly)?\s+sized?\b",
        BOTH, 6, stop_at_comma=True, stop=_NEG_STOP),
    # post-negation uncertainty (hedges). A hedge word reaches forward ("possible
    # effusion", "opacity may represent atelectasis": the opacity itself is stated);
    # after a copula it also reaches back ("effusion is possible", "may be present").
    cue(UNCERTAIN, r"\b(?:may|might|could|would|can)\s+(?:\w+\s+)?(?:represent|reflect|"
                   r"indicate|relate|include|suggest|account)\w*\b|\bmay\b|\bmight\b|\bcould\b",
        FORWARD, 8, stop_at_comma=True),
    cue(UNCERTAIN, r"\b(?:may|might|could|would)\s+(?:also\s+|still\s+)?be\b|\b(?:is|are|was|"
                   r"were|be|been|appears?|seems?)\s+(?:most\s+|more\s+|less\s+|also\s+|"
                   r"very\s+|quite\s+)?(?:likely|possible|probable|suspected|questionable|"
                   r"favou?red|considered|suggested|uncertain|equivocal|borderline|"
                   r"questioned)\b|\bborderline\b|\bequivocal\b|\bobscur\w+\b|\bindeterminate\b|"
                   r"\?|\bnot\s+(?:well\s+)?(?:seen|evaluated|assessed|visualized)\s+well\b|"
                   r"\bnot\s+well\s+(?:seen|evaluated|assessed|visualized|demonstrated)\b|"
                   r"\bpoorly\s+(?:evaluated|seen|assessed|visualized)\b|\b(?:cannot|unable\s+to|"
                   r"difficult\s+to)\s+(?:assess|evaluate)\b|\blimited\s+(?:assessment|evaluation)\s+"
                   r"of\b|\bcannot\s+be\s+"
                   r"(?:assessed|evaluated|differentiated|distinguished)\b|\bdifficult\s+to\s+"
                   r"(?:assess|evaluate)\b|\bnot\s+(?:be\s+)?(?:assessed|evaluated)\b",
        BOTH, 8, stop_at_comma=True),
    cue(UNCERTAIN, r"\bpossib(?:le|ly|ility)\b|\bprobab(?:le|ly)\b|\b(?:most\s+|more\s+|"
                   r"less\s+)?likely\b|\bpresum(?:ably|ed)\b|\bquestionabl[ey]\b|"
                   r"\bquestion\s+of\b|\bsuspect(?:ed|s)?\b|\bsuspicious\s+(?:for|of)\b|"
                   r"\bsuspicion\s+(?:for|of)\b|\bconcern(?:ing)?\s+for\b|\bworrisome\s+for\b|"
                   r"\bsuggest(?:s|ed|ing|ive\s+of|ive)?\b|\bdifferential\b|\bcorrelate\b|"
                   r"\bcorrelation\b|\bconsider(?:ed)?\b|\bfavou?r(?:ed|s)?\b|\bthought\s+to\s+"
                   r"(?:be|represent)\b|\bquestioned\b|\bmost\s+xxxx\b|\bcompatible\s+with\s+(?=\w+\s+or\b)",
        FORWARD, 8, stop_at_comma=True),
    # "nodular opacity may represent a nipple shadow": the finding itself is in doubt
    cue(UNCERTAIN, r"\b(?:may|might|could|likely|probably|possibly)\s+(?:\w+\s+)?(?:represent|be|"
                   r"reflect)\s+(?:an?\s+|the\s+)?(?:\w+\s+)?(?:nipple|artifact|overlap\w*|"
                   r"superimpos\w*|summation|vessels?|vascular\w*|vasculature|tortuous)", BACKWARD, 6,
        stop_at_comma=True),
    cue(UNCERTAIN, r"\bor\b", BOTH, 2, stop_at_comma=True),
    # alternatives reach only the neighbouring words: "opacity due to atelectasis and/or
    # scarring" states the opacity
    cue(UNCERTAIN, r"\bversus\b|\bvs\.?|\band/or\b", BOTH, 3, stop_at_comma=True),
    # a differential list runs over commas: "differential includes infection, edema, ..."
    cue(UNCERTAIN, r"\bdifferential\s+(?:diagnos[ie]s\s+|considerations?\s+)?(?:includes?|including|"
                   r"of|would\s+include|is)\b|\bconsiderations\s+include\b", FORWARD, 20),
    # clinical question / history: mentions in scope are not findings
    cue(HISTORY, r"\bif\s+(?:there\s+is\s+)?(?:\w+\s+){0,2}concern\s+for\b|\bhistory\s+of\b|"
                 r"\bh/o\b|\bevaluate\s+for\b|\bevaluation\s+for\b|\b(?:to\s+)?rule\s+out\b|"
                 r"\br/o\b|\bassess\s+for\b|\bstatus\s+post\b|\bs/p\b", FORWARD, 4,
        stop_at_comma=True),
    # disclaimers ("fractures may not be demonstrated on radiographs") state nothing
    cue(HISTORY, r"\bplease\s+note\b|\b(?:may|might|can|could)\s+not\s+be\s+(?:demonstrated|"
                 r"seen|visualized|detected|apparent|evident)\b|\bis\s+insensitive\b", BOTH, 8),
    # "stable / unchanged": uncertainty for a bare anatomy mention only (CheXpert rule)
    cue(STABLE, r"\bstable\b|\bunchanged\b|\bsimilar\b|\bno\s+(?:significant\s+|interval\s+)?"
                r"change\b|\bnot\s+(?:significantly\s+)?changed\b|\bpersistent\b|"
                r"\bagain\s+(?:seen|noted)\b|\bremains?\b", BOTH, 8, stop_at_comma=True),
    # pseudo-cues: look like cues, are not
    cue(PSEUDO, r"\bno\s+(?:significant\s+|interval\s+|appreciable\s+|substantial\s+)?"
                r"(?:change|increase|decrease|progression|worsening|improvement|growth)s?\b|"
                r"\bnot\s+(?:significantly\s+)?(?:changed|increased|decreased|progressed)\b|"
                r"\bwithout\s+(?:significant\s+|interval\s+)?(?:change|increase|progression)\b|"
                r"\bnear(?:ly)?[-\s]complete(?:ly)?\s+resol\w+\b|\bpartial(?:ly)?\s+resol\w+\b|"
                r"\bnot\s+only\b|\bno\s+doubt\b|\bgram[-\s]negative\b|"
                r"\bnormal\s+(?:variant|aging|for\s+age)\b|\bage[-\s]indeterminate\b|"
                r"\bindeterminate\s+(?:age|chronicity)\b|\bno\s+significant\s+interval\s+change\b",
        BOTH, 0),
    # scope terminators
    cue(TERMINATE, r"[;:]|\b(?:shows?|showed|demonstrates?|demonstrated|reveals?|revealed)\b|"
                   r"\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhereas\b|\bexcept\b|"
                   r"\baside\s+from\b|\bapart\s+from\b|\bwhich\b|\bwho\b|\bthere\s+(?:is|are|was|"
                   r"were|has\s+been|have\s+been)\b(?!\s+no\b)|\bnow\s+(?:seen|noted|present)\b|"
                   r"\b(?:is|are)\s+(?:again\s+|also\s+|now\s+)?(?:seen|noted|present|"
                   r"identified|demonstrated|visualized|enlarged)\b(?!\s+(?:to\s+be\s+)?"
                   r"(?:normal|unremarkable))|,\s+and\s+(?=(?:the|a|an|there|mild|small|"
                   r"moderate|large)\b)", BOTH, 0),
)

# "is seen" after a negated list confirms the negation ("No effusion is seen"), so the
# affirmative-verb terminator above only matters between a cue and a later mention.
