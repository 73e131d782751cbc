"""unweather.engine: model resolution, backend choice, the torch and ONNX Runtime engines, tiling."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from torch import nn

import unweather.engine as engines
from unweather.engine import sources
from unweather.engine.base import Engine
from unweather.engine.loader import choose
from unweather.engine.onnxruntime_backend import OnnxRuntimeEngine
from unweather.engine.tiling import tile_starts, tiled
from unweather.engine.torch_backend import TorchEngine
from unweather.errors import UnweatherError
from unweather.models import PadCrop, build, save


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """An empty shipped-weights folder in tmp_path."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(sources, "weights_dir", lambda: folder)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNWEATHER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _student(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return build("student_small").eval()


# ---- resolution of every kind of model argument -----------------------------------------------------


def test_registry_name_opens_torch_engine_that_pads_and_crops():
    engine = engines.open("student_small", backend="torch", device="cpu")
    assert isinstance(engine, TorchEngine) and engine.precision == "fp32" and engine.multiple == 16
    x = torch.rand(2, 3, 37, 50)
    out = engine(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_registry_name_is_the_same_network_every_time_without_touching_the_global_seed():
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    a = sources.load_network(sources.resolve("student_small"))
    assert torch.equal(torch.rand(3), expected_next)
    b = sources.load_network(sources.resolve("student_small"))
    assert sources.network_digest(a) == sources.network_digest(b)  # one cached ONNX export per name


def test_checkpoint_safetensors_and_pth_load_the_same_weights(tmp_path):
    net = _student()
    save(net, tmp_path / "s.safetensors")
    torch.save(net.state_dict(), tmp_path / "s.pth")
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        expected = net(x).clamp(0, 1)  # engines clamp to [0, 1]
    for name in ("s.safetensors", "s.pth"):
        engine = engines.open(tmp_path / name, backend="torch", device="cpu")
        torch.testing.assert_close(engine(x), expected)


def test_shipped_weights_missing_is_one_clear_error(weights):
    with pytest.raises(UnweatherError, match="shipped 'quality' weights are not in this installation"):
        engines.open("quality", backend="torch")


def test_shipped_weights_load_when_present(weights):
    net = _student()
    save(net, weights / "fast.safetensors")
    engine = engines.open("fast", backend="torch", device="cpu")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(engine(x), net(x).clamp(0, 1))


def test_default_model_prefers_device_weights_and_warns_on_every_fallback(weights, caplog):
    with caplog.at_level(logging.WARNING, logger="unweather"):
        assert engines.default_model("cpu") == "identity"
    assert "no trained weights" in caplog.text
    caplog.clear()
    save(_student(), weights / "quality.safetensors")
    with caplog.at_level(logging.WARNING, logger="unweather"):
        assert engines.default_model("cpu") == "quality"
    assert "'fast' weights are not shipped" in caplog.text
    caplog.clear()
    save(_student(), weights / "fast.safetensors")
    with caplog.at_level(logging.WARNING, logger="unweather"):
        assert engines.default_model("cpu") == "fast"
        assert engines.default_model("cuda") == "quality"
    assert caplog.text == ""


@pytest.mark.parametrize("model, message", [
    ("missing.onnx", "ONNX file not found: missing.onnx"),
    ("missing.safetensors", "checkpoint not found: missing.safetensors"),
    ("missing.plan", "TensorRT engine file not found: missing.plan"),
    ("no_such_model", "unknown model 'no_such_model'"),
])
def test_bad_model_arguments_are_one_clear_error(model, message):
    with pytest.raises(UnweatherError, match=message):
        engines.open(model)


def test_existing_file_with_unknown_suffix(tmp_path):
    path = tmp_path / "weights.xyz"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(UnweatherError, match="cannot tell what"):
        engines.open(str(path))


def test_garbage_checkpoint_and_onnx_are_clear_errors(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(UnweatherError, match="bad.pth"):
        engines.open(tmp_path / "bad.pth", backend="torch")
    with pytest.raises(UnweatherError):
        engines.open(tmp_path / "bad.onnx", backend="onnxruntime")


def test_engine_file_without_tensorrt_is_a_clear_error(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 64)
    if torch.cuda.is_available():
        pytest.skip("this checks the message on machines without a GPU")
    with pytest.raises(UnweatherError, match="(TensorRT|CUDA)"):
        engines.open(plan)


def test_unknown_option_names_the_backend_options():
    with pytest.raises(UnweatherError, match="threads do not apply to the torch backend"):
        engines.open("identity", backend="torch", threads=2)


def test_cuda_without_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    with pytest.raises(UnweatherError, match="no CUDA GPU"):
        engines.open("identity", backend="torch", device="cuda")
    with pytest.raises(UnweatherError, match="no CUDA GPU"):
        engines.open("identity", device="cuda")


def test_frames_on_another_device_or_of_wrong_shape_are_refused():
    engine = engines.open("identity", backend="torch", device="cpu")
    with pytest.raises(UnweatherError, match=r"\(N, 3, H, W\)"):
        engine(torch.rand(3, 16, 16))
    with pytest.raises(UnweatherError, match=r"\(N, 3, H, W\)"):
        engine(torch.rand(1, 4, 16, 16))


# ---- the backend choice -----------------------------------------------------------------------------

_NO_GPU = {"cuda": False, "tensorrt": False, "ort_cuda": False}
_FULL_GPU = {"cuda": True, "tensorrt": True, "ort_cuda": True}


def test_auto_prefers_tensorrt_then_torch_cuda():
    c = choose("registry", "student_small", "auto", None, None, **_FULL_GPU)
    assert (c.backend, c.device.type, c.precision) == ("tensorrt", "cuda", "fp16")
    c = choose("registry", "student_small", "auto", None, None, cuda=True, tensorrt=False, ort_cuda=False)
    assert (c.backend, c.device.type, c.precision) == ("torch", "cuda", "fp16")


def test_auto_on_cpu_uses_the_measured_choice_and_says_so():
    from unweather.engine.loader import measured_cpu_backend

    expected, why = measured_cpu_backend("student_small", "fp32")
    c = choose("registry", "student_small", "auto", None, None, **_NO_GPU)
    assert (c.backend, c.device.type, c.precision) == (expected, "cpu", "fp32")
    assert c.reason == why


@pytest.mark.parametrize("precision, device", [("bf16", None), ("fp32", "cpu"), ("fp16", "cpu"), ("fp32", "cuda"),
                                               ("bf16", "cuda:0")])
def test_auto_never_changes_an_explicit_precision_or_device(precision, device):
    c = choose("registry", "student_small", "auto", precision, device, **_FULL_GPU)
    assert c.precision == precision
    if device is not None:
        assert c.device == torch.device(device)
    if precision == "bf16":
        assert c.backend == "torch"  # the only backend that runs bf16
    if device == "cpu":
        assert c.backend in ("torch", "onnxruntime")


def test_requests_that_cannot_be_honoured_are_errors():
    with pytest.raises(UnweatherError, match="no CUDA GPU"):
        choose("registry", None, "auto", None, "cuda", **_NO_GPU)
    with pytest.raises(UnweatherError, match="TensorRT runs only on CUDA"):
        choose("registry", None, "tensorrt", None, "cpu", **_FULL_GPU)
    with pytest.raises(UnweatherError, match="does not run bf16"):
        choose("registry", None, "tensorrt", "bf16", None, **_FULL_GPU)
    with pytest.raises(UnweatherError, match="onnxruntime-gpu"):
        choose("registry", None, "onnxruntime", None, "cuda", cuda=True, tensorrt=False, ort_cuda=False)
    with pytest.raises(UnweatherError, match="not torch"):
        choose("onnx", None, "torch", None, None, **_NO_GPU)
    with pytest.raises(UnweatherError, match="TensorRT is not installed"):
        choose("tensorrt", None, "auto", None, None, cuda=True, tensorrt=False, ort_cuda=False)
    with pytest.raises(UnweatherError, match="unknown backend"):
        choose("registry", None, "tvm", None, None, **_NO_GPU)


def test_tensorrt_without_tensorrt_or_gpu_names_what_is_missing():
    with pytest.raises(UnweatherError, match=r"needs TensorRT and a CUDA GPU: TensorRT is not installed.*no CUDA GPU"):
        choose("registry", None, "tensorrt", None, None, **_NO_GPU)
    with pytest.raises(UnweatherError, match=r"needs TensorRT and a CUDA GPU: torch sees no CUDA GPU$"):
        choose("onnx", None, "tensorrt", "fp16", None, cuda=False, tensorrt=True, ort_cuda=False)
    with pytest.raises(UnweatherError, match=r"needs TensorRT and a CUDA GPU: TensorRT is not installed"):
        choose("tensorrt", None, "auto", None, None, cuda=True, tensorrt=False, ort_cuda=False)
    c = choose("onnx", None, "tensorrt", "fp16", None, **_FULL_GPU)
    assert (c.backend, c.device.type, c.precision) == ("tensorrt", "cuda", "fp16")


def test_onnx_files_go_to_onnxruntime_without_tensorrt():
    assert choose("onnx", None, "auto", "fp16", None, **_NO_GPU).backend == "onnxruntime"
    c = choose("onnx", None, "auto", "fp16", None, cuda=True, tensorrt=False, ort_cuda=True)
    assert (c.backend, c.device.type) == ("onnxruntime", "cuda")


def test_open_logs_the_backend_choice(caplog):
    with caplog.at_level(logging.INFO, logger="unweather"):
        engines.open("identity", device="cpu")
    assert "engine for identity" in caplog.text and "backend " in caplog.text


# ---- ONNX Runtime engine opened from a network, an ONNX file and with threads --------------------------


def test_onnxruntime_threads_do_not_spin_unless_asked(tmp_path, cache):
    # In a stream the decoder and the encoder share the cores: idle inference threads must sleep, not spin.
    save(_student(), tmp_path / "s.safetensors")
    key = "session.intra_op.allow_spinning"
    quiet = engines.open(tmp_path / "s.safetensors", backend="onnxruntime", device="cpu", threads=2)
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    spinning = engines.open(tmp_path / "s.safetensors", backend="onnxruntime", device="cpu", threads=2, spin=True)
    assert spinning.session.get_session_options().get_session_config_entry(key) == "1"
    x = torch.rand(1, 3, 32, 48)
    assert torch.equal(quiet(x), spinning(x))


def test_onnxruntime_engine_from_checkpoint_and_from_its_onnx_file(tmp_path, cache):
    net = _student()
    save(net, tmp_path / "s.safetensors")
    engine = engines.open(tmp_path / "s.safetensors", backend="onnxruntime", device="cpu", threads=1)
    assert isinstance(engine, OnnxRuntimeEngine) and engine.precision == "fp32"
    exported = list((cache / "onnx").glob("student_small-fp32-*.onnx"))
    assert len(exported) == 1
    assert engine.pads_in_graph and engine.output_clamped  # the graph pads, crops and clamps itself
    x = torch.rand(2, 3, 40, 56)  # not multiples of 16
    with torch.no_grad():
        expected = PadCrop(net)(x).clamp(0, 1)
    assert (engine(x) - expected).abs().max() < 1e-4
    again = engines.open(exported[0], device="cpu")  # auto: an ONNX file on the CPU
    assert isinstance(again, OnnxRuntimeEngine)
    assert (again(x) - expected).abs().max() < 1e-4
    with pytest.raises(UnweatherError, match="computes in fp32, not fp16"):
        engines.open(exported[0], precision="fp16", device="cpu")


# ---- tiling -------------------------------------------------------------------------------------------


class _ConvEngine(Engine):
    """A fully convolutional network (receptive radius 3) behind the Engine interface."""

    backend = "test"

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"), "fp32", multiple=8)
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 3, 3, padding=1)).eval()

    @torch.no_grad()
    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


