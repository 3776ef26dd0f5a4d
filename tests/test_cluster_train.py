"""Node loss during training: train-findings and train-cxr-labeler (SFT of a causal LM)
with 2 Ray Train workers on 2 nodes.

A worker node is killed (raylet and workers, no drain) once the run has written a
checkpoint; with ``scaling.max_failures`` Ray Train restarts the worker group on the
surviving and the replacement node from the latest checkpoint. The run must finish,
continue from that checkpoint's epoch (not from 0), keep the epochs before the kill
in its history, and export a model that loads and predicts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster_fixtures import LocalCluster, wait_for
from tiny_bert import SAMPLE_DIR, build_ja_tokenizer, build_tiny_bert

REPO = Path(__file__).resolve().parents[1]
# train-findings (about a minute on 2 cores) is in CI; the causal-LM run is extended.
pytestmark = pytest.mark.slow
pytest.importorskip("fugashi", reason="the tohoku-style Japanese tokenizer needs fugashi")
EPOCHS = 5


def registered_epochs(run_dir: Path, key: str = "epoch") -> list[int]:
    """Epochs (or steps) of the checkpoints Ray Train has registered. A checkpoint folder
    appears on disk before its report reaches the controller; a kill in between loses it
    (the new worker group then starts from the previous registered one), so the test
    kills only after the controller's snapshot lists one."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
        return sorted(int(float(r["metrics"][key])) for r in results)
    except (OSError, ValueError, KeyError, TypeError):
        return []


def run_and_kill_a_worker_node(cluster: LocalCluster, argv: list[str], run_dir: Path,
                               log_file: Path, key: str) -> tuple[int, int, str, float]:
    """Start the driver, kill a worker node once a checkpoint is registered; returns
    (returncode, registered epoch/step at the kill, driver log, seconds)."""
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "ctray.cli", *argv,
                             "--set", f"run.ray_address={cluster.address}"],
                            cwd=REPO, stdout=log_file.open("w"), stderr=subprocess.STDOUT,
                            env=cluster.client_env())  # a file, not a pipe nobody drains
    try:
        wait_for(lambda: registered_epochs(run_dir, key) or proc.poll() is not None, 600,
                 "the first registered checkpoint")
    except TimeoutError:
        proc.kill()
        raise
    assert proc.poll() is None, log_file.read_text()[-3000:]
    killed_after = max(registered_epochs(run_dir, key))
    cluster.kill_worker(cluster.workers[0])  # a preemption; a fresh node joins
    proc.wait(timeout=400)
    return proc.returncode, killed_after, log_file.read_text(), time.time() - started


def test_train_findings_survives_a_worker_node_kill_and_resumes_from_its_checkpoint(tmp_path):
    tok = build_ja_tokenizer(tmp_path / "tok")
    model = build_tiny_bert(tmp_path / "tiny", tok, hidden=32, layers=1, heads=2, max_position=64,
                            dropout=0.0, init_range=0.2, zero_positions=True)
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "job": "train-findings", "run": {"output": str(out)}, "model": model,
        "corpus": {"path": str(SAMPLE_DIR / "sample_reports_ja.csv"),
                   "sections": {"impressions": "Impressions_JA"},
                   "text_sections": ["impressions"]},
        "labels": {"source": "gold", "path": str(REPO / "ctray/data/sample_labels.csv")},
        "training": {"epochs": EPOCHS, "learning_rate": 3e-3, "max_length": 32, "stride": 8,
                     "batch_size": 4, "eval_batch_size": 16, "log_every_steps": 0},
        # One 1-CPU worker per node: the two DDP ranks sit on different nodes.
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1, "max_failures": 2},
        "checkpoint": {"name": "chaos", "num_to_keep": 2},
    }))
    cluster = LocalCluster(workers=2, worker_cpus=1, dashboard=False)
    try:
        returncode, killed_after, log, seconds = run_and_kill_a_worker_node(
            cluster, ["train-findings", "--config", str(config)], out / "checkpoints" / "chaos",
            tmp_path / "driver.log", "epoch")
    finally:
        cluster.shutdown()
    assert returncode == 0, log[-3000:]
    print(f"train-findings: node killed after epoch {killed_after}'s checkpoint, {seconds:.1f}s")

    manifest = json.loads((out / "manifest.json").read_text())
    # The worker group that finished started from a checkpoint, not from epoch 1 ...
    assert manifest["started_at_epoch"] >= 2, manifest
    resumed_from = manifest["started_at_epoch"] - 1
    assert manifest["epochs_run"] == list(range(resumed_from + 1, EPOCHS + 1))
    # ... not behind what was on disk when the node died, and the history keeps every
    # epoch once, the ones before the kill from the first worker group.
    assert resumed_from >= killed_after
    history = manifest["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert all(h["resumed_from_epoch"] == 0 for h in history[:resumed_from])
    assert all(h["resumed_from_epoch"] == resumed_from for h in history[resumed_from:])

    from ctray.tasks.findings.model import FindingsClassifier

    classifier = FindingsClassifier.from_pretrained(manifest["model_dir"], device="cpu")
    labels, probs = classifier.predict(["右肺に結節を認める。", "異常所見なし。"])
    assert labels.shape == probs.shape == (2, len(classifier.columns))
    assert ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.extended
def test_train_cxr_labeler_survives_a_worker_node_kill_and_continues_its_step_count(tmp_path):
    """SFT of a tiny causal LM (HF Trainer inside Ray Train): after the kill the new
    worker group resumes the Trainer's state from the last registered checkpoint, so the
    step count continues from there, and the run reaches max_steps."""
    from test_llm_sft import _config, _toy_corpus
    from tiny_causal_lm import build_tiny_causal_lm

    from ctray.tasks.cxr import sft_format

    reports, labels = _toy_corpus(160, seed=2)
    reports.to_csv(tmp_path / "reports.csv", index=False)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    texts = [sft_format.INSTRUCTION] + reports["findings"].tolist()[:8] + [
        sft_format.answer_text(r) for r in labels.drop(columns="report_id").head(8).to_dict("records")]
    model = build_tiny_causal_lm(tmp_path / "tiny_lm", texts * 4)
    max_steps = 100
    cfg = _config(tmp_path, model, max_steps).model_dump(mode="json")
    cfg["scaling"].update(max_failures=2)
    cfg["checkpoint"] = {**cfg.get("checkpoint", {}), "name": "chaos_lm"}
    cfg["training"].update(save_steps=10)
    cfg["generation_check"].update(reports=4, max_new_tokens=32)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cluster = LocalCluster(workers=2, worker_cpus=1, dashboard=False)
    try:
        returncode, killed_at_step, log, seconds = run_and_kill_a_worker_node(
            cluster, ["train-cxr-labeler", "--config", str(config)],
            out / "checkpoints" / "chaos_lm", tmp_path / "driver.log", "step")
    finally:
        cluster.shutdown()
    assert returncode == 0, log[-3000:]
    print(f"train-cxr-labeler: node killed after step {killed_at_step}'s checkpoint, "
          f"{seconds:.1f}s")
    manifest = json.loads((out / "manifest.json").read_text())
    # The group that finished resumed the Trainer from a checkpoint at or after the kill's.
    assert manifest["resumed_from_step"] >= killed_at_step > 0, manifest
    assert manifest["final_step"] == max_steps
    assert "resuming from step" in log

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(manifest["model_dir"])
    assert exported.config.vocab_size > 0
