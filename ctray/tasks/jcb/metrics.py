"""Metrics: per-row statistics (computed once) and an aggregation over them.

The split lets the bootstrap resample rows and re-aggregate without re-tokenising.
``row_stats(records, setting, strict)`` returns one tuple per record;
``aggregate(stats, setting, strict)`` returns the released results JSON (same keys,
same order as the release's ``results/<group>/<task>/<model>/<shot>.json``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

from ctray.tasks.jcb.parsing import PARSERS
from ctray.tasks.jcb.registry import Setting


def _parse(setting: Setting, value: Any, strict: bool) -> Any:
    return PARSERS[setting.parser](value, strict=strict, **setting.parser_args)


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


# ----------------------------------------------------------------- ROUGE-L (Japanese)

class _MecabIpadicTokenizer:
    """rouge-score tokenizer: MeCab ``-Owakati`` with the IPADIC dictionary (the paper's
    setting; unidic segments differently and does not reproduce the scores)."""

    def __init__(self) -> None:
        import ipadic
        import MeCab

        self.tagger = MeCab.Tagger(f"-Owakati {ipadic.MECAB_ARGS}")

    def tokenize(self, text: str) -> list[str]:
        return self.tagger.parse(text or "").split()


@lru_cache(maxsize=1)
def _tokenizer() -> _MecabIpadicTokenizer:
    return _MecabIpadicTokenizer()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists, bit-parallel
    (Hyyrö 2004): one big-integer step per token of ``b`` instead of rouge-score's
    pure-Python len(a) x len(b) table, which took 24 s per CTS file (same result)."""
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l_pair(reference: str, hypothesis: str) -> tuple[float, float, float]:
    """rouge-score 0.1.2's ROUGE-L (``RougeScorer(["rougeL"])``, same tokens, same float
    operations) with the LCS computed by :func:`lcs_length`."""
    from rouge_score.scoring import fmeasure

    target = _tokenizer().tokenize(reference or "")
    prediction = _tokenizer().tokenize(hypothesis or "")
    if not target or not prediction:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(target, prediction)
    precision, recall = lcs / len(prediction), lcs / len(target)
    return precision, recall, fmeasure(precision, recall)


class RougeLJa:
    """Mean ROUGE-L over items. The release leaves items with an empty answer out of the
    mean (MedSwallow's CTS file: 36 of 97 empty); strict mode scores them 0."""
    keys = ("precision", "recall", "f1")

    def row_stats(self, records, setting, strict):
        out = []
        for r in records:
            answer = _parse(setting, r.get(setting.generated_field), strict)
            counted = int(strict or bool(answer.strip()))
            out.append(rouge_l_pair(str(r.get(setting.gold_field) or ""), answer) + (counted,))
        return out

    def aggregate(self, stats, setting, strict):
        counted = [s for s in stats if s[3]]
        n = len(counted)
        return {k: _div(sum(s[i] for s in counted), n) for i, k in enumerate(self.keys)}


# ------------------------------------------------------------ list answers (CCA, MR)

def set_prf(pred: Sequence[str] | None, gold: Sequence[str]) -> tuple[float, float, float]:
    """Per-document precision/recall/F1 of the answer set against the gold set."""
    p, g = set(pred or ()), set(gold)
    tp = len(p & g)
    precision, recall = _div(tp, len(p)), _div(tp, len(g))
    return precision, recall, _f1(precision, recall)


class SetPrfPerDoc:
    """Macro over documents: each document's P/R/F1, averaged (CCA, MR)."""

    def row_stats(self, records, setting, strict):
        out = []
        for r in records:
            gold = PARSERS["python_list"](r.get(setting.gold_field), strict=False) or []
            out.append(set_prf(_parse(setting, r.get(setting.generated_field), strict), gold))
        return out

    def aggregate(self, stats, setting, strict):
        n = len(stats)
        means = {"precision": _div(sum(s[0] for s in stats), n),
                 "recall": _div(sum(s[1] for s in stats), n),
                 "f1": _div(sum(s[2] for s in stats), n)}
        means["accuracy"] = means["recall"]  # the release's MR "_accuracy" equals recall
        keys = setting.metric_args.get("keys", {"precision": "precision", "recall": "recall",
                                                "f1": "f1"})
        return {out_key: means[name] for name, out_key in keys.items()}


# ------------------------------------------------------------------ single answers

class Accuracy:
    """ExamQA: parsed answer == gold (int compare, both 0-based)."""

    def row_stats(self, records, setting, strict):
        out = []
        for r in records:
            pred = _parse(setting, r.get(setting.generated_field), strict)
            gold = PARSERS["first_int"](r.get(setting.gold_field))
            out.append((int(pred is not None and pred == gold),))
        return out

    def aggregate(self, stats, setting, strict):
        return {"accuracy": _div(sum(s[0] for s in stats), len(stats))}


