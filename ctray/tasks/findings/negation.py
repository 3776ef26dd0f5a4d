"""Clause splitting and negation scope for English and Japanese report sentences.

English negation is scoped to the clause: a cue before the mention ("no",
"without", "neither/nor") reaches forward over lists ("No pleural or pericardial
effusion") but stops at contrast words and affirmative predicates; after the
mention, the first predicate decides ("Pleural effusion-thickening was not
detected" vs "Pleural effusion is observed ..., pneumothorax was not detected").
Japanese puts negation after the noun ("胸水は認めない", "リンパ節腫大なし"), so the
text between a mention and the end of its clause decides.
"""

from __future__ import annotations

import re

_I = re.IGNORECASE

# --- English -------------------------------------------------------------------------

# Split a sentence into clauses at semicolons/colons, contrast words and ", and there".
_EN_CLAUSE = re.compile(
    r"\s*[;:](?!\d)\s*|,?\s+\b(?:but|however|whereas|although|though)\b\s*|,\s+while\s+|"
    r",\s*(?:and\s+)?(?=there\s+(?:is|are|was|were)\b)|,\s+and\s+(?=(?:no|a|an)\b)|"
    r",\s+(?:apart\s+from|except\s+for)\s+",
    _I)

_EN_PRE_CUE = re.compile(
    r"\b(?:no|without|neither|nor|absence\s+of|free\s+of|negative\s+for|not)\b", _I)
# "no significant change in the size of the nodule" says nothing against the nodule.
_EN_PSEUDO_AFTER_NO = re.compile(
    r"\s*(?:(?:significant|marked|obvious|evident|apparent|remarkable|prominent|interval|"
    r"major|new)\s+)?(?:change|difference|progression|regression|increase|decrease|growth|"
    r"development|doubt)s?\b", _I)
_EN_SCOPE_BREAK = re.compile(
    r"[;:]|\b(?:but|however|except|apart\s+from|other\s+than|besides|although|though|whereas|"
    r"while|which|who|whose|yet)\b|\bthere\s+(?:is|are|was|were)\b(?!\s+no\b)", _I)
_EN_AFFIRM = re.compile(
    r"\b(?:is|are|was|were|has\s+been|have\s+been|had\s+been)\s+"
    r"(?:also\s+|again\s+|still\s+|now\s+|"
    r"newly\s+|clearly\s+|additionally\s+)?(?:observed|seen|noted|detected|present|identified|"
    r"found|evident|visible|monitored|considered|evaluated|thought|suggested|increased|enlarged|"
    r"prominent|described|measured|remarkable|noteworthy|compatible|consistent|accompanied|"
    r"located|concerning|suspicious)\b|\bthere\s+(?:is|are|was|were)\b(?!\s+no\b)", _I)
_EN_POST_NEG = re.compile(
    r"^\s*-\s*no\b|"
    r"\b(?:is|are|was|were|has\s+been|have\s+been|had\s+been|could\s+be|can\s+be|will\s+be)\s+"
    r"(?:\w+\s+)?not\b|"
    r"\bnot\s+(?:been\s+)?(?:detected|observed|seen|identified|present|found|noted|visualized|"
    r"evident|visible|demonstrated|appreciated|enlarged|increased|pathologic\w*)\b|"
    r"\b(?:do|does|did)\s+not\b|\b(?:cannot|could\s+not)\s+be\s+(?:detected|observed|seen)\b|"
    r"\b(?:is|are|was|were)\s+(?:within\s+normal\s+limits|normal|natural|unremarkable|absent|"
    r"negative)\b|\babsent\b|\b(?:has|have|had)\s+(?:completely\s+)?(?:disappeared|resolved)\b|"
    r"\bno\s+longer\b|\bruled\s+out\b|\b(?:shows?|showed|with)\s+(?:complete|total)\s+"
    r"(?:resolution|regression|disappearance)\b|"
    r"\bcompletely\s+(?:resolved|regressed|disappeared)\b",
    _I)
# "a nodule that was not present in the previous examination" is a new, present nodule.
_EN_POST_PSEUDO = re.compile(
    r"\bnot\s+(?:\w+\s+)?(?:in|on|at)\s+(?:the\s+)?(?:previous|prior|former|earlier|last)\b|"
    r"\bnot\s+(?:present|seen|observed|detected)\s+(?:before|previously)\b|"
    r"\bnot\s+(?:change|changed|differ\w*)\b|\bdid\s+not\s+(?:change|differ)\b|"
    r"\bnot\s+(?:been\s+)?(?:evaluated|assessed)\b", _I)
