"""train-cxr-labeler: completion-only masking and loss, the answer formats, and a Ray
Train SFT run of a tiny random causal LM that learns a toy mapping and resumes."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest

from tiny_causal_lm import build_tiny_causal_lm

# Toy mapping: each report states up to three observations, with a cue word per class
# (the mapping a tiny random model can learn in a couple of hundred steps).
PHRASES = {
    name: {1.0: f"{name} is present", 0.0: f"no {name}", -1.0: f"possible {name}"}
    for name in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax")
}
CHOICES = [1.0, 0.0, -1.0, math.nan]


def _toy_corpus(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ctray.tasks.cxr.schema import OBSERVATIONS

    rng = random.Random(seed)
    reports, labels = [], []
    for i in range(n):
        row = dict.fromkeys(OBSERVATIONS, math.nan)
        parts = []
        for name, phrases in PHRASES.items():
            value = rng.choice(CHOICES)
            row[name] = value
            if not math.isnan(value):
                parts.append(phrases[value])
        rid = f"r{i:04d}"
        reports.append({"uid": rid, "findings": ". ".join(parts or ["unremarkable"]) + "."})
        labels.append({"report_id": rid, **row})
    return pd.DataFrame(reports), pd.DataFrame(labels)


# ----------------------------------------------------------------------------- units

def test_answer_format_round_trips_the_full_label_table():
    from ctray.tasks.cxr import sft_format as cxr
    from ctray.tasks.findings import sft_format as ct

    row = {"Cardiomegaly": 1.0, "Pleural Effusion": 0.0, "Atelectasis": -1.0, "Edema": math.nan,
           "No Finding": "", "Pneumothorax": 0.0}
    text = cxr.answer_text(row)
    # Grouped by class, CheXpert order inside a group, blanks and empty groups left out.
    assert text == ('{"positive":["Cardiomegaly"],"negative":["Pneumothorax","Pleural Effusion"],'
                    '"uncertain":["Atelectasis"]}')
    parsed = cxr.parse_answer("model says: " + text)
    assert len(parsed) == 14
    assert {k: v for k, v in parsed.items() if not math.isnan(v)} == {
        "Cardiomegaly": 1.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0, "Atelectasis": -1.0}
    assert cxr.answer_text({}) == "{}" and all(math.isnan(v) for v in cxr.parse_answer("{}").values())
    for bad in ("no json", '{"positive": ["Heart"]}', '{"maybe": ["Edema"]}', "[1]",
                '{"positive": ["Edema"], "negative": ["Edema"]}', '{"positive": 3}'):
        with pytest.raises(cxr.AnswerError):
            cxr.parse_answer(bad)
    import jsonschema

    jsonschema.validate(json.loads(text), cxr.json_schema())
    for bad in ({"positive": ["Heart"]}, {"maybe": ["Edema"]}, {"negative": "Edema"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, cxr.json_schema())

    ct_row = {n: 0 for n in ct.LABEL_NAMES} | {"Emphysema": 1, "Cardiomegaly": 1}
    assert json.loads(ct.answer_text(ct_row)) == ["Cardiomegaly", "Emphysema"]
    assert ct.parse_answer(ct.answer_text(ct_row)) == {n: float(v) for n, v in ct_row.items()}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from ctray.tasks.cxr import sft_format

    reports, labels = _toy_corpus(8)
    texts = [sft_format.INSTRUCTION] + reports["findings"].tolist() + [
        sft_format.answer_text(r) for r in labels.drop(columns="report_id").to_dict("records")]
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"), texts * 4)


def test_collator_masks_prompt_and_padding_and_loss_uses_only_answer_logits(tiny_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctray.train.sft import IGNORE, LeftPadCollator, answer_loss, encode

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    short = encode(tok, [{"role": "user", "content": "no pneumothorax."}],
                   '{"negative":["Pneumothorax"]}')
    long = encode(tok, [{"role": "user", "content": "the heart is enlarged. no pleural effusion."}],
                  '{"positive":["Cardiomegaly"],"negative":["Pleural Effusion"]}')
    # The answer ends with the end-of-turn token the model must learn to stop at.
    assert tok.decode(long["answer_ids"]).endswith("<end_of_turn>")
    assert tok.decode(short["prompt_ids"]).endswith("<start_of_turn>model\n")
    items = [{"input_ids": e["prompt_ids"] + e["answer_ids"], "n_answer": len(e["answer_ids"])}
             for e in (short, long)]
    batch = LeftPadCollator(tok.pad_token_id)(items)
    width = batch["input_ids"].shape[1]
    assert width == len(items[1]["input_ids"])
    for row, (e, it) in enumerate(zip((short, long), items)):
        n_pad = width - len(it["input_ids"])
        labels = batch["labels"][row].tolist()
        # -100 on padding and every prompt token; the answer ids exactly, at the end.
        assert labels[:n_pad + len(e["prompt_ids"])] == [IGNORE] * (n_pad + len(e["prompt_ids"]))
        assert labels[n_pad + len(e["prompt_ids"]):] == e["answer_ids"]
        assert batch["attention_mask"][row].tolist() == [0] * n_pad + [1] * len(it["input_ids"])
        assert batch["position_ids"][row, n_pad:].tolist() == list(range(len(it["input_ids"])))

    # The sliced loss equals the loss over full-sequence logits with the same mask,
    # and its logits cover only the longest answer (+0), not the whole sequence.
    loss, logits = answer_loss(model, batch)
    assert logits.shape[1] == len(long["answer_ids"]) < width
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"]).logits
    ref = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, full.size(-1)),
                                            batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # Unpadded single row gives the same answer logits as its padded row.
    alone = {k: v[:1, width - len(items[0]["input_ids"]):] for k, v in batch.items()}
    _, alone_logits = answer_loss(model, alone)
    n = len(short["answer_ids"])
    assert torch.allclose(alone_logits[0, -n:], logits[0, -n:], atol=1e-4)


# ----------------------------------------------------------------------------- Ray Train

def _config(tmp_path, model: str, max_steps: int, exclude: str | None = None):
    from ctray.tasks.cxr.train_job import TrainLlmLabelerConfig

    return TrainLlmLabelerConfig.model_validate({
        "run": {"output": str(tmp_path / "run")},
        "task": "cxr", "model": model,
        "corpus": {"path": str(tmp_path / "reports.csv"), "id_column": "uid",
                   "sections": {"findings": "findings"}, "text_sections": ["findings"]},
        "labels": {"path": str(tmp_path / "labels.csv")},
        "data": {"val_fraction": 0.1, "max_val_reports": 32,
                 "exclude": [{"path": exclude}] if exclude else []},
        # lr 1e-4 (the paper's, for a pretrained model) is far too low for a random tiny one.
        "training": {"max_steps": max_steps, "learning_rate": 3e-3, "batch_size": 8,
                     "warmup_ratio": 0.0, "lr_scheduler": "constant", "save_steps": 20,
                     "freeze_embeddings": False, "mixed_precision": "no", "logging_steps": 5},
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1},
        "generation_check": {"reports": 20, "max_new_tokens": 48},
        "export_dtype": "float32",
    })


@pytest.mark.extended
def test_two_worker_sft_learns_a_toy_mapping_and_resumes(ray_local, tmp_path, tiny_lm):
    from ctray.errors import UserError
    from ctray.tasks.cxr.train_job import run_train_llm_labeler

    reports, labels = _toy_corpus(200, seed=1)
    reports.to_csv(tmp_path / "reports.csv", index=False)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame({"report_id": ["r0000", "r0001", "r0002"]}).to_csv(tmp_path / "dev.csv", index=False)
    dev = str(tmp_path / "dev.csv")

    # A first run that stops at step 20 (its checkpoint), as a killed run would.
    first = run_train_llm_labeler(_config(tmp_path, tiny_lm, 20, dev))
    assert first["resumed_from_step"] == 0 and first["final_step"] == 20
    assert first["data"]["excluded_reports"] == 3
    assert first["data"]["train_reports"] + first["data"]["val_reports"] == 197
    # Started again: continues from the checkpoint of step 20, not from scratch.
    second = run_train_llm_labeler(_config(tmp_path, tiny_lm, 240, dev))
    assert second["resumed_from_step"] == 20 and second["final_step"] == 240
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    steps = [h["step"] for h in log if "loss" in h]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 240
    assert all(h["tokens_per_s"] > 0 for h in log if "loss" in h)
    assert second["last_loss"] < 0.1 * second["first_loss"]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0

    # The exported folder is a plain HF model: answers held-out reports correctly.
    check = second["generation_check"]
    assert check["reports"] == 20 and check["valid_answer_rate"] >= 0.8, check
    # Chance: 1/4 per toy cell, 1/64 per row (the other 11 observations are always blank).
    assert check["exact_row_rate"] >= 0.25, check
    answers = pd.read_csv(tmp_path / "run" / "heldout_answers.csv", dtype={"report_id": str})
    gold = labels.set_index("report_id").loc[answers["report_id"], list(PHRASES)]
    pred = answers.set_index("report_id")[list(PHRASES)]
    same = (pred.to_numpy() == gold.to_numpy()) | (pred.isna().to_numpy() & gold.isna().to_numpy())
    assert same.mean() >= 0.6, same.mean()
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert not set(split["report_id"]) & {"r0000", "r0001", "r0002"}
    meta = json.loads((tmp_path / "run" / "model" / "ctray_sft.json").read_text())
    assert meta["task"] == "cxr" and meta["prompt_version"] == "cxr-sft-v3"

    with pytest.raises(UserError, match="different training configuration"):
        cfg = _config(tmp_path, tiny_lm, 300, dev)
        cfg.training.learning_rate = 1e-3
        run_train_llm_labeler(cfg)


def test_label_tables_are_checked_with_user_errors(tmp_path):
    from ctray.errors import UserError
    from ctray.tasks.cxr import sft_format as cxr
    from ctray.tasks.findings import sft_format as ctrate
    from ctray.train.labeler import LabelTable, read_labels

    _, labels = _toy_corpus(4)
    labels.drop(columns=["Edema"]).to_csv(tmp_path / "missing.csv", index=False)
    with pytest.raises(UserError, match="missing label column"):
        read_labels(cxr, LabelTable(path=str(tmp_path / "missing.csv")))
    labels.assign(Edema=2.0).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="bad.csv"):
        read_labels(cxr, LabelTable(path=str(tmp_path / "bad.csv")))
    # CT-RATE: display-name headers, 0/1 only.
    sample = str(Path(__file__).resolve().parents[1] / "ctray" / "data" / "sample_labels.csv")
    ct = pd.read_csv(sample)
    table = read_labels(ctrate, LabelTable(path=sample, id_column="VolumeName"))
    assert table.shape == (len(ct), 18) and set(table.stack().unique()) <= {0, 1}
