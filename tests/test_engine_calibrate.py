"""`backend="auto"` on the CPU: the backend timed fastest here, cached by CPU, model, precision and versions.

Fake engines (a fixed sleep per call) check the rule; the identity network on 32x32 frames checks the
loader end to end. Which backend is faster on this machine is never asserted.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch

import unweather.engine as engines
from unweather import cpu
from unweather.engine import calibrate
from unweather.engine.base import Engine
from unweather.engine.loader import measured_cpu_backend
from unweather.engine.onnxruntime_backend import OnnxRuntimeEngine
from unweather.engine.torch_backend import TorchEngine
from unweather.errors import UnweatherError

AVX2 = "model name\t: AMD EPYC\nflags\t\t: avx2 fma f16c\n"
AMX = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n"
TINY = calibrate.CalibrationConfig(width=32, height=32, calls_per_turn=2, min_turns=2, max_turns=3, budget_s=0.0)
REAL_MEASURE = calibrate.measure
REAL_DETECT = cpu.detect


@pytest.fixture(autouse=True)
def _packaged_cpu_backend():
    """Overrides conftest's fixture of this name: here the timing runs for real."""


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """Exported graphs shared by this module's tests (one export of identity, not one per test)."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture
def cache(tmp_path, monkeypatch, onnx_cache):
    """A fresh unweather cache (no measured choices) with the module's exported graphs, and tiny frames."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "onnx").symlink_to(onnx_cache, target_is_directory=True)
    monkeypatch.setenv("UNWEATHER_CACHE", str(root))
    monkeypatch.setattr(calibrate, "DEFAULT", TINY)
    return root


def _fake_cpu(monkeypatch, text: str) -> cpu.CpuCapabilities:
    caps = REAL_DETECT(text)
    monkeypatch.setattr(cpu, "detect", lambda cpuinfo=None: caps)
    return caps


def _choices(cache) -> list:
    folder = cache / "cpu_backend"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


class Sleepy(Engine):
    """Returns its input after `delay` seconds; counts calls and knows whether it was closed."""

    def __init__(self, name: str, delay: float) -> None:
        super().__init__("cpu", "fp32", 1)
        self.backend, self.delay, self.calls, self.closed = name, delay, 0, False

    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.delay)
        return frames

    def close(self) -> None:
        self.closed = True


def _openers(made: dict, delays: dict[str, float]) -> dict:
    def opener(name: str):
        def open_(net):
            made[name] = Sleepy(name, delays[name])
            return made[name]
        return open_
    return {name: opener(name) for name in delays}


def data_calls(cache) -> dict:
    (path,) = (cache / "cpu_backend").glob("*.json")
    return json.loads(path.read_text())["calls"]


def _refuse(net):
    raise AssertionError("a cached choice must not open or time any backend")


# ---- the rule, with fake engines ------------------------------------------------------------------------