_EN_INNER_NEG = re.compile(r"\b(?:not|no|without)\b", _I)
_MAX_PRE_WORDS = 15


def split_clauses_en(sentence: str) -> list[str]:
    return [c for c in _EN_CLAUSE.split(sentence) if c and c.strip()]


def _pre_negated_en(clause: str, start: int) -> bool:
    before = clause[:start]
    for cue in reversed(list(_EN_PRE_CUE.finditer(before))):
        between = before[cue.end():]
        word = cue.group(0).lower()
        if word == "no" and between.strip() and _EN_PSEUDO_AFTER_NO.match(between):
            continue
        if _EN_SCOPE_BREAK.search(between) or _EN_AFFIRM.search(between):
            return False
        n_words = len(between.split())
        if word in ("not", "without"):
            # Post-verbal "not" and "without ..." reach only a few words, never past a comma.
            if "," in between or n_words > 6:
                return False
        elif n_words > _MAX_PRE_WORDS:
            return False
        return True
    return False


def _post_negated_en(clause: str, end: int) -> bool:
    after = clause[end:]
    neg = _EN_POST_NEG.search(after)
    if neg is None:
        return False
    pseudo = _EN_POST_PSEUDO.search(after)
    if pseudo is not None and pseudo.start() <= neg.start() + 12:
        return False
    affirm = _EN_AFFIRM.search(after)
    stop = _EN_SCOPE_BREAK.search(after)
    first_other = min((m.start() for m in (affirm, stop) if m is not None), default=len(after))
    return neg.start() < first_other


def negated_en(clause: str, start: int, end: int) -> bool:
    """Whether the mention at clause[start:end] is negated within its clause."""
    if _EN_INNER_NEG.search(clause[start:end]):
        return True
    return _pre_negated_en(clause, start) or _post_negated_en(clause, end)


# --- Japanese ------------------------------------------------------------------------

# Clause ends: a conjunctive verb/adjective form + 、 ("認め、" "あり、" "見られず、" "なく、"),
# contrastive "が、" / "ものの" / "一方", and semicolons/colons.
_JA_CLAUSE = re.compile(r"(?<=[めりれしがてでずくけ])、|(?<=ものの)、?|一方、?|[;；:：]")
_JA_NEG = re.compile(
    r"(?:なし|無し|(?<!少)ない(?!か)|なく|なかった|ませんでした|認めず|認められず|見られず|みられず|"
    r"指摘できず|否定的|陰性|(?:検出|観察|指摘|同定)されず|ありません|見当たらない|消失|"
    r"正常(?:範囲|大|サイズ)?)")
# Change statements ("前回と比較して著変なし") keep the finding; "変化" alone is too
# ambiguous ("気腫性変化は認められない" denies emphysema), so it needs a size/number
# or comparison context.
_JA_PSEUDO = re.compile(
    r"(?:否定(?:でき|しきれ)(?:ない|ず)|否定は困難|除外(?:でき|しきれ)(?:ない|ず)|"
    r"著変(?:は|が)?(?:なし|ない|なく|認めない|認められない|見られない)|"
    r"(?:大きさ|サイズ|数|前回|以前)(?:と比較して|と比べて|から|に|の)?(?:著変|変化|差)(?:は|が)?"
    r"(?:なし|ない|なく|認めない|認められない|見られない)|"
    r"(?:増悪|進行)(?:は|が)?(?:なし|ない|なく|認めない)|ではないか|のではない)")
_JA_AFFIRM = re.compile(
    r"(?:を認める|を認め(?!な|ず|られな|られず)|がある|があり|を呈する|を呈し|が見られる|がみられる|"
    r"を伴う|が認められる|認められ(?!な|ず)|観察され(?!な|ず)|検出され(?!な|ず)|が疑われ|を疑う)")


def split_clauses_ja(sentence: str) -> list[str]:
    return [c for c in _JA_CLAUSE.split(sentence) if c and c.strip()]


def negated_ja(clause: str, start: int, end: int) -> bool:
    """Whether the mention at clause[start:end] is negated within its clause."""
    after = clause[end:]
    neg = _JA_NEG.search(after)
    if neg is None:
        return False
    pseudo = _JA_PSEUDO.search(after)
    if pseudo is not None and pseudo.start() <= neg.start() <= pseudo.end():
        return False
    affirm = _JA_AFFIRM.search(after)
    return affirm is None or neg.start() < affirm.start()
