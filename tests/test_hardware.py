"""The CPU feature -> dtype rule (issue 20): bfloat16 only where the CPU has it natively."""

from __future__ import annotations

import pytest

from ctray.hardware import CpuInfo, cpu_dtype, machine_info, parse_cpuinfo, this_cpu

# Flag lines as /proc/cpuinfo prints them on the two x86 kinds ctray runs on.
XEON_NO_BF16 = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU "
                "@ 2.80GHz\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd "
                "avx512bw avx512vl avx512_vnni\n\nprocessor\t: 1\nmodel name\t: other\n")
EPYC_BF16 = ("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx avx2 avx512f "
             "avx512_bf16 avx512_vnni avx512vl\n")
SAPPHIRE_RAPIDS_AMX = ("model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f "
                       "amx_bf16 amx_tile amx_int8\n")
ZEN3_AVX2 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n"
GRAVITON3 = ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 "
             "sha2 crc32 atomics sve i8mm bf16\nCPU implementer\t: 0x41\n")
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"


@pytest.mark.parametrize("text, arch, dtype", [
    (XEON_NO_BF16, "x86_64", "float32"),
    (ZEN3_AVX2, "x86_64", "float32"),
    (EPYC_BF16, "x86_64", "bfloat16"),
    (SAPPHIRE_RAPIDS_AMX, "x86_64", "bfloat16"),
    (GRAVITON3, "aarch64", "bfloat16"),
    (GRAVITON2, "aarch64", "float32"),
])
def test_auto_dtype_follows_native_bf16(text, arch, dtype):
    cpu = parse_cpuinfo(text, arch)
    choice = cpu_dtype("auto", cpu)
    assert choice.dtype == dtype
    assert ("natively" in choice.reason) == (dtype == "bfloat16")


def test_cpuinfo_parsing_takes_the_first_processor_and_the_deciding_flags():
    cpu = parse_cpuinfo(XEON_NO_BF16, "x86_64")
    assert cpu.model == "Intel(R) Xeon(R) CPU @ 2.80GHz"
    assert cpu.reported_flags() == ["avx2", "avx512_vnni", "avx512f"]
    assert not cpu.has_native_bf16()
    # An x86 flag named like Arm's must not count on x86, and vice versa.
    assert not CpuInfo("x", "x86_64", frozenset({"bf16"})).has_native_bf16()
    assert not CpuInfo("x", "aarch64", frozenset({"avx512_bf16"})).has_native_bf16()


def test_explicit_dtype_wins_over_the_cpu_and_aliases_resolve():
    no_bf16 = parse_cpuinfo(ZEN3_AVX2, "x86_64")
    assert cpu_dtype("bf16", no_bf16).dtype == "bfloat16"
    assert cpu_dtype("fp32", parse_cpuinfo(EPYC_BF16, "x86_64")).dtype == "float32"
    assert cpu_dtype("bfloat16", no_bf16).reason == "set explicitly"


def test_vllm_engine_args_and_manifest_carry_the_resolved_dtype(monkeypatch):
    import ctray.hardware as hardware
    from ctray.llm.config import backend_config
    from ctray.llm.registry import describe
    from ctray.llm.vllm_engine import engine_args

    cfg = backend_config(kind="vllm", model="m", device="cpu")
    for text, want in ((ZEN3_AVX2, "float32"), (EPYC_BF16, "bfloat16")):
        monkeypatch.setattr(hardware, "this_cpu", lambda t=text: parse_cpuinfo(t, "x86_64"))
        assert engine_args(cfg, "cpu")["dtype"] == want
        described = describe(cfg)
        assert described["dtype"] == want and described["dtype_reason"].startswith("auto")
    assert "dtype" not in engine_args(cfg, "gpu")  # GPU: the model's own dtype


def test_hf_and_training_use_the_same_rule(monkeypatch):
    import ctray.hardware as hardware
    from ctray.llm.config import backend_config
    from ctray.llm.registry import engine
    from ctray.train.sft import amp_flags

    hf = backend_config(kind="hf", model="m")
    monkeypatch.setattr(hardware, "this_cpu", lambda: parse_cpuinfo(ZEN3_AVX2, "x86_64"))
    assert engine(hf)["dtype"] == "float32" and amp_flags("auto") == {}
    monkeypatch.setattr(hardware, "this_cpu", lambda: parse_cpuinfo(EPYC_BF16, "x86_64"))
    assert engine(hf)["dtype"] == "bfloat16" and amp_flags("auto") == {"bf16": True}


def test_every_manifest_names_this_machines_cpu():
    from ctray.io.manifest import job_manifest

    machine = job_manifest("j", "out", {}, 1.0)["machine"]
    assert machine == machine_info() and machine["cpu_model"] == this_cpu().model
    assert machine["native_bf16"] == (cpu_dtype().dtype == "bfloat16")