def test_first_time_times_every_backend_caches_the_winner_and_hands_it_back_open(tmp_path):
    net = torch.nn.Identity()
    made: dict = {}
    decision = calibrate.calibrated_choice(net, "fp32", _openers(made, {"torch": 0.02, "onnxruntime": 0.0}),
                                           tmp_path, "cpu-a", "CPU A", TINY)
    assert decision.backend == "onnxruntime" and decision.engine is made["onnxruntime"]
    assert made["torch"].closed and not made["onnxruntime"].closed
    # One untimed call at the start, then min_turns turns of one untimed and calls_per_turn timed calls.
    assert made["torch"].calls == made["onnxruntime"].calls == 1 + TINY.min_turns * (1 + TINY.calls_per_turn)
    assert data_calls(tmp_path) == {"torch": 4, "onnxruntime": 4}
    files = sorted((tmp_path / "cpu_backend").glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["backend"] == "onnxruntime" and data["key"]["cpu"] == "cpu-a"
    assert data["key"]["precision"] == "fp32" and data["key"]["size"] == "32x32"
    assert data["key"]["torch"] == torch.__version__ and "onnxruntime" in data["key"]
    assert data["median_ms"]["torch"] > data["median_ms"]["onnxruntime"]
    assert "just now" in decision.reason and "torch" in decision.reason

    again = calibrate.calibrated_choice(net, "fp32", {"torch": _refuse, "onnxruntime": _refuse}, tmp_path, "cpu-a",
                                        "CPU A", TINY)
    assert again.backend == "onnxruntime" and again.engine is None and "cached" in again.reason


@pytest.mark.parametrize("change", ["cpu", "precision", "size", "arch"])
def test_a_different_key_times_again(tmp_path, change):
    made: dict = {}
    delays = {"torch": 0.0, "onnxruntime": 0.02}
    calibrate.calibrated_choice(torch.nn.Identity(), "fp32", _openers(made, delays), tmp_path, "cpu-a", "A", TINY)
    net = torch.nn.Identity()
    if change == "arch":
        net.arch = "other"
    made.clear()
    calibrate.calibrated_choice(net, "fp16" if change == "precision" else "fp32", _openers(made, delays), tmp_path,
                                "cpu-b" if change == "cpu" else "cpu-a", "B",
                                calibrate.CalibrationConfig(64, 32, 2, 2, 3, 0.0) if change == "size" else TINY)
    assert set(made) == {"torch", "onnxruntime"}  # timed again
    assert len(list((tmp_path / "cpu_backend").glob("*.json"))) == 2


def test_a_backend_that_fails_loses_and_none_running_gives_none(tmp_path, caplog):
    def broken(net):
        raise RuntimeError("no kernel for this\nsecond line")

    made: dict = {}
    openers = {**_openers(made, {"torch": 0.0}), "onnxruntime": broken}
    decision = calibrate.calibrated_choice(torch.nn.Identity(), "fp32", openers, tmp_path, "k", "K", TINY)
    assert decision.backend == "torch" and decision.engine is made["torch"]
    data = json.loads(next((tmp_path / "cpu_backend").glob("*.json")).read_text())
    assert data["failed"] == {"onnxruntime": "no kernel for this"}
    with caplog.at_level(logging.WARNING, logger="unweather"):
        none = calibrate.calibrated_choice(torch.nn.Identity(), "fp16", {"torch": broken, "onnxruntime": broken},
                                           tmp_path, "k", "K", TINY)
    assert none is None and "no CPU backend ran" in caplog.text


def test_an_unreadable_or_foreign_cache_file_is_timed_again(tmp_path):
    net = torch.nn.Identity()
    key = calibrate.choice_key("k", net, "fp32", TINY)
    path = calibrate.choice_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    for text in ("{not json", json.dumps({"key": {**key, "torch": "0.0"}, "backend": "torch"}),
                 json.dumps({"key": key, "backend": "tensorrt"})):
        path.write_text(text)
        made: dict = {}
        decision = calibrate.calibrated_choice(net, "fp32", _openers(made, {"torch": 0.0, "onnxruntime": 0.0}),
                                               tmp_path, "k", "K", TINY)
        assert set(made) == {"torch", "onnxruntime"} and decision.engine is not None
        assert json.loads(path.read_text())["key"] == key


# ---- through unweather.engine.open -----------------------------------------------------------------------


def test_auto_on_the_cpu_times_once_then_reuses_the_cached_choice(cache, monkeypatch, caplog):
    _fake_cpu(monkeypatch, AVX2)
    with caplog.at_level(logging.INFO, logger="unweather"):
        first = engines.open("identity", device="cpu")
    files = _choices(cache)
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["key"]["cpu"] == cpu.detect().key() and data["key"]["arch"] == "identity"
    assert set(data["median_ms"]) == {"torch", "onnxruntime"}
    assert first.backend == data["backend"] and first.precision == "fp32"
    x = torch.rand(1, 3, 20, 28)
    torch.testing.assert_close(first(x), x)
    assert "calibrated the CPU backend for identity fp32 on AMD EPYC (AVX2) at 32x32" in caplog.text

    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: pytest.fail("timed again despite the cache"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unweather"):
        second = engines.open("identity", device="cpu")
    assert second.backend == data["backend"] and "timed fastest on this CPU" in caplog.text
    assert _choices(cache) == files

    _fake_cpu(monkeypatch, AMX)  # another CPU: another key, timed again
    monkeypatch.setattr(calibrate, "measure", REAL_MEASURE)
    engines.open("identity", device="cpu")
    assert len(_choices(cache)) == 2


def test_a_video_network_is_timed_step_by_step_on_both_backends(cache, monkeypatch):
    _fake_cpu(monkeypatch, AVX2)
    engine = engines.open("video_small", device="cpu")
    (path,) = _choices(cache)
    data = json.loads(path.read_text())
    assert data["failed"] == {} and set(data["median_ms"]) == {"torch", "onnxruntime"}
    assert engine.stateful and engine.backend == data["backend"]
    x = torch.rand(1, 3, 20, 28)
    out, (bg, weight) = engine.step(x, engine.empty_state(x))
    assert out.shape == x.shape and bg.shape == (1, 6, 20, 28) and weight.shape == (1, 1, 20, 28)
    assert float(weight.min()) > 0


@pytest.mark.parametrize("backend, kind", [("onnxruntime", OnnxRuntimeEngine), ("torch", TorchEngine)])
def test_the_cached_choice_decides_not_the_packaged_one(cache, monkeypatch, backend, kind):
    caps = _fake_cpu(monkeypatch, AVX2)
    from unweather.engine.sources import load_network, resolve

    key = calibrate.choice_key(caps.key(), load_network(resolve("identity")), "fp32", TINY)
    path = calibrate.choice_path(cache, key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": key, "backend": backend, "median_ms": {}}))
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: pytest.fail("timed despite the cache"))
    assert isinstance(engines.open("identity", device="cpu"), kind)


def test_an_explicit_backend_or_device_skips_the_timing(cache, monkeypatch):
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: pytest.fail("timed for an explicit backend"))
    assert isinstance(engines.open("identity", backend="torch", device="cpu"), TorchEngine)
    assert isinstance(engines.open("identity", backend="onnxruntime", device="cpu"), OnnxRuntimeEngine)
    # Options of one backend leave it the only candidate.
    assert isinstance(engines.open("identity", device="cpu", threads=1), OnnxRuntimeEngine)
    assert _choices(cache) == []


def test_timing_that_fails_falls_back_on_the_packaged_choice(cache, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("out of file handles")

    monkeypatch.setattr(calibrate, "measure", broken)
    with caplog.at_level(logging.WARNING, logger="unweather"):
        engine = engines.open("identity", device="cpu")
    assert engine.backend == measured_cpu_backend("identity", "fp32")[0]
    assert "could not time the CPU backends (RuntimeError: out of file handles)" in caplog.text
    assert _choices(cache) == []


def test_bf16_is_refused_on_a_cpu_without_native_bf16_unless_allowed(cache, monkeypatch):
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: pytest.fail("bf16 has one CPU backend: no timing"))
    _fake_cpu(monkeypatch, AVX2)
    with pytest.raises(UnweatherError, match=r"no native bf16 .* use --precision fp32"):
        engines.open("identity", precision="bf16", device="cpu")
    engine = engines.open("identity", precision="bf16", device="cpu", allow_slow_precision=True)
    assert engine.backend == "torch" and engine.precision == "bf16"
    _fake_cpu(monkeypatch, AMX)
    assert engines.open("identity", precision="bf16", device="cpu").precision == "bf16"
    assert _choices(cache) == []
