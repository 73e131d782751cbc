"""What this CPU can do fast: its model, the vector instructions that matter, and native bf16.

CPUs differ between machines that run unweather: some have AVX-512 with bf16 (or AMX) and run
`--precision bf16` faster than fp32; AVX2-only CPUs emulate bf16 and run it many times slower. The
answer comes from the CPU itself (/proc/cpuinfo's flags, and torch's own kernel choice), never from a
table measured elsewhere.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

# /proc/cpuinfo flags that decide which kernels run fast, by the name results files use.
FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_tile": "amx_tile",
}


@dataclass(frozen=True)
class CpuCapabilities:
    """The CPU's model, its relevant flags and torch's kernel level (e.g. "AVX2", "AVX512")."""

    model: str
    machine: str
    flags: dict[str, bool] = field(default_factory=dict)
    torch_capability: str | None = None

    @property
    def native_bf16(self) -> bool:
        """True where bf16 matrix products run in hardware (AVX-512 bf16 or AMX), not emulated."""
        return self.flags.get("avx512_bf16", False) or self.flags.get("amx_bf16", False)

    @property
    def native_int8(self) -> bool:
        """True where int8 dot products run in hardware (VNNI or AMX)."""
        return any(self.flags.get(f, False) for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

    @property
    def kind(self) -> str:
        """A short name of the CPU's class for tables: "AMX", "AVX-512 bf16", "AVX-512", "AVX2" or "other"."""
        if self.flags.get("amx_bf16"):
            return "AMX"
        if self.flags.get("avx512_bf16"):
            return "AVX-512 bf16"
        if self.flags.get("avx512f"):
            return "AVX-512"
        if self.flags.get("avx2"):
            return "AVX2"
        return "other"

    def to_dict(self) -> dict[str, object]:
        """The capabilities as plain data (every results JSON carries them)."""
        return {**asdict(self), "native_bf16": self.native_bf16, "native_int8": self.native_int8, "kind": self.kind}

    def key(self) -> str:
        """A stable text naming this CPU and its flags (for caches of measurements)."""
        on = ",".join(sorted(name for name, present in self.flags.items() if present))
        return f"{self.model}|{self.machine}|{on}|{self.torch_capability}"


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """Return (model name, flags) from the text of /proc/cpuinfo (first processor)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def detect(cpuinfo: str | None = None) -> CpuCapabilities:
    """Read this machine's CPU (or the given /proc/cpuinfo text)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = parse_cpuinfo(cpuinfo)
    capability = None
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        pass
    return CpuCapabilities(
        model=model or platform.processor() or platform.machine(),
        machine=platform.machine(),
        flags={name: flag in flags for name, flag in FLAGS.items()},
        torch_capability=capability,
    )


def bf16_refusal(caps: CpuCapabilities) -> str | None:
    """Why `--precision bf16` should not run on the CPU here (None where it may)."""
    if caps.native_bf16:
        return None
    return (f"this CPU ({caps.model or caps.machine}, {caps.kind}) has no native bf16 (no AVX-512 bf16 or AMX): "
            f"bf16 would be emulated, many times slower than fp32; use --precision fp32 (or int8), "
            f"or --allow-slow-precision to run it anyway")


def describe(data: dict[str, object]) -> str:
    """One line naming a CPU and what it runs fast, from `CpuCapabilities.to_dict()` (a results file's "cpu").

    Results written before flags were recorded give the model alone.
    """
    model = str(data.get("model") or "unknown CPU")
    flags = data.get("flags")
    if not isinstance(flags, dict):
        return model
    present = [name for name in FLAGS if flags.get(name)]
    bf16, int8 = bool(data.get("native_bf16")), bool(data.get("native_int8"))
    native = ("native bf16 and int8" if bf16 and int8 else "native bf16, no native int8" if bf16
              else "native int8, no native bf16" if int8 else "no AVX-512 bf16, VNNI or AMX: no native bf16 or int8")
    parts = [f"{data.get('kind', '?')}: {' '.join(present) or 'none of ' + ', '.join(FLAGS)}", native]
    if data.get("torch_capability"):
        parts.append(f"torch kernels {data['torch_capability']}")
    return f"{model} ({'; '.join(parts)})"
