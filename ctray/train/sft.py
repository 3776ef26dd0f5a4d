"""Instruction fine-tuning (SFT) of a causal LM on (prompt messages, answer) pairs,
inside Ray Train: transformers' ``Trainer`` in the worker loop, made Ray-aware with
``ray.train.huggingface.transformers.prepare_trainer`` and ``RayTrainReportCallback``.

Task-agnostic: the task layer (``ctray.tasks.<x>.sft_format``) turns reports and
labels into chat messages and answer text; this module tokenises them, trains and
exports. What it adds to a stock ``Trainer``:

* completion-only loss AND logits: examples are left-padded, so every answer ends at
  the last position of its row, and the forward pass asks for logits only for the
  last ``K + 1`` positions (``logits_to_keep``), K being the batch's longest answer.
  With Gemma 3's 262k vocabulary the full-sequence logits (and their softmax and
  backward) cost more than the rest of a 270M model, so this is where CPU time goes.
  (TRL's ``SFTTrainer`` has a completion-only *loss* but still materialises the
  logits of every position, which is why its collator/loss are not used here.)
* length-grouped batches (``train_sampling_strategy="group_by_length"``), so little
  compute goes to padding; the maximum length comes from the data.
* a checkpoint every ``save_steps`` optimizer steps and at each epoch end; each one is
  reported to Ray Train, and a restarted run (same ``RunConfig(name, storage_path)``)
  resumes from the latest one via ``Trainer.train(resume_from_checkpoint=...)``
  (weights, optimizer, scheduler, RNG, step and data position).
* per-step metrics (loss, lr, grad norm, tokens/s) in the Trainer's log history,
  printed by rank 0 and carried in every checkpoint's ``trainer_state.json``.
* optional LoRA (peft), merged into the base weights on export, so the exported
  folder is a plain HF model that vLLM and transformers load directly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

IGNORE = -100
STATE_FILE = "trainer_state.json"
RAY_CKPT_SUBDIR = "checkpoint"  # RayTrainReportCallback.CHECKPOINT_NAME


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, description="LoRA rank")
    alpha: int = Field(32, description="LoRA scaling alpha")
    dropout: float = Field(0.05, description="LoRA dropout")
    target_modules: list[str] | str = Field(
        "all-linear", description="modules adapted by LoRA (a list, or all-linear)")


class SftParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    learning_rate: float = Field(1e-4, description="AdamW learning rate (the paper's: 1e-4)")
    epochs: float = Field(1.0, description="passes over the training examples")
    max_steps: int = Field(
        -1, description="> 0: stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(2, description="examples per worker per micro-step")
    grad_accum: int = Field(1, description="micro-steps per optimizer step")
    weight_decay: float = Field(0.0, description="AdamW weight decay")
    warmup_ratio: float = Field(
        0.05, description="share of steps spent warming up the learning rate")
    lr_scheduler: str = Field("cosine", description="transformers learning-rate schedule name")
    max_grad_norm: float = Field(1.0, description="gradient clipping norm")
    # Longest tokenised example kept; None = the longest in the data (capped by the
    # model's context). Longer examples are dropped and counted, never silently cut.
    max_length: int | None = Field(
        None, description="longest tokenised example kept (None: the longest in the data); "
        "longer ones are dropped and counted")
    group_by_length: bool = Field(
        True, description="batch examples of similar length (less padding)")
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = Field(
        "auto", description="auto: bf16 where supported, else full precision")
    # Gemma ties the output head to the input embeddings (168M of the 270M weights);
    # freezing them keeps the vocabulary geometry and halves optimizer memory.
    freeze_embeddings: bool = Field(
        True, description="freeze the (tied) embeddings: keeps the vocabulary geometry, halves "
        "optimizer memory")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (less memory, slower)")
    lora: LoraParams | None = Field(
        None, description="LoRA adapters (None: full fine-tuning); merged into the export")
    save_steps: int = Field(
        50, description="checkpoint (and held-out loss) every N optimizer steps")
    eval_steps: int | None = Field(
        None, description="held-out loss every N steps (default: save_steps)")
    logging_steps: int = Field(1, description="log the loss every N steps")
    # Wall-clock budget of one run (CPU machines): at the first step past it the run
    # saves a checkpoint and stops (a rerun with a larger budget or max_steps continues).
    time_budget_s: float | None = Field(
        None, description="wall-clock budget: at the first step past it, checkpoint and stop")
    seed: int = Field(42, description="seed of shuffling and initialisation")


class SftExample(BaseModel):
    """One training pair; ``id`` is the report id (never logged with its text)."""

    id: str
    messages: list[dict[str, str]]
    answer: str


# ----------------------------------------------------------------------------- tokens

def encode(tokenizer, messages: list[dict[str, str]], answer: str | None = None) -> dict[str, Any]:
    """Prompt ids (chat template with the generation prompt) and answer ids.

    The answer is tokenised on its own, right after the prompt, exactly as generation
    continues from the prompt; it ends with the template's end-of-turn marker (the
    token generation stops at)."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if answer is None:
        return {"prompt_ids": prompt_ids}
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": answer}], tokenize=False)
    if full.startswith(prompt):
        completion = full[len(prompt):].rstrip("\n")
    else:  # a template whose answer turn does not extend the generation prompt
        completion = answer + (tokenizer.eos_token or "")
    answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {"prompt_ids": prompt_ids, "answer_ids": answer_ids}


