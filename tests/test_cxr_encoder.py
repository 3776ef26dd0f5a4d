"""train-cxr-encoder and the CXR encoder labeler on a tiny random BERT: windows pooling of a
long report, class weights, cross-validation folds, a 2-worker Ray Train run that resumes,
gold fine-tuning scored out of fold, and label-cxr --labeler encoder end to end."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest

from ctray.tasks.cxr.schema import OBSERVATIONS
from tiny_bert import build_en_tokenizer, build_tiny_bert

# Sentences of the shipped CXR sample, recombined into a corpus the rules label.
SENTENCES = [
    "Heart size is normal.", "The mediastinal contours are unremarkable.", "The lungs are clear.",
    "No pleural effusion or pneumothorax.", "No acute cardiopulmonary disease.",
    "The heart is mildly enlarged.", "There is patchy consolidation in the right lower lobe.",
    "Small right pleural effusion.", "No pneumothorax.", "Cardiomegaly.",
    "Findings may represent mild pulmonary edema.", "No new focal consolidation.",
    "Left basilar linear opacity, likely scarring or atelectasis.",
    "A dual-chamber pacemaker is present.", "Acute fractures of the left 5th and 6th ribs.",
    "There is a 2.5 cm spiculated mass in the right upper lobe.", "Possible pneumonia.",
    "Endotracheal tube 4 cm above the carina.", "Bibasilar atelectasis.", "No pleural effusion.",
    "Biapical pleural thickening.", "Pneumothorax cannot be excluded at the apex.",
]


def _corpus(tmp_path, n: int = 150, seed: int = 0) -> tuple[str, pd.DataFrame]:
    from ctray.tasks.cxr.rules import CxrRuleLabeler

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        picked = rng.sample(SENTENCES, rng.randint(2, 5))
        rows.append({"uid": f"r{i:03d}", "findings": " ".join(picked[:-1]),
                     "impression": picked[-1]})
    reports = pd.DataFrame(rows)
    path = tmp_path / "reports.csv"
    reports.to_csv(path, index=False)
    labeler = CxrRuleLabeler()
    text = (reports["findings"] + "\n\n" + reports["impression"]).tolist()
    labels = pd.DataFrame([labeler.label(t).row() for t in text])[list(OBSERVATIONS)]
    labels.insert(0, "uid", reports["uid"])
    return str(path), labels


def _write_labels(labels: pd.DataFrame, path) -> str:
    out = labels.copy()
    for c in OBSERVATIONS:
        out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{float(v):.1f}")
    out.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_cxr_bert")
    texts = SENTENCES * 3
    tok = build_en_tokenizer(tmp / "tok", texts=texts, min_freq=1)
    return build_tiny_bert(tmp / "bert", tok, hidden=32, layers=1, heads=2, max_position=64,
                           dropout=0.0, init_range=0.2, zero_positions=True)


# ----------------------------------------------------------------------------- no Ray


def test_long_report_is_windowed_and_pooled_over_all_windows(tiny_encoder):
    import torch

    from ctray.tasks.cxr.encoder_model import encode_batch
    from ctray.tasks.cxr.encoder_train_job import load_base

    filler = "The lungs are clear. " * 12
    texts = [filler + "Small right pleural effusion.", filler + "A dual-chamber pacemaker is present.",
             "No pneumothorax."]
    for pooling in ("attention", "mean", "cls"):
        net, tok = load_base(tiny_encoder, {"pooling": pooling, "max_length": 24, "stride": 4})
        net.eval()
        if net.queries is not None:  # trained queries: attention is not uniform
            torch.nn.init.normal_(net.queries, std=1.0)
        ids, mask, owner, windows = encode_batch(tok, texts, 24, 4)
        n_tokens = len(tok(texts[0], add_special_tokens=False)["input_ids"])
        # Every token is in some window: windows of 22 body tokens advancing by 18.
        assert windows[0] == 1 + math.ceil((n_tokens - 22) / 18) and windows[0] > 2
        assert windows[2] == 1
        with torch.no_grad():
            pooled = net.pooled(ids, mask, owner, len(texts))
        # The two long reports differ only after the first window: pooling sees the tail.
        assert not torch.allclose(pooled[0], pooled[1], atol=1e-6), pooling
        if pooling == "mean":
            states = net.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            rows = owner == 0
            expect = states[rows][mask[rows].bool()].mean(dim=0)
            assert torch.allclose(pooled[0, 0], expect, atol=1e-5)
    # Batch composition does not change a report's logits (pooling is per report).
    net, tok = load_base(tiny_encoder, {"pooling": "attention", "max_length": 24, "stride": 4})
    net.eval()
    from ctray.tasks.cxr.encoder_model import report_logits

    with torch.no_grad():
        together, win = report_logits(net, tok, texts, "cpu", batch_size=3)
        alone, _ = report_logits(net, tok, texts[:1], "cpu", batch_size=1)
    assert win[0] > 2
    for a, b in zip(together, alone):
        assert torch.allclose(a[0], b[0], atol=1e-5)


def test_class_weights_favour_rare_classes_and_keep_the_loss_scale():
    from ctray.tasks.cxr.encoder_train_job import class_weights

    y = np.array([0] * 90 + [1] * 8 + [2] * 2)
    w = class_weights(y, 4, 0.5, 10.0)
    assert w[2] > w[1] > w[0]
    assert np.mean(w[y]) == pytest.approx(1.0)
    assert np.allclose(class_weights(y, 4, 0.0, 10.0), 1.0)
    capped = class_weights(np.array([0] * 999 + [1]), 2, 1.0, 10.0)
    assert capped[1] / capped[0] <= 10.0 + 1e-9


def test_spans_are_sentences_and_adjacent_pairs_labelled_by_the_rules():
    from ctray.tasks.cxr.encoder_model import targets
    from ctray.tasks.cxr.rules import CxrRuleLabeler
    from ctray.tasks.cxr.span_teacher import build_span_set, report_spans

    text = "Heart size is normal. Biapical pleural thickening. No pneumothorax."
    assert report_spans(text, 2) == [
        "Heart size is normal.", "Biapical pleural thickening.", "No pneumothorax.",
        "Heart size is normal. Biapical pleural thickening.",
        "Biapical pleural thickening. No pneumothorax."]
    reports = [text, "No pneumothorax.  Heart size is normal.", "Cardiomegaly. No pneumothorax."]
    spans = build_span_set(reports, max_sentences=2)
    assert len(spans.texts) == len(set(spans.texts)) == 8  # boilerplate kept once
    labeler = CxrRuleLabeler()
    expect = targets(pd.DataFrame([labeler.label(t).labels for t in spans.texts]))
    assert np.array_equal(spans.y, expect)
    assert spans.p.sum() == pytest.approx(1.0)
    j = OBSERVATIONS.index("Pleural Other")
    rare = spans.y[:, j] == 1
    assert rare.any() and spans.p[rare].min() > spans.p[~rare].max() - 1e-12
    assert spans.stats["non_blank_spans"]["Pleural Other"] == int(rare.sum())


def test_span_weights_follow_the_rarest_label_and_sampling_avoids_repeats():
    from ctray.tasks.cxr.span_teacher import sample_spans, span_weights

    y = np.zeros((100, 2), dtype=np.int64)
    y[:10, 0] = 1   # rare in head 0
    y[:50, 1] = 2   # common in head 1
    p = span_weights(y, power=1.0, cap=100.0)
    assert p[0] > p[20] > p[60] - 1e-12 and p[20] == pytest.approx(p[60])
    assert p[0] / p[60] == pytest.approx(9.0)  # 90 blank vs 10 positive in head 0
    capped = span_weights(y, power=1.0, cap=3.0)
    assert capped[0] / capped[60] == pytest.approx(3.0)
    rng = np.random.default_rng(0)
    drawn = sample_spans(100, p, 60, rng)
    assert len(drawn) == 60 == len(set(drawn.tolist()))
    assert len(sample_spans(100, p, 250, rng)) == 250
    assert len(sample_spans(100, p, 0, rng)) == 0
    # Oversampling: the 10 rare spans are 10 % of the spans, far more of the draws.
    draws = np.concatenate([sample_spans(100, p, 20, np.random.default_rng(s)) for s in range(50)])
    assert (draws < 10).mean() > 0.25


def test_folds_score_every_gold_report_once_with_a_model_not_trained_on_it():
    from ctray.tasks.cxr.encoder_train_job import fold_units

    units = fold_units(23, 5, 7, 3)
    folds, full = units[:-1], units[-1]
    scored = sorted(i for u in folds for i in u["predict"])
    assert scored == list(range(23))
    for u in folds:
        assert not set(u["train"]) & set(u["predict"])
        assert sorted(u["train"] + u["predict"]) == list(range(23))
        assert not u["export"]
    assert full["export"] and full["train"] == list(range(23)) and not full["predict"]


def test_conventions_on_predictions():
    from ctray.tasks.cxr.encoder_model import apply_conventions

    col = {o: j for j, o in enumerate(OBSERVATIONS)}
    row = np.full((2, 14), np.nan)
    row[0, col["No Finding"]] = 1.0
    row[0, col["Atelectasis"]] = 1.0  # positive child: Lung Opacity 1, No Finding blocked
    row[1, col["No Finding"]] = 1.0
    row[1, col["Support Devices"]] = 1.0  # devices do not block No Finding
    out = apply_conventions(row, OBSERVATIONS)
    assert out[0, col["Lung Opacity"]] == 1.0 and math.isnan(out[0, col["No Finding"]])
    assert out[1, col["No Finding"]] == 1.0


def test_mentions_aggregate_positive_over_uncertain_over_negative_over_blank():
    from ctray.tasks.cxr.encoder_model import aggregate_mentions

    # class indices: 0 blank, 1 positive, 2 negative, 3 uncertain
    sentences = np.array([[0, 2, 2], [3, 2, 0],   # report 0
                          [2, 0, 0], [1, 3, 0],   # report 1
                          [0, 0, 0]])             # report 2
    owner = np.array([0, 0, 1, 1, 2])
    assert aggregate_mentions(sentences, owner, 3).tolist() == [[3, 2, 2], [1, 3, 0], [0, 0, 0]]


def test_reading_loss_is_the_exact_distribution_of_the_aggregated_sentence_labels():
    """mention_log_probs against brute force: every joint assignment of sentence classes,
    weighted by its probability, aggregated by aggregate_mentions."""
    import itertools

    import torch

    from ctray.tasks.cxr.encoder_model import aggregate_mentions, mention_log_probs

    torch.manual_seed(0)
    logits = [torch.randn(5, 4) * 2, torch.randn(5, 2) * 2]  # a 4-way and a 2-way head
    owner = torch.tensor([0, 0, 0, 1, 1])
    read = mention_log_probs(logits, owner, 2)
    for lg, lp in zip(logits, read):
        probs = lg.softmax(dim=1).numpy()
        expect = np.zeros((2, probs.shape[1]))
        for combo in itertools.product(range(probs.shape[1]), repeat=5):
            weight = np.prod([probs[s, c] for s, c in enumerate(combo)])
            agg = aggregate_mentions(np.array(combo)[:, None], owner.numpy(), 2)[:, 0]
            expect[[0, 1], agg] += weight
        assert np.allclose(lp.exp().numpy(), expect, atol=1e-5)
    # Differentiable: the gold stage backpropagates through it to every sentence.
    lg = torch.randn(3, 4, requires_grad=True)
    torch.nn.functional.nll_loss(mention_log_probs([lg], torch.tensor([0, 0, 0]), 1)[0],
                                 torch.tensor([3])).backward()
    assert (lg.grad.abs().sum(dim=1) > 0).all()


def test_sentence_aggregation_labels_each_sentence_and_keeps_no_finding_from_the_report(
        tiny_encoder):
    import torch

    from ctray.tasks.cxr.encoder_model import predict_classes
    from ctray.tasks.cxr.encoder_train_job import load_base

    net, tok = load_base(tiny_encoder, {"max_length": 24, "stride": 4})
    net.eval()
    torch.manual_seed(3)
    torch.nn.init.normal_(net.queries, std=1.0)
    for head in net.heads:  # random heads: sentences disagree, so the aggregation shows
        torch.nn.init.normal_(head.weight, std=3.0)
    reports = [" ".join(SENTENCES[i:i + 4]) for i in range(0, len(SENTENCES) - 4, 3)]
    nf = OBSERVATIONS.index("No Finding")
    with torch.inference_mode():
        net.meta.aggregation = "report"
        whole, _ = predict_classes(net, tok, reports, "cpu", batch_size=4)
        per_sentence = [predict_classes(net, tok, [" ".join(SENTENCES[i + k:i + k + 1])
                                                   for k in range(4)], "cpu")[0]
                        for i in range(0, len(SENTENCES) - 4, 3)]
        net.meta.aggregation = "sentences"
        read, windows = predict_classes(net, tok, reports, "cpu", batch_size=4)
    assert (windows >= 1).all()
    from ctray.tasks.cxr.encoder_model import PATHOLOGIES

    rank = np.array([0, 3, 1, 2])  # positive > uncertain > negative > blank
    path = [OBSERVATIONS.index(o) for o in PATHOLOGIES]
    for r, classes in enumerate(per_sentence):
        strongest = np.argsort(rank)[rank[classes].max(axis=0)]
        # No Finding: the report head, unless a positive / uncertain pathology blanks it
        # under the conventions anyway (then the report pass is skipped).
        blocked = np.isin(strongest[path], (1, 3)).any()
        expect = np.where(np.arange(14) == nf, 0 if blocked else whole[r], strongest)
        assert read[r].tolist() == expect.tolist()
    # Not the report-level reading under another name: the random heads make them differ.
    assert (read != whole).any()
    # Repeated sentences are encoded once: the same reading as one report at a time.
    with torch.inference_mode():
        alone = np.concatenate([predict_classes(net, tok, [t], "cpu")[0] for t in reports])
    assert alone.tolist() == read.tolist()
    # A cache carried across calls reads the same, and the second time encodes nothing.
    from ctray.tasks.cxr import encoder_model
    from ctray.tasks.cxr.span_teacher import reading_sentences

    cache = encoder_model.ReadingCache()
    encoded: list[int] = []
    real = encoder_model.report_logits

    def counting(net_, tok_, texts, *args):
        encoded.append(len(texts))
        return real(net_, tok_, texts, *args)

    encoder_model.report_logits = counting
    try:
        with torch.inference_mode():
            first = np.concatenate([predict_classes(net, tok, [t], "cpu", cache=cache)[0]
                                    for t in reports + reports[:2]])
            n_first = sum(encoded)
            again, _ = predict_classes(net, tok, reports[::-1], "cpu", cache=cache)
    finally:
        encoder_model.report_logits = real
    assert first.tolist() == read.tolist() + read[:2].tolist()
    assert again.tolist() == read[::-1].tolist()
    assert sum(encoded) == n_first  # nothing new to encode
    distinct_sentences = len({s for t in reports for s in reading_sentences(t)})
    assert 0 < n_first <= distinct_sentences + len(reports)
    assert cache.hits > 0 and len(cache._tables["sentence"]) == distinct_sentences
    small = encoder_model.ReadingCache(max_entries=2)
    small.add("sentence", {"a": 1, "b": 2})
    small.known("sentence", ["a"])  # "a" used last: "b" is the one dropped
    small.add("sentence", {"c": 3})
    assert list(small._tables["sentence"]) == ["a", "c"]
    # Where no pathology is positive or uncertain (all-blank pathology heads), or without
    # the conventions, No Finding is the report head's answer for every report.
    with torch.inference_mode():
        net.meta.consistency = False
        free, _ = predict_classes(net, tok, reports, "cpu")
        net.meta.consistency = True
        for j in path:
            net.heads[j].bias.data[0] = 1e4
        quiet, _ = predict_classes(net, tok, reports, "cpu")
    assert free[:, nf].tolist() == whole[:, nf].tolist() == quiet[:, nf].tolist()
    assert (quiet[:, path] == 0).all()


def test_the_labeler_computes_in_the_dtype_the_cpu_rule_picks(tiny_encoder, monkeypatch):
    import torch

    from ctray import hardware
    from ctray.tasks.cxr.encoder_model import CXREncoderLabeler, inference_dtype
    from ctray.tasks.cxr.encoder_train_job import load_base

    native = hardware.CpuInfo("x", "x86_64", frozenset({"avx512_bf16"}))
    plain = hardware.CpuInfo("x", "x86_64", frozenset({"avx512f"}))
    monkeypatch.setattr(hardware, "this_cpu", lambda: native)
    assert inference_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(hardware, "this_cpu", lambda: plain)
    assert inference_dtype("auto", "cpu") == "float32"
    assert inference_dtype("bf16", "cpu") == "bfloat16" and inference_dtype("fp32", "cpu") == "float32"

    net, tok = load_base(tiny_encoder, {"max_length": 24, "stride": 4})
    seen: list = []
    linear = next(m for m in net.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    for dtype, expect in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        seen.clear()
        labeler = CXREncoderLabeler(net, tok, "cpu", dtype=dtype, cache_entries=0)
        values = labeler.predict_values(SENTENCES[:6])
        assert values.shape == (6, len(OBSERVATIONS))
        assert np.isin(values[~np.isnan(values)], (1.0, 0.0, -1.0)).all()
        assert seen and set(seen) == {expect}
    assert next(net.parameters()).dtype == torch.float32  # weights stay float32


# ----------------------------------------------------------------------------- Ray


def _config(tmp_path, model, corpus, labels, epochs, gold=None, lr=1e-2, head_lr=3e-2,
            output=None):
    from ctray.tasks.cxr.encoder_train_job import TrainCxrEncoderConfig
    from ctray.tasks.cxr.label_job import openi_corpus

    return TrainCxrEncoderConfig.model_validate({
        "run": {"output": output or str(tmp_path / "run")},
        "model": model,
        "corpus": openi_corpus(corpus),
        "labels": {"path": labels, "id_column": "uid"},
        "exclude": [{"path": str(tmp_path / "gold.csv"), "id_column": "uid"}],
        "val_fraction": 0.15,
        # A random tiny model needs a far higher learning rate than a pretrained one, and
        # steps: 8 epochs of 2 x 8 reports at 3e-3 with class weights stayed at the majority
        # class (agreement 0.048), 12 epochs of 2 x 4 at 1e-2 / 3e-2 unweighted reach ~0.6;
        # with the spans, 8 epochs reach 0.73 and 12 epochs 0.86.
        # Windows of 24 tokens make most reports span several windows.
        "training": {"epochs": epochs, "encoder_lr": lr, "head_lr": head_lr, "batch_size": 4,
                     "max_length": 24, "stride": 4, "log_every_steps": 0,
                     "freeze_embeddings": False, "class_weight_power": 0.0,
                     "span_ratio": 0.25, "span_batch_size": 8},
        "gold": gold,
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1},
    })


def test_train_resume_gold_cv_and_label_cxr_with_the_encoder(ray_local, tmp_path, tiny_encoder,
                                                            monkeypatch):
    from ctray.tasks.cxr.encoder_model import CXREncoderLabeler, targets
    from ctray.tasks.cxr.encoder_train_job import run_train_cxr_encoder
    from ctray.tasks.cxr.evaluation import f1_table
    from ctray.tasks.cxr.label_job import LabelCxrConfig, run_label_cxr

    corpus, labels = _corpus(tmp_path)
    labels_path = _write_labels(labels, tmp_path / "rules.csv")
    gold = labels.iloc[:24]  # stands in for expert labels: excluded from stage 1
    _write_labels(gold, tmp_path / "gold.csv")
    gold_cfg = {"labels": {"path": str(tmp_path / "gold.csv"), "id_column": "uid"}, "folds": 3,
                "epochs": 2, "encoder_lr": 1e-3, "head_lr": 1e-3, "batch_size": 4}

    # A relative run.output, as users write it (runs/...): the Ray Train workers do not share
    # the driver's working directory, so every folder they open must be absolute.
    monkeypatch.chdir(tmp_path)
    first = run_train_cxr_encoder(_config(tmp_path, tiny_encoder, corpus, labels_path, 1,
                                          gold=gold_cfg | {"labels": None}, output="run"))
    assert first["data"]["excluded_labelled"] == 24
    assert first["data"]["train_reports"] + first["data"]["val_reports"] == 126

    epochs = 8
    second = run_train_cxr_encoder(_config(tmp_path, tiny_encoder, corpus, labels_path, epochs,
                                           gold=gold_cfg, output="run"))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    rules_log = [h for h in log if h["stage"] == "rules"]
    # Resumed: epoch 1 came from the first run's checkpoint, epochs 2-8 from this one.
    assert [h["epoch"] for h in rules_log] == list(range(1, epochs + 1))
    assert all(h["resumed_from"] == {"unit": 0, "epoch": 1} for h in rules_log[1:])
    assert rules_log[-1]["train_loss"] < rules_log[0]["train_loss"] * 0.7
    assert rules_log[-1]["train_tokens_per_s"] > 0
    # Rule-labelled spans of the training reports joined every epoch's reports.
    spans = second["data"]["spans"]
    assert spans["spans"] > 20 and spans["per_epoch"] == round(0.25 * second["data"]["train_reports"])
    per_epoch = (second["data"]["train_reports"] // 2 + spans["per_epoch"] // 2) * 2  # 2 ranks
    assert all(h["train_examples"] == per_epoch and h["train_spans"] == spans["per_epoch"]
               for h in rules_log)

    # Learned the rules: better than the majority class of each head on held-out reports.
    held = labels.set_index("uid")
    train_y = targets(held.drop(index=gold["uid"]))
    majority = {o: [np.nan, 1.0, 0.0, -1.0][int(np.bincount(train_y[:, j]).argmax())]
                for j, o in enumerate(OBSERVATIONS)}
    baseline = pd.DataFrame([majority] * len(held), index=held.index)
    assert second["val_weighted_f1_vs_rules"] > 0.5
    assert second["val_weighted_f1_vs_rules"] > f1_table(held, {"m": baseline}).loc["Average", "m"]

    # Gold stage: 3 folds, every gold report scored once, by the fold that left it out.
    folds = pd.read_csv(tmp_path / "run" / "cv_folds.csv", dtype={"uid": str})
    assert sorted(folds["uid"]) == sorted(gold["uid"]) and folds["fold"].nunique() == 3
    cv = pd.read_csv(tmp_path / "run" / "cv_predictions.csv", dtype={"uid": str})
    assert sorted(cv["uid"]) == sorted(gold["uid"]) and list(cv.columns[1:]) == list(OBSERVATIONS)
    gold_log = [h for h in log if h["stage"] == "gold"]
    assert [h["unit"] for h in gold_log] == ["fold0"] * 2 + ["fold1"] * 2 + ["fold2"] * 2 + ["full"] * 2
    assert {"encoder_rules_only", "rules", "encoder_rules_gold_cv"} <= set(second["gold_mean_weighted_f1"])
    assert second["gold_mean_weighted_f1"]["rules"] == pytest.approx(1.0)  # gold = rule labels here

    # The exported rules-stage model reproduces the predictions made inside training.
    dev = pd.read_csv(tmp_path / "run" / "rules_stage_predictions.csv", dtype={"uid": str})
    reports = pd.read_csv(corpus).set_index("uid")
    dev_text = (reports.loc[dev["uid"], "findings"] + "\n\n" + reports.loc[dev["uid"], "impression"]).tolist()
    # float32 here and below: the comparisons are exact, across batch compositions.
    rules_model = CXREncoderLabeler.load(second["rules_model_dir"], device="cpu", dtype="float32")
    again = rules_model.predict_values(dev_text)
    assert np.array_equal(np.nan_to_num(again, nan=9), np.nan_to_num(dev[list(OBSERVATIONS)].to_numpy(), nan=9))
    assert (rules_model.last_windows > 1).sum() > 0

    # label-cxr --labeler encoder: the exported gold-stage model through Ray Data.
    cfg = LabelCxrConfig.model_validate({
        "run": {"output": str(tmp_path / "labels")}, "labeler": "encoder",
        "corpus": {"path": corpus}, "encoder": {"model": second["model_dir"], "num_cpus": 0.5,
                                                       "dtype": "float32"}})
    run_label_cxr(cfg)
    out = pd.read_csv(tmp_path / "labels" / "labels.csv", dtype={"uid": str}).set_index("uid")
    assert len(out) == 150 and list(out.columns) == list(OBSERVATIONS)
    final = CXREncoderLabeler.load(second["model_dir"], device="cpu", dtype="float32")
    texts = (reports["findings"] + "\n\n" + reports["impression"]).tolist()
    direct = final.label(texts)
    assert set(direct[0]) == set(OBSERVATIONS)
    expect = np.array([[d[o] for o in OBSERVATIONS] for d in direct])
    assert np.array_equal(np.nan_to_num(out.loc[reports.index].to_numpy(), nan=9),
                          np.nan_to_num(expect, nan=9))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["job"] == "train-cxr-encoder" and manifest["model_dir"] == second["model_dir"]
