"""What this machine's CPU computes natively, and the dtype that follows from it.

One rule for every CPU path (vLLM's CPU engine, the ``hf`` backend, training's
autocast): bfloat16 only where the CPU has bf16 arithmetic in hardware (x86
``avx512_bf16`` or ``amx_bf16``; Arm ``bf16`` / macOS ``FEAT_BF16``), float32
elsewhere. Without native bf16 every bf16 matmul is emulated through float32
conversions: vLLM's CPU engine ran the offline Gemma 3 270M 2.9x slower in bfloat16
than in float32 on an Intel Xeon with AVX-512F but no AVX-512 BF16 (issue 20), while
on an AMD EPYC with AVX-512 BF16 bfloat16 is the fast choice.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass, field

#: /proc/cpuinfo flag (x86 "flags", Arm "Features") -> what it means for bf16
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)
#: the flags a manifest reports (the ones that decide dtype and kernel choice)
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
                  "asimd", "sve", "bf16", "i8mm")
#: spellings users write for the dtypes ctray resolves
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "float": "float32",
                 "bfloat16": "bfloat16", "bf16": "bfloat16",
                 "float16": "float16", "fp16": "float16", "half": "float16"}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as /proc/cpuinfo (or sysctl on macOS) describes it."""

    model: str
    arch: str
    flags: frozenset[str] = field(default_factory=frozenset)

    def has_native_bf16(self) -> bool:
        wanted = ARM_BF16_FLAGS if self.arch in ("aarch64", "arm64") else X86_BF16_FLAGS
        return any(f in self.flags for f in wanted)

    def reported_flags(self) -> list[str]:
        return sorted(f for f in REPORTED_FLAGS if f in self.flags)


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why. The reason names the rule, not the CPU, so that two
    machines that resolve alike agree on a run's fingerprint; the CPU itself goes into
    every manifest (:func:`machine_info`)."""

    dtype: str
    reason: str

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "dtype_reason": self.reason}


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """``/proc/cpuinfo`` text -> :class:`CpuInfo` (first processor's model and flags)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model or arch, arch, flags)


def _macos_cpu(arch: str) -> CpuInfo:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    flags = {"bf16"} if sysctl("hw.optional.arm.FEAT_BF16") == "1" else set()
    return CpuInfo(sysctl("machdep.cpu.brand_string") or arch, arch, frozenset(flags))


@functools.lru_cache(maxsize=1)
def this_cpu() -> CpuInfo:
    """This machine's CPU (cached: it does not change while the process runs)."""
    arch = platform.machine().lower()
    if platform.system() == "Darwin":
        return _macos_cpu(arch)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return parse_cpuinfo(f.read(), arch)
    except OSError:
        return CpuInfo(platform.processor() or arch, arch)


def cpu_dtype(requested: str = "auto", cpu: CpuInfo | None = None) -> DtypeChoice:
    """The dtype to compute in on this CPU. ``auto``: bfloat16 where the CPU has native
    bf16, float32 elsewhere; an explicit dtype is kept (and the reason says so)."""
    requested = (requested or "auto").lower()
    if requested != "auto":
        return DtypeChoice(DTYPE_ALIASES.get(requested, requested), "set explicitly")
    if (cpu or this_cpu()).has_native_bf16():
        return DtypeChoice("bfloat16", "auto: the CPU computes bf16 natively")
    return DtypeChoice("float32", "auto: no native bf16 on this CPU (emulated bf16 is about "
                       "3x slower than float32)")


def machine_info(cpu: CpuInfo | None = None) -> dict:
    """The CPU facts a manifest records: model, the deciding flags, native bf16."""
    cpu = cpu or this_cpu()
    return {"cpu_model": cpu.model, "arch": cpu.arch, "cpu_flags": cpu.reported_flags(),
            "native_bf16": cpu.has_native_bf16(), "cpus": os.cpu_count()}