def tokenize_examples(tokenizer, examples: list[dict], max_length: int | None,
                      model_context: int | None) -> tuple[list[dict], dict[str, int]]:
    """Training features (``input_ids``, ``n_answer``) and counts; too-long examples
    are dropped (a truncated report would teach labels for text the model never saw)."""
    feats, lengths = [], []
    for ex in examples:
        enc = encode(tokenizer, ex["messages"], ex["answer"])
        ids = enc["prompt_ids"] + enc["answer_ids"]
        feats.append({"input_ids": ids, "n_answer": len(enc["answer_ids"]), "id": ex["id"]})
        lengths.append(len(ids))
    limit = max_length or (max(lengths) if lengths else 0)
    if model_context:
        limit = min(limit, model_context)
    kept = [f for f in feats if len(f["input_ids"]) <= limit]
    stats = {"examples": len(feats), "dropped_too_long": len(feats) - len(kept),
             "max_length": int(limit),
             "max_tokens": int(max(lengths, default=0)),
             "mean_tokens": float(sum(lengths) / max(len(lengths), 1)),
             "mean_answer_tokens": float(sum(f["n_answer"] for f in feats) / max(len(feats), 1)),
             "total_tokens": int(sum(len(f["input_ids"]) for f in kept))}
    return kept, stats


