"""vLLM through ``ray.data.llm``: the only module that touches ray.data.llm / vllm.

An :class:`~ctray.llm.task.LLMStage` with ``backend.kind == "vllm"`` does not run in
a StageWorker actor; ``apply_vllm_stage`` turns it into a ``ray.data.llm`` processor:

    preprocess  (vllm_preprocess):  row -> messages + sampling_params
    chat template -> tokenize -> vLLM engine -> detokenize   (Ray's stages, on GPU)
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

import json
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


def engine_kwargs(cfg: BackendConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        # Every row of a task shares its long instruction prefix: prefix caching
        # computes that KV once per engine instead of once per report.
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
    }
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    if cfg.revision:
        kwargs["revision"] = cfg.revision
        kwargs["tokenizer_revision"] = cfg.revision
    if cfg.seed is not None:
        kwargs["seed"] = cfg.seed
    kwargs.update(cfg.engine_kwargs)  # explicit engine settings win
    return kwargs


def model_source(cfg: BackendConfig) -> str:
    if cfg.gguf_file:
        # vLLM loads a GGUF from the file path (engine_kwargs should then name the
        # base model's tokenizer, e.g. {"tokenizer": "google/gemma-3-270m"}).
        return f"{cfg.model.rstrip('/')}/{cfg.gguf_file}"
    return cfg.model


def build_vllm_config(cfg: BackendConfig):
    """The ``vLLMEngineProcessorConfig`` for a backend configuration."""
    from ray.data.llm import vLLMEngineProcessorConfig

    kwargs: dict[str, Any] = {}
    if cfg.accelerator_type:
        kwargs["accelerator_type"] = cfg.accelerator_type
    return vLLMEngineProcessorConfig(
        model_source=model_source(cfg),
        engine_kwargs=engine_kwargs(cfg),
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        # One bad row (too long, engine error) must not kill the job: it comes back
        # with __inference_error__ set, which vllm_finalize turns into a row error.
        should_continue_on_error=True,
        chat_template_stage=True,
        tokenize_stage=True,
        detokenize_stage=True,
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
    params: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": list(request.stop) if request.stop else None,
    }
    if request.choices:
        params["structured_outputs"] = {"choice": list(request.choices)}
    elif request.json_schema is not None:
        # As a JSON string (vLLM accepts str or dict): schemas differ between tasks,
        # and a nested dict would have to share one Arrow struct type across rows.
        params["structured_outputs"] = {"json": json.dumps(request.json_schema, sort_keys=True)}
    return params


def _dummy() -> dict[str, Any]:
    return {"messages": DUMMY_MESSAGES,
            "sampling_params": {"max_tokens": 1, "temperature": 0.0, "top_p": 1.0,
                                "seed": None, "stop": None}}


def vllm_preprocess(stage, row: dict[str, Any]) -> dict[str, Any]:
    """Row -> ``messages`` + ``sampling_params`` (Ray keeps the row's own columns)."""
    out: dict[str, Any] = {ORIGINAL_COLUMNS_KEY: [k for k in row if k != ORIGINAL_COLUMNS_KEY]}
    if _has_error(row):
        out.update(_dummy())
        return out
    try:
        request = stage.task.build_request(row)
    except Exception as exc:  # noqa: BLE001 - bad input is a row error
        marked = mark_error({}, stage.name, exc)
        out.update(marked)
        out.update(_dummy())
        return out
    out["messages"] = request.messages
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
    config = build_vllm_config(stage.backend_config)
    processor = _build_processor(
        config,
        preprocess=partial(vllm_preprocess, stage),
        postprocess=partial(vllm_postprocess, stage),
        preprocess_map_kwargs=dict(LIGHT_TASK),
        postprocess_map_kwargs=dict(LIGHT_TASK),
    )
    return processor(ds).map(partial(vllm_finalize, stage), **LIGHT_TASK)