@pytest.mark.parametrize("size, tile, overlap", [((80, 112), 48, 16), ((64, 200), 32, 16), ((56, 72), 24, 12)])
def test_tiles_match_whole_frame_for_a_convolutional_network(size, tile, overlap):
    engine = _ConvEngine()
    x = torch.rand(2, 3, *size)
    whole = engine(x)
    engine.set_tiling(tile, overlap)
    tiles = engine(x)
    assert tiles.shape == x.shape
    assert (tiles - whole).abs().max() < 1e-3


def test_tiles_with_too_small_a_margin_do_differ():
    # Without a margin at least the receptive radius, seams show: the test above can fail.
    engine = _ConvEngine()
    x = torch.rand(1, 3, 64, 64)
    whole = engine(x)
    engine.set_tiling(32, 0)
    assert (engine(x) - whole).abs().max() > 1e-3


def test_tile_starts_cover_the_frame_and_clamp_to_its_edge():
    for size in (100, 129, 640, 1080):
        for tile, overlap in ((64, 16), (128, 32), (96, 48)):
            starts = tile_starts(size, tile, overlap)
            assert starts[0] == 0 and starts[-1] == max(0, size - tile)
            ends = [s + tile for s in starts]
            assert all(b <= a + tile - overlap for a, b in itertools.pairwise(starts))  # overlap at least `overlap`
            assert all(e2 > s2 for s2, e2 in zip(starts[1:], ends))
            assert all(s >= 0 for s in starts) and max(ends) == max(size, tile)


