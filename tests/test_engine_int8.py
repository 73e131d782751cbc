"""INT8 export: the shipped `fast` model as a symmetric QDQ graph behind its accuracy gate on real frames, the
gate refusing and naming the convolution that loses most, --keep-fp32 keeping it in float, calibration frames
from a folder, an image or a video, and `unweather run --precision int8` end to end (ONNX Runtime on the CPU)
while backends that cannot run int8 refuse it. TensorRT's native-operator check covers the INT8 graph in
tests/test_engine_export.py."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from media import make_images, make_video
from torch import nn

from unweather.cli import main
from unweather.engine import open as open_engine
from unweather.engine.export import (
    ExportConfig,
    bundled_photo,
    cached_export,
    export_onnx,
    load_frames,
    psnr,
    read_onnx_metadata,
    trace_graph,
)
from unweather.engine.loader import choose
from unweather.engine.quantize import quantizable_nodes, quantized_nodes, select_nodes
from unweather.engine.sources import load_network, resolve
from unweather.engine.torch_backend import TorchEngine
from unweather.errors import UnweatherError

# The int8 gate's own frames: the check photo, clean and under rendered weather.
CHECKED = ["bundled photo", "bundled photo, rain", "bundled photo, snow", "bundled photo, haze"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder holding the int8 export of `fast`, made once, as `unweather run` makes it."""
    folder = tmp_path_factory.mktemp("cache")
    cached_export(load_network(resolve("fast")), "int8", folder)
    return folder


def _int8_graph(cache) -> tuple[object, object]:
    (path,) = (cache / "onnx").glob("*-int8-*.onnx")
    return path, onnx.load(str(path))


def _producers(model) -> dict[str, object]:
    return {o: n for n in model.graph.node for o in n.output}


def test_fast_int8_is_a_symmetric_qdq_graph_with_its_gate_in_the_metadata(cache):
    path, model = _int8_graph(cache)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = _producers(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = set(quantized_nodes(model))
    # Every convolution but the output heads (what they write lands on every pixel: kept float) reads int8.
    kept = [c for c in convs if c.name not in quantized]
    assert len(convs) > 30 and 1 <= len(kept) <= 4
    assert all(c.input[1] in inits for c in kept)  # float weights, read straight from the initializers
    for conv in convs:
        if conv in kept:
            continue
        act, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert act.op_type == weight.op_type == "DequantizeLinear"
        # Weights: INT8, one scale per output channel, zero points 0; the bias stays float.
        q, scale, zero = (inits[name] for name in weight.input)
        assert q.dtype == np.int8 and scale.shape == (q.shape[0],) and not zero.any()
        assert [a.i for a in weight.attribute if a.name == "axis"] in ([], [0])
        if len(conv.input) > 2:
            assert inits[conv.input[2]].dtype == np.float32
    # Activations are quantized only where convolutions read them: what a convolution writes into the
    # rest of the network (the correction added to the frame, the haze gain) stays float.
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producers:
            assert set(readers[node.output[0]]) == {"Conv"}, node.name
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = inits[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), node.name
    meta = read_onnx_metadata(path)
    assert meta["unweather.precision"] == "int8" and meta["unweather.pads_in_graph"] == "reflect"
    gate = json.loads(meta["unweather.gate"])
    assert gate["min_psnr"] == 35.0 and list(gate["psnr"]) == CHECKED and gate["worst_psnr"] >= 35
    quantization = json.loads(meta["unweather.quantization"])
    assert quantization["format"] == "QDQ" and quantization["calibration_frames"] == ["demo photo"]
    assert quantization["quantized"] == len(convs) - len(kept)
    assert sorted(json.loads(meta["unweather.keep_fp32"])) == sorted(c.name for c in kept)
    # No path of the machine that exported it (torch records stack traces per node).
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in model.graph.node for p in n.metadata_props)


def test_fast_int8_on_real_frames_of_any_size_stays_within_35_db_of_fp32(cache):
    path, _ = _int8_graph(cache)
    engine = open_engine(path, device="cpu", threads=1)
    assert (engine.backend, engine.precision) == ("onnxruntime", "int8")
    reference = TorchEngine(load_network(resolve("fast")))
    photo = bundled_photo()
    for frame in (photo, photo[..., :250, :243], photo[..., 3:36, 5:52]):
        got, expected = engine(frame), reference(frame)
        assert got.shape == frame.shape and 0 <= float(got.min()) and float(got.max()) <= 1
        value = psnr(got.numpy(), expected.numpy())
        print(f"fast int8 vs torch fp32 at {frame.shape[-1]}x{frame.shape[-2]}: {value:.2f} dB")
        assert 35 <= value < 80  # close, and not trivially equal: INT8 leaves a trace


class _Outlier(nn.Module):
    """`spread` writes 1000 x the frame and the frame itself; `out` reads only the frame. One INT8 scale for
    `spread`'s output spans +-1000 (steps of 8), so `out`'s input loses the frame: the output is ruined until
    `out` runs in float. Exactly the identity in fp32."""

    pad_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.spread = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 3, 1)
        eye = torch.eye(3)[:, :, None, None]
        with torch.no_grad():
            self.spread.weight.copy_(torch.cat([1000 * eye, eye]))
            self.out.weight.zero_()
            self.out.weight[:, 3:].copy_(eye)
            self.spread.bias.fill_(0.01)
            self.out.bias.fill_(-0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.spread(x))


@pytest.fixture(scope="module")
def outlier():
    """The fp32 graph of `_Outlier` and its convolutions' node names by module ("spread", "out")."""
    model = trace_graph(_Outlier().eval())
    return model, {module: node for node, module in quantizable_nodes(model).items()}


