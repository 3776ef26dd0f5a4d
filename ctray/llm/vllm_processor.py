"""vLLM through ``ray.data.llm`` (``engine_mode: processor``, the default).

An :class:`~ctray.llm.task.LLMStage` whose backend is a ``VLLMConfig`` does not run
in a StageWorker actor; ``apply_vllm_stage`` turns it into a ``ray.data.llm``
processor (engine settings, CPU or GPU, come from :mod:`ctray.llm.vllm_engine`):

    preprocess  (vllm_preprocess):  row -> chat-templated token ids + sampling_params
    vLLM engine                     (Ray's engine stage; CPU bundle or GPU)
    postprocess (vllm_postprocess): engine output -> LLMResponse -> stage.finish(row, ...)
    finalize    (vllm_finalize):    rows vLLM failed on -> error rows; helper columns dropped

Every original column passes through (Ray carries the whole row inside its data
column; we remember the original column names so vLLM's helper columns can be
dropped). Rows that arrive with ``_error`` already set, or whose ``build_request``
raises, still travel through the engine (a processor cannot skip rows) but as a
1-token dummy prompt, and come out with their error unchanged.

Limits of this path, by design:

* ``LLMTask.repair_request`` (the second "answer with valid JSON only" call of the
  in-process backends) is not possible inside a single processor pass. This path
  relies on guided decoding instead: ``choices`` become
  ``structured_outputs={"choice": [...]}`` and ``json_schema`` becomes
  ``structured_outputs={"json": ...}``, so the engine can only emit a valid option or
  schema-conforming JSON; an unusable answer becomes a row error directly.
* A prompt longer than the context is rejected by vLLM itself (set
  ``max_model_len``); ``should_continue_on_error=True`` turns that, like any other
  per-row engine failure, into a row error instead of a failed job.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from ctray.llm.base import LLMRequest, LLMResponse
from ctray.llm.config import BackendConfig
from ctray.pipeline.stage import (
    ERROR_COL,
    ERROR_STAGE_COL,
    ERROR_TYPE_COL,
    LIGHT_TASK,
    RowError,
    mark_error,
)

#: carried through the processor: the names of the row's own columns
ORIGINAL_COLUMNS_KEY = "__ctray_columns"
#: carried from postprocess to finalize: the names of the output row's columns
OUTPUT_COLUMNS_KEY = "__ctray_output_columns"
#: set by Ray on rows the engine failed on (with should_continue_on_error)
INFERENCE_ERROR_KEY = "__inference_error__"
#: columns added by preprocess and by Ray's chat-template/tokenize/vLLM/detokenize stages
HELPER_COLUMNS = frozenset({
    ORIGINAL_COLUMNS_KEY, OUTPUT_COLUMNS_KEY, INFERENCE_ERROR_KEY, "messages", "sampling_params",
    "prompt", "tokenized_prompt", "prompt_token_ids", "generated_tokens", "generated_text",
    "num_input_tokens", "num_generated_tokens", "embeddings", "metrics", "logprobs",
    "prompt_logprobs", "request_id", "batch_uuid", "time_taken_llm", "params",
})
DUMMY_MESSAGES = [{"role": "user", "content": "."}]
ERROR_COLUMNS = (ERROR_COL, ERROR_STAGE_COL, ERROR_TYPE_COL)


def model_source(cfg: BackendConfig) -> str:
    """The model as vLLM loads it (GGUF sources: ctray's converted checkpoint)."""
    from ctray.llm.vllm_engine import model_path

    return model_path(cfg)


def pretokenized(source: str) -> bool:
    """Whether ctray applies the chat template itself (a local model folder)."""
    from pathlib import Path

    return Path(source).is_dir()


def build_vllm_config(cfg: BackendConfig, device: str | None = None, source: str | None = None):
    """The ``vLLMEngineProcessorConfig`` for a backend configuration.

    On CPU the engine gets a CPU placement-group bundle and the CPU engine settings
    (:mod:`ctray.llm.vllm_engine`); on GPU Ray's defaults apply (a GPU per worker).
    A model in a local folder (ctray's converted offline model, a fine-tuned one)
    gets its prompts templated and tokenized in ``vllm_preprocess``, so Ray's
    chat-template, tokenize and detokenize stages (each an actor pool of its own)
    are off: on a small machine they would only compete with the engine for CPUs.
    Hub ids and remote URIs keep Ray's stages (they fetch the tokenizer themselves)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from ctray.llm.vllm_engine import engine_args, engine_env, placement_group, resolved_device

    device = device or resolved_device(cfg)
    source = source or model_source(cfg)
    ray_stages = not pretokenized(source)
    kwargs: dict[str, Any] = {}
    if cfg.accelerator_type and device == "gpu":
        kwargs["accelerator_type"] = cfg.accelerator_type
    pg = placement_group(cfg, device)
    if pg is not None:
        kwargs["placement_group_config"] = pg
    env = engine_env(cfg, device)
    if env:
        kwargs["runtime_env"] = {"env_vars": env}
    return vLLMEngineProcessorConfig(
        model_source=source,
        engine_kwargs=engine_args(cfg, device),
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        # One bad row (too long, engine error) must not kill the job: it comes back
        # with __inference_error__ set, which vllm_finalize turns into a row error.
        should_continue_on_error=True,
        chat_template_stage=ray_stages,
        tokenize_stage=ray_stages,
        detokenize_stage=ray_stages,
        # Ray's engine metrics need a metrics export port that laptops do not open.
        log_engine_metrics=False,
        **kwargs,
    )


# -- row functions (module level, so they pickle and test without vLLM) --

def _has_error(row: dict[str, Any]) -> bool:
    value = row.get(ERROR_COL)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value != ""


def sampling_params(request: LLMRequest) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields for a request, as Ray's engine stage reads them
    (``structured_outputs`` is popped and turned into ``StructuredOutputsParams``)."""
    from ctray.llm.vllm_requests import sampling_fields

    return sampling_fields(request)


def _prompt(messages: list[dict[str, str]], tokenizer_path: str | None) -> dict[str, Any]:
    """``tokenized_prompt`` (chat template applied here) when the tokenizer is known,
    else ``messages`` for Ray's chat-template and tokenize stages."""
    if tokenizer_path is None:
        return {"messages": messages}
    from ctray.llm.vllm_requests import load_tokenizer, prompt_ids

    return {"tokenized_prompt": prompt_ids(load_tokenizer(tokenizer_path), messages)}


def _dummy(tokenizer_path: str | None = None) -> dict[str, Any]:
    return {**_prompt(DUMMY_MESSAGES, tokenizer_path),
            "sampling_params": {"max_tokens": 1, "temperature": 0.0, "top_p": 1.0,
                                "seed": None, "stop": None}}


def vllm_preprocess(stage, row: dict[str, Any], tokenizer_path: str | None = None) -> dict[str, Any]:
    """Row -> prompt + ``sampling_params`` (Ray keeps the row's own columns)."""
    out: dict[str, Any] = {ORIGINAL_COLUMNS_KEY: [k for k in row if k != ORIGINAL_COLUMNS_KEY]}
    if _has_error(row):
        out.update(_dummy(tokenizer_path))
        return out
    try:
        request = stage.task.build_request(row)
        prompt = _prompt(request.messages, tokenizer_path)
    except Exception as exc:  # noqa: BLE001 - bad input is a row error
        marked = mark_error({}, stage.name, exc)
        out.update(marked)
        out.update(_dummy(tokenizer_path))
        return out
    out.update(prompt)
    out["sampling_params"] = sampling_params(request)
    return out


def _original_row(data: dict[str, Any]) -> dict[str, Any]:
    names = data.get(ORIGINAL_COLUMNS_KEY)
    if names is None:  # not one of our rows: keep what is there, minus Ray's marker
        return {k: v for k, v in data.items() if k != INFERENCE_ERROR_KEY}
    row = {name: data.get(name) for name in list(names)}
    for col in ERROR_COLUMNS:  # errors set in preprocess were not original columns
        if data.get(col) is not None:
            row[col] = data[col]
    return row


def _complete(stage, row: dict[str, Any]) -> dict[str, Any]:
    """Same columns for every output row, whatever happened to it (one Arrow schema)."""
    for col in tuple(stage.output_columns) + ERROR_COLUMNS:
        row.setdefault(col, None)
    return row


def vllm_response(data: dict[str, Any]) -> LLMResponse:
    """Ray's engine output for one row as an LLMResponse."""
    error = data.get(INFERENCE_ERROR_KEY) or None
    structured = (data.get("sampling_params") or {}).get("structured_outputs")
    return LLMResponse(
        text=data.get("generated_text") or "",
        prompt_tokens=int(data.get("num_input_tokens") or 0),
        completion_tokens=int(data.get("num_generated_tokens") or 0),
        error=str(error) if error else None,
        meta={"guided": bool(structured)},
    )


def finished_row(stage, data: dict[str, Any]) -> dict[str, Any]:
    """Engine output (Ray's data dict for one row) -> the stage's output row or error row."""
    row = _original_row(data)
    if _has_error(row):
        # Failed before inference; the dummy answer is ignored.
        return _complete(stage, row)
    response = vllm_response(data)
    result = stage.finish(row, response)
    if isinstance(result, RowError):
        result = stage.error_row(row, response, result)
    return _complete(stage, result)


def vllm_postprocess(stage, data: dict[str, Any]) -> dict[str, Any]:
    """Postprocess of the processor. Its rows share a block with the raw rows of
    failed requests (which skip postprocess), and a block has one schema, so every
    row gains the others' columns as nulls on the way to ``vllm_finalize``; the
    list of the columns this row really has travels along to undo that."""
    out = finished_row(stage, data)
    out[OUTPUT_COLUMNS_KEY] = list(out)
    return out


def vllm_finalize(stage, row: dict[str, Any]) -> dict[str, Any]:
    """After the processor: rows vLLM failed on skipped postprocess (Ray passes them
    through raw, helper columns and all) and get the same treatment here; every row
    keeps exactly the stage's columns."""
    if row.get(INFERENCE_ERROR_KEY):
        return finished_row(stage, row)
    names = row.get(OUTPUT_COLUMNS_KEY)
    if names is None:  # not from vllm_postprocess: drop what we know is ours or vLLM's
        return {k: v for k, v in row.items() if k not in HELPER_COLUMNS}
    return {name: row.get(name) for name in list(names)}


def _build_processor(config, **kwargs):
    from ray.data.llm import build_processor

    return build_processor(config, **kwargs)


def apply_vllm_stage(stage, ds):
    """Add ``stage`` (an LLMStage) to ``ds`` as a ray.data.llm vLLM processor."""
    from ctray.llm.vllm_engine import check_vllm_importable, resolved_device

    check_vllm_importable()
    cfg = stage.backend_config
    source = model_source(cfg)  # converts a GGUF once, on the driver
    config = build_vllm_config(cfg, resolved_device(cfg), source)
    processor = _build_processor(
        config,
        preprocess=partial(vllm_preprocess, stage,
                           tokenizer_path=source if pretokenized(source) else None),
        postprocess=partial(vllm_postprocess, stage),
        preprocess_map_kwargs=dict(LIGHT_TASK),
        postprocess_map_kwargs=dict(LIGHT_TASK),
    )
    return processor(ds).map(partial(vllm_finalize, stage), **LIGHT_TASK)