def test_tiled_student_is_close_to_whole_frame():
    engine = TorchEngine(_student(), device="cpu")
    x = torch.rand(1, 3, 96, 160)
    whole = engine(x)
    engine.set_tiling(64, 32)
    diff = (engine(x) - whole).abs()
    # The students' pooled global context sees each tile's own statistics, so tiles are not exact;
    # away from that path (an untrained student's context is near neutral) they agree closely.
    assert diff.max() < 1e-2


def test_tiling_options_are_checked():
    engine = engines.open("student_small", backend="torch", device="cpu", tile=64, tile_overlap=16)
    assert (engine.tile, engine.tile_overlap) == (64, 16)
    with pytest.raises(UnweatherError, match="multiple of 16"):
        engine.set_tiling(50, 8)
    with pytest.raises(UnweatherError, match="overlap"):
        engine.set_tiling(64, 40)


def test_run_config_tile_reaches_the_engine():
    from unweather.stream.config import RunConfig
    from unweather.stream.runner import open_engine

    engine = open_engine(RunConfig(model="student_small", backend="torch", device="cpu", tile=64, tile_overlap=16))
    assert (engine.tile, engine.tile_overlap) == (64, 16)
    assert open_engine(RunConfig(model="identity", backend="torch", device="cpu")).tile is None