class LeftPadCollator:
    """Left-pads a batch so every answer ends at the last position; labels are the
    answer tokens and ``IGNORE`` (-100) elsewhere (prompt and padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        import torch

        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for row, it in enumerate(items):
            seq = torch.as_tensor(it["input_ids"], dtype=torch.long)
            ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
            n = it["n_answer"]
            labels[row, width - n:] = seq[len(seq) - n:]
        # Positions count real tokens only, so a left-padded row sees the positions it
        # would see alone (and at generation time).
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                "labels": labels}


def answer_loss(model, inputs: dict[str, Any]):
    """(mean cross-entropy over answer tokens, answer logits); logits only for the
    positions that predict an answer token (see the module docstring)."""
    import torch

    labels = inputs["labels"]
    keep = int((labels != IGNORE).sum(dim=1).max())
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                position_ids=inputs["position_ids"], logits_to_keep=keep + 1)
    # Position t predicts token t+1: the last keep+1 logits minus the final one
    # predict the last ``keep`` tokens.
    logits = out.logits[:, :-1, :].float()
    target = labels[:, -keep:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                             target.reshape(-1), ignore_index=IGNORE)
    return loss, logits


# ----------------------------------------------------------------------------- trainer

def _trainer_class():
    from transformers import Trainer, TrainerCallback

    class CompletionOnlyTrainer(Trainer):
        # The loss is a per-micro-batch mean: Trainer divides it by grad_accum.
        loss_is_scaled_for_ga = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._tokens = 0
            self._answer_tokens = 0
            self._since = time.perf_counter()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self._tokens += int(inputs["attention_mask"].sum())
                self._answer_tokens += int((inputs["labels"] != IGNORE).sum())
            loss, logits = answer_loss(model, inputs)
            return (loss, {"logits": logits}) if return_outputs else loss

        def log(self, logs: dict[str, float], *args, **kwargs) -> None:
            # Throughput since the previous training log line (this worker's tokens,
            # padding excluded); evaluation lines carry none.
            if "loss" in logs:
                now = time.perf_counter()
                elapsed = max(now - self._since, 1e-9)
                logs["tokens_per_s"] = round(self._tokens / elapsed, 2)
                logs["answer_tokens"] = self._answer_tokens
                logs["step_s"] = round(elapsed / max(self.args.logging_steps, 1), 3)
                self._tokens, self._answer_tokens, self._since = 0, 0, now
            super().log(logs, *args, **kwargs)

    class SaveEachEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_save = True
            control.should_evaluate = True
            return control

    class TimeBudget(TrainerCallback):
        def __init__(self, budget_s: float | None):
            self.budget_s, self.started = budget_s, time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.budget_s is not None and time.perf_counter() - self.started > self.budget_s:
                control.should_training_stop = True
                control.should_save = True
            return control

    class PrintSteps(TrainerCallback):
        """One line per log on rank 0 (numbers only: never report text)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                keys = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "epoch")
                shown = " ".join(f"{k} {logs[k]:.4g}" for k in keys if isinstance(logs.get(k), float | int))
                print(f"[train-cxr-labeler] step {state.global_step}/{state.max_steps} {shown}",
                      flush=True)

    return CompletionOnlyTrainer, SaveEachEpoch, PrintSteps, TimeBudget


class _ListDataset:
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def amp_flags(mode: str) -> dict[str, bool]:
    """bf16 autocast where the hardware has it (CUDA bf16, or a CPU with AVX-512 BF16 /
    AMX); fp16 only on CUDA."""
    import torch

    if mode == "no":
        return {}
    if torch.cuda.is_available():
        if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
            return {"fp16": True}
        return {"bf16": True}
    if mode == "fp16":
        return {}
    from ctray.hardware import cpu_dtype

    if mode == "bf16" or cpu_dtype("auto").dtype == "bfloat16":
        return {"bf16": True}
    return {}