class ChoiceAccuracy:
    """RE: accuracy = recall = correct / N; precision = correct / parseable answers
    (strict: correct / N); f1 from those two."""

    def row_stats(self, records, setting, strict):
        out = []
        for r in records:
            pred = _parse(setting, r.get(setting.generated_field), strict)
            out.append((int(pred is not None and pred == r.get(setting.gold_field)),
                        int(pred is not None)))
        return out

    def aggregate(self, stats, setting, strict):
        n = len(stats)
        correct = sum(s[0] for s in stats)
        parsed = n if strict else sum(s[1] for s in stats)
        acc, precision = _div(correct, n), _div(correct, parsed)
        return {"accuracy": acc, "precision": precision, "recall": acc,
                "f1": _f1(precision, acc)}


class BinaryPrf:
    """DC-ADE: P/R/F1 of the positive class. Strict: an unparseable answer is wrong
    (a false negative for a positive row, a false positive for a negative one)."""

    def row_stats(self, records, setting, strict):
        positive = setting.metric_args.get("positive", "有")
        out = []
        for r in records:
            gold = r.get(setting.gold_field) == positive
            pred = _parse(setting, r.get(setting.generated_field), strict)
            pred_pos = (not gold) if pred is None else pred == positive
            out.append((int(pred_pos and gold), int(pred_pos and not gold),
                        int(gold and not pred_pos)))
        return out

    def aggregate(self, stats, setting, strict):
        tp, fp, fn = (sum(s[i] for s in stats) for i in range(3))
        precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
        return {"precision": precision, "recall": recall, "f1": _f1(precision, recall)}


class Tnm:
    """DC-TMN per factor. The release scores over the prompt's options only: an answer is
    correct when it equals the gold *and* the gold is one of the options (gold ``T2``,
    ``T1``, ``M1`` are not, so a "T2" answer to a T2 row scores nothing); precision =
    correct / all rows; recall = correct / rows whose gold is an option. Strict: any
    exact match is correct, recall over all rows."""

    def row_stats(self, records, setting, strict):
        options = setting.metric_args["options"]
        out = []
        for r in records:
            pred = _parse(setting, r.get(setting.generated_field), strict)
            row = []
            for factor in "tnm":
                gold = r.get(factor)
                row += [int(pred[factor] is not None and pred[factor] == gold),
                        int(gold in options[factor])]
            out.append(tuple(row))
        return out

    def aggregate(self, stats, setting, strict):
        n = len(stats)
        result = {}
        for i, factor in enumerate("tnm"):
            if strict:
                correct = sum(s[2 * i] for s in stats)
                recall = _div(correct, n)
            else:
                correct = sum(s[2 * i] for s in stats if s[2 * i + 1])
                recall = _div(correct, sum(s[2 * i + 1] for s in stats))
            precision = _div(correct, n)
            result[factor] = {"precision": precision, "recall": recall,
                              "f1": _f1(precision, recall)}
        return result


class MicroPrf:
    """NER: exact (start, end, type) span match, micro P/R/F1 from summed counts."""

    def row_stats(self, records, setting, strict):
        out = []
        for r in records:
            gold = PARSERS[setting.parser](r.get(setting.gold_field), **setting.parser_args)
            output = r.get(setting.generated_field)
            if not strict and output is not None:
                # The release strips the output (not the gold sentence) before counting
                # offsets: an output that keeps the input's leading space loses its spans.
                output = str(output).strip()
            pred = _parse(setting, output, strict)
            out.append((len(pred & gold), len(pred - gold), len(gold - pred)))
        return out

    def aggregate(self, stats, setting, strict):
        tp, fp, fn = (sum(s[i] for s in stats) for i in range(3))
        precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
        return {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
                "total_tp": tp, "total_fp": fp, "total_fn": fn}


METRICS: dict[str, Any] = {
    "rouge_l_ja": RougeLJa(),
    "set_prf_per_doc": SetPrfPerDoc(),
    "accuracy": Accuracy(),
    "choice_accuracy": ChoiceAccuracy(),
    "binary_prf": BinaryPrf(),
    "tnm": Tnm(),
    "micro_prf": MicroPrf(),
}


def metric_for(setting: Setting):
    return METRICS[setting.metric]


def score_records(records: list[dict[str, Any]], setting: Setting,
                  strict: bool = False) -> tuple[dict[str, Any], list[tuple]]:
    metric = metric_for(setting)
    stats = metric.row_stats(records, setting, strict)
    return metric.aggregate(stats, setting, strict), stats


def bootstrap_ci(stats: list[tuple], setting: Setting, strict: bool = False,
                 resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the headline value, resampling rows (documents)."""
    import numpy as np

    if not stats:
        return None
    metric = metric_for(setting)
    rng = np.random.default_rng(seed)
    n = len(stats)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        values.append(setting.headline_value(metric.aggregate([stats[i] for i in idx],
                                                              setting, strict)))
    lo, hi = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)