def test_tiled_function_blends_constant_outputs_exactly():
    x = torch.rand(1, 3, 70, 90)
    out = tiled(lambda t: torch.full_like(t, 0.25), x, 32, 8)
    torch.testing.assert_close(out, torch.full_like(x, 0.25))


# ---- torch engine options ---------------------------------------------------------------------------


def test_torch_precisions_on_cpu():
    net = _student()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = net(x).clamp(0, 1)
    for precision, tol in (("bf16", 0.05), ("fp16", 0.01)):
        engine = TorchEngine(_student(), device="cpu", precision=precision)
        out = engine(x)
        assert out.dtype == torch.float32 and (out - expected).abs().max() < tol


def test_torch_channels_last_gives_the_same_result():
    x = torch.rand(1, 3, 32, 48)
    a = TorchEngine(_student(), device="cpu")(x)
    b = TorchEngine(_student(), device="cpu", channels_last=True)(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cuda_graph_needs_cuda():
    with pytest.raises(UnweatherError, match="cuda_graph needs a CUDA device"):
        TorchEngine(_student(), device="cpu", cuda_graph=True)


@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = torch.rand(2, 3, 64, 96, device="cuda")
    eager = TorchEngine(_student(), device="cuda", precision="fp32", channels_last=False)
    graph = TorchEngine(_student(), device="cuda", precision="fp32", channels_last=False, cuda_graph=True)
    expected = eager(x)
    first, second = graph(x), graph(x * 0.5)
    torch.testing.assert_close(first, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second, eager(x * 0.5), atol=1e-4, rtol=1e-4)
