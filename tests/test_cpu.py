"""CPU capability detection: flags from /proc/cpuinfo, bf16 refused where it is emulated."""

from __future__ import annotations

from unweather import cpu

AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2
"""
SAPPHIRE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_avx2_only_cpu_has_no_native_bf16_and_is_refused_with_a_reason():
    caps = cpu.detect(AVX2_EPYC)
    assert caps.model == "AMD EPYC" and caps.kind == "AVX2"
    assert caps.flags["avx2"] and not caps.flags["avx512f"]
    assert not caps.native_bf16 and not caps.native_int8
    reason = cpu.bf16_refusal(caps)
    assert reason and "no native bf16" in reason and "fp32" in reason and "\n" not in reason


def test_amx_cpu_runs_bf16_and_int8_natively():
    caps = cpu.detect(SAPPHIRE)
    assert caps.kind == "AMX" and caps.native_bf16 and caps.native_int8
    assert cpu.bf16_refusal(caps) is None
    assert caps.key() != cpu.detect(AVX2_EPYC).key()
    data = caps.to_dict()
    assert data["native_bf16"] is True and data["flags"]["amx_bf16"] is True


def test_this_machine_is_described():
    caps = cpu.detect()
    assert caps.machine and caps.torch_capability  # torch names its kernel level on every CPU
    assert set(caps.flags) == set(cpu.FLAGS)