def load_base(source: str, params: SftParams):
    """(model, tokenizer) in float32 (autocast gives bf16 compute; fp32 master weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if params.freeze_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad = False
    if params.lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
            target_modules=params.lora.target_modules, task_type="CAUSAL_LM"))
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tokenizer


def model_context(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker loop: build the Trainer, resume from Ray's latest checkpoint."""
    import ray
    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import TrainingArguments

    params = SftParams(**config["training"])
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    train_rows, eval_rows = ray.get(config["data"])
    model, tokenizer = load_base(config["model"], params)
    ctx = ray.train.get_context()
    work = tempfile.mkdtemp(prefix="ctray_sft_")
    save_steps = params.save_steps
    args = TrainingArguments(
        output_dir=work, per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum, learning_rate=params.learning_rate,
        num_train_epochs=params.epochs, max_steps=params.max_steps,
        weight_decay=params.weight_decay,
        # transformers 5: a float warmup_steps in [0, 1) is a ratio of the total steps.
        warmup_steps=float(params.warmup_ratio) if 0 < params.warmup_ratio < 1 else 0,
        lr_scheduler_type=params.lr_scheduler, max_grad_norm=params.max_grad_norm,
        optim="adamw_torch", logging_steps=params.logging_steps,
        logging_first_step=params.logging_steps > 1,
        save_strategy="steps", save_steps=save_steps, save_total_limit=1,
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=params.eval_steps or save_steps, prediction_loss_only=True,
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        remove_unused_columns=False, dataloader_pin_memory=False, report_to="none",
        disable_tqdm=True, seed=params.seed, use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False, **amp_flags(params.mixed_precision))
    trainer_cls, save_each_epoch, print_steps, time_budget = _trainer_class()
    trainer = trainer_cls(
        model=model, args=args, train_dataset=_ListDataset(train_rows),
        eval_dataset=_ListDataset(eval_rows) if eval_rows else None,
        data_collator=LeftPadCollator(tokenizer.pad_token_id),
        callbacks=[RayTrainReportCallback(), save_each_epoch(), print_steps(),
                   time_budget(params.time_budget_s)])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # PrintSteps prints a compact line instead
    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint()
    started = time.time()
    start_step = 0
    if checkpoint:
        with checkpoint.as_directory() as d:
            hf_dir = os.path.join(d, RAY_CKPT_SUBDIR)
            with open(os.path.join(hf_dir, STATE_FILE), encoding="utf-8") as f:
                start_step = int(json.load(f)["global_step"])
            if ctx.get_world_rank() == 0:
                print(f"[train-cxr-labeler] resuming from step {start_step}", flush=True)
            trainer.train(resume_from_checkpoint=hf_dir)
    else:
        trainer.train()
    shutil.rmtree(work, ignore_errors=True)
    return {"resumed_from_step": start_step, "final_step": int(trainer.state.global_step),
            "train_s": round(time.time() - started, 2)}


# ----------------------------------------------------------------------------- driver side

def log_history(result) -> list[dict]:
    """Every logged step of the run (across resumes) from the latest checkpoint."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        path = os.path.join(d, RAY_CKPT_SUBDIR, STATE_FILE)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("log_history", [])


def export_model(result, base_model: str, params: SftParams, target: str,
                 meta: dict[str, Any], dtype: str = "bfloat16") -> None:
    """The latest checkpoint as a plain HF folder (LoRA merged), tokenizer with its chat
    template, generation config (stop tokens) and ``ctray_sft.json``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ctray.train.common import export_dir

    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        hf_dir = os.path.join(d, RAY_CKPT_SUBDIR)
        if params.lora is not None:
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, hf_dir).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    try:
        model.generation_config = GenerationConfig.from_pretrained(base_model)
    except OSError:
        pass
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype

    def save(path: str) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        with open(os.path.join(path, "ctray_sft.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=str)

    export_dir(target, save)


def generate_answers(model, tokenizer, messages: list[list[dict[str, str]]],
                     max_new_tokens: int = 96, batch_size: int = 8) -> list[str]:
    """Greedy answers (left-padded batches, shortest prompts together)."""
    import torch

    prompts = [encode(tokenizer, m)["prompt_ids"] for m in messages]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]):] = torch.as_tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
        for r, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[r, width:], skip_special_tokens=True)
    return out


def plot_loss_curve(history: list[dict], path: str, title: str) -> str | None:
    """Training loss per step (and held-out loss where evaluated) as a PNG."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), lw=0.8, alpha=0.5, label="train loss (per step)")
    if len(train) >= 10:
        k = max(5, len(train) // 20)
        xs = [s for s, _ in train][k - 1:]
        vals = [v for _, v in train]
        smooth = [sum(vals[i - k + 1:i + 1]) / k for i in range(k - 1, len(vals))]
        ax.plot(xs, smooth, lw=1.8, label=f"train loss ({k}-step mean)")
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy on answer tokens")
    ax.set_title(title)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["SftParams", "LoraParams", "SftExample", "encode", "tokenize_examples",
           "LeftPadCollator", "answer_loss", "train_loop_per_worker", "export_model",
           "generate_answers", "log_history", "plot_loss_curve"]