def test_the_gate_refuses_and_names_the_convolution_that_loses_most(tmp_path, outlier):
    spread, conv_out = outlier[1]["spread"], outlier[1]["out"]
    out = tmp_path / "outlier.onnx"
    refused = r"only \d+\.\d+ dB against fp32 on bundled photo(, \w+)? \(threshold 35 dB\)"
    with pytest.raises(UnweatherError, match=refused) as info:
        export_onnx(_Outlier().eval(), out, ExportConfig(precision="int8"))
    message = str(info.value)
    assert "\n" not in message and not out.exists()
    named = re.search(r"--keep-fp32 (\S+),? or", message).group(1).rstrip(",")
    assert named.split(",") == [conv_out] and f"{conv_out} (out) +" in message  # `spread` gains nothing

    report = export_onnx(_Outlier().eval(), out, ExportConfig(precision="int8", keep_fp32=(named,)))
    model = onnx.load(str(out))
    assert report.kept_fp32 == [conv_out] and min(report.psnr.values()) >= 35
    producers = _producers(model)
    conv = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    # The kept convolution reads its input and weights in float; the other stays INT8.
    assert all(producers.get(i) is None or producers[i].op_type == "Conv" for i in conv[conv_out].input)
    assert quantized_nodes(model) == [spread]
    assert json.loads(read_onnx_metadata(out)["unweather.keep_fp32"]) == [conv_out]

    # A threshold no INT8 graph reaches: refused, naming the convolution still in INT8.
    with pytest.raises(UnweatherError, match=rf"threshold 99 dB.*{spread} \(spread\).*--keep-fp32 {spread}"):
        export_onnx(_Outlier().eval(), out, ExportConfig(precision="int8", keep_fp32=("out",), min_psnr=99))
    assert json.loads(read_onnx_metadata(out)["unweather.keep_fp32"]) == [conv_out]  # the file is untouched


def test_keep_fp32_takes_node_and_module_patterns_comma_separated(outlier, tmp_path):
    model, nodes = outlier
    spread, conv_out = nodes["spread"], nodes["out"]
    assert select_nodes(model, [conv_out]) == [conv_out]
    assert select_nodes(model, ["out,spread"]) == [conv_out, spread]
    assert select_nodes(model, ["node_*"]) == [spread, conv_out]
    with pytest.raises(UnweatherError, match=rf"'head' matches no convolution.*{spread} \(spread\)"):
        select_nodes(model, ["head"])
    with pytest.raises(UnweatherError, match="no convolution is left to run in int8"):
        export_onnx(_Outlier().eval(), tmp_path / "o.onnx", ExportConfig(precision="int8", keep_fp32=("*",)))
    assert not (tmp_path / "o.onnx").exists()


def test_calibration_frames_from_a_folder_an_image_or_a_video(tmp_path):
    images = make_images(tmp_path / "photos", count=3, size=(40, 30))
    assert [name for name, _ in load_frames(tmp_path / "photos")] == [p.name for p in images]
    ((name, frame),) = load_frames(images[0])
    assert name == images[0].name and frame.shape == (1, 3, 30, 40)
    clip = make_video(tmp_path / "clip.mp4", frames=40, size=(64, 48), audio=False)
    frames = load_frames(clip)
    # 16 frames spread over the clip, not its first 16.
    assert [name for name, _ in frames] == [f"clip.mp4 frame {i}" for i in range(0, 32, 2)]
    assert all(f.shape == (1, 3, 48, 64) and 0 <= float(f.min()) and float(f.max()) <= 1 for _, f in frames)
    assert float((frames[0][1] - frames[-1][1]).abs().max()) > 0.1
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UnweatherError, match="neither an image"):
        load_frames(tmp_path / "notes.txt")


def test_int8_calibrates_and_gates_on_the_users_video_too(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", frames=8, size=(64, 48), audio=False)
    report = export_onnx(_Outlier().eval(), tmp_path / "o.onnx",
                         ExportConfig(precision="int8", keep_fp32=("out",), calibration_frames=clip))
    names = [f"clip.mp4 frame {i}" for i in range(8)]
    assert report.calibration == ["demo photo", *names] and list(report.psnr) == [*CHECKED, *names]
    quantization = json.loads(read_onnx_metadata(tmp_path / "o.onnx")["unweather.quantization"])
    assert quantization["calibration_frames"] == report.calibration


def test_run_precision_int8_end_to_end(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNWEATHER_CACHE", str(cache))
    before = sorted((cache / "onnx").iterdir())
    clip = make_video(tmp_path / "clip.mp4", frames=6, size=(64, 48), audio=False)
    out = tmp_path / "clean.mp4"
    assert main(["run", str(clip), "-o", str(out), "--model", "fast", "--precision", "int8", "--device", "cpu"]) == 0
    import av

    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
    assert sorted((cache / "onnx").iterdir()) == before  # the cached int8 graph, not a new export


def test_int8_is_refused_where_it_cannot_run(tmp_path, monkeypatch, capsys):
    no_gpu = {"cuda": False, "tensorrt": False, "ort_cuda": False}
    assert choose("weights", "student_small", "auto", "int8", None, **no_gpu).backend == "onnxruntime"
    with pytest.raises(UnweatherError, match="the torch backend does not run int8 on cpu"):
        choose("weights", "student_small", "torch", "int8", None, **no_gpu)
    with pytest.raises(UnweatherError, match="the tensorrt backend does not run int8 on cuda"):
        choose("weights", "student_small", "tensorrt", "int8", "cuda", cuda=True, tensorrt=True, ort_cuda=True)
    clip = make_video(tmp_path / "clip.mp4", frames=2, size=(32, 32), audio=False)
    argv = ["run", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", "fast", "--backend", "torch",
            "--precision", "int8"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not run int8" in err[0]
