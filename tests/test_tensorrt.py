"""TensorRT: the engine cache, profile checks, rebuild rules and version switch (plain Python, run everywhere),
and engines built and run for real where TensorRT and a GPU are present (marked `tensorrt`)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import stat
from pathlib import Path

import pytest
import torch

from unweather.engine.tensorrt_build import (
    FORMAT,
    EngineLoadError,
    Profile,
    api_for,
    cache_key,
    check_profile,
    engine_path,
    ensure_engine,
    load_or_rebuild,
    parse_shape,
    profile_error,
    read_sidecar,
    rebuild_reason,
    sidecar_path,
    timing_cache_path,
    write_atomic,
    write_engine,
)
from unweather.errors import UnweatherError

_KEY_ARGS = {"onnx_sha256": "a" * 64, "profile": Profile(), "tensorrt_version": "10.13.3.9",
             "gpu_name": "NVIDIA H100", "compute_capability": "9.0", "workspace_mb": None}


def _expected(**changes: object) -> dict[str, object]:
    """Identifying sidecar fields as `expected_metadata` makes them, without TensorRT."""
    args = {**_KEY_ARGS, **changes}
    profile = args["profile"]
    return {"format": FORMAT, "key": cache_key(**args), "tensorrt": args["tensorrt_version"], "gpu": args["gpu_name"],
            "compute_capability": args["compute_capability"], "onnx_sha256": args["onnx_sha256"],
            "profile": profile.to_dict(), "workspace_mb": args["workspace_mb"]}


# ---- the version switch -------------------------------------------------------------------------------


@pytest.mark.parametrize("version, strongly_typed_flag", [
    ("10.0.1.6", True), ("10.9.0", True), ("10.13.3.9", True), ("11.0.0", False), ("11.4.1.2", False),
])
def test_version_switch_sets_the_strongly_typed_flag_only_on_10(version, strongly_typed_flag):
    api = api_for(version)
    assert api.strongly_typed_flag is strongly_typed_flag
    assert api.weak_typing_flags is strongly_typed_flag  # BuilderFlag.FP16 and friends: 10.x only, never used


def test_versions_compare_as_versions_not_strings():
    # As strings, "10.10" < "10.9" and "9.3" > "10.0": packaging.version gets both right.
    assert api_for("10.10.0").version > api_for("10.9.0").version
    with pytest.raises(UnweatherError, match=r"TensorRT 9\.3\.0 is too old; unweather needs TensorRT 10\.0"):
        api_for("9.3.0")
    with pytest.raises(UnweatherError, match="cannot understand the TensorRT version 'ten'"):
        api_for("ten")


# ---- the cache key ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("onnx_sha256", "b" * 64), ("profile", Profile(max=(4, 3, 2160, 3840))), ("profile", Profile(opt=(1, 3, 368, 640))),
    ("tensorrt_version", "11.0.0"), ("gpu_name", "NVIDIA H200"), ("compute_capability", "8.9"), ("workspace_mb", 1024),
])
def test_cache_key_changes_with_everything_that_makes_an_engine_valid(field, value):
    assert cache_key(**_KEY_ARGS) == cache_key(**dict(_KEY_ARGS))
    assert cache_key(**{**_KEY_ARGS, field: value}) != cache_key(**_KEY_ARGS)


def test_engine_and_timing_cache_paths(tmp_path):
    expected = _expected()
    plan = engine_path(tmp_path, "graphs/student_small-fp16.onnx", expected["key"])
    assert plan.parent == tmp_path / "engines" and plan.name.startswith("student_small-fp16-")
    assert engine_path(tmp_path, "student_small-fp16.onnx", _expected(gpu_name="NVIDIA L4")["key"]) != plan
    timing = timing_cache_path(tmp_path, expected)
    assert timing.name == "timing-10.13.3.9-NVIDIA-H100-9.0.cache"
    assert timing_cache_path(tmp_path, _expected(tensorrt_version="11.0.0")) != timing


# ---- profile checks -----------------------------------------------------------------------------------


def test_parse_shape():
    assert parse_shape("1x3x720x1280") == (1, 3, 720, 1280)
    assert parse_shape(" 2,3,64,64 ") == (2, 3, 64, 64)
    for bad in ("1x3x720", "1x3x0x64", "axbxcxd", ""):
        with pytest.raises(UnweatherError, match="expected NxCxHxW"):
            parse_shape(bad)


def test_check_profile_names_the_bad_shape():
    # A graph that needs padded frames (graph format 1): padded sizes, multiples of 16.
    check_profile(Profile(), multiple=16)
    with pytest.raises(UnweatherError, match=r"--opt-shape 1x3x720x1270: the width must be a multiple of 16"):
        check_profile(Profile(opt=(1, 3, 720, 1270)), multiple=16)
    with pytest.raises(UnweatherError, match=r"--min-shape 1x1x64x64: frames have 3 channels"):
        check_profile(Profile(min=(1, 1, 64, 64)))
    with pytest.raises(UnweatherError, match=r"the batch must satisfy min <= opt <= max"):
        check_profile(Profile(opt=(8, 3, 720, 1280)))
    with pytest.raises(UnweatherError, match=r"multiple of 16 and at least 32"):
        check_profile(Profile(min=(1, 3, 16, 16)), multiple=16, min_size=32)


def test_profiles_of_graphs_that_pad_themselves_are_frame_sizes():
    frames = Profile(min=(1, 3, 9, 9), opt=(1, 3, 360, 640), max=(4, 3, 1080, 1920))
    check_profile(frames, multiple=16, pads_in_graph=True)
    check_profile(Profile(), multiple=16, pads_in_graph=True)
    with pytest.raises(UnweatherError, match=r"--min-shape 1x3x9x9: the height must be a multiple of 16"):
        check_profile(frames, multiple=16)  # the same sizes for a graph that takes padded frames only
    with pytest.raises(UnweatherError, match=r"--opt-shape 1x3x360x640: the height must be a multiple of 16"):
        check_profile(Profile(opt=(1, 3, 360, 640)), multiple=16)
    # One reflection pads 9 rows to 16, not 8: smaller frames are padded before the engine.
    with pytest.raises(UnweatherError, match=r"--min-shape 1x3x8x64: the height must be at least 9"):
        check_profile(Profile(min=(1, 3, 8, 64)), multiple=16, pads_in_graph=True)
    with pytest.raises(UnweatherError, match=r"--min-shape 1x3x64x16: the width must be at least 17"):
        check_profile(Profile(min=(1, 3, 64, 16)), multiple=16, min_size=32, pads_in_graph=True)
    with pytest.raises(UnweatherError, match=r"the height must satisfy min <= opt <= max"):
        check_profile(Profile(opt=(1, 3, 1081, 1920), max=(1, 3, 1080, 1920)), multiple=16, pads_in_graph=True)


def test_the_profile_rules_follow_the_graphs_metadata(tmp_path):
    import onnx

    from unweather.engine.export import export_onnx
    from unweather.engine.tensorrt_build import check_graph_profile
    from unweather.models import build

    path = tmp_path / "identity.onnx"
    export_onnx(build("identity"), path)
    frames = Profile(min=(1, 3, 9, 9), opt=(1, 3, 1080, 1920), max=(2, 3, 1080, 1920))
    assert check_graph_profile(path, frames) == {"pad_multiple": 16, "min_size": 1, "pads_in_graph": True,
                                                 "clamped": True, "stateful": False}
    # The same graph with the metadata of the previous layout: padded sizes only.
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key in ("unweather.pad_multiple", "unweather.min_size")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    with pytest.raises(UnweatherError, match=r"--min-shape 1x3x9x9: the height must be a multiple of 16"):
        check_graph_profile(path, frames)
    assert check_graph_profile(path, Profile())["pads_in_graph"] is False


def test_a_video_networks_state_inputs_get_the_frames_profile_at_their_channels():
    from unweather.engine.tensorrt_build import input_profiles

    profile = Profile(min=(1, 3, 9, 9), opt=(2, 3, 360, 640), max=(4, 3, 1080, 1920))
    assert input_profiles(["frames"], profile) == {"frames": (profile.min, profile.opt, profile.max)}
    shapes = input_profiles(["weight", "input", "background"], profile)
    assert shapes["input"] == (profile.min, profile.opt, profile.max)
    assert shapes["background"] == ((1, 6, 9, 9), (2, 6, 360, 640), (4, 6, 1080, 1920))
    assert shapes["weight"] == ((1, 1, 9, 9), (2, 1, 360, 640), (4, 1, 1080, 1920))
    # The graph's own channel counts win (a state of another size); a dynamic one (-1) keeps the default.
    shapes = input_profiles(["weight", "input", "background"], profile, {"background": 9, "weight": -1})
    assert shapes["background"][1] == (2, 9, 360, 640) and shapes["weight"][1] == (2, 1, 360, 640)
    with pytest.raises(UnweatherError, match="inputs frames, mask"):
        input_profiles(["frames", "mask"], profile)


def test_engine_tensors_are_taken_by_name_for_a_video_network():
    from unweather.engine.tensorrt_backend import video_io

    assert video_io(["frames"], ["restored"]) == (["frames"], ["restored"])
    names = video_io(["weight", "background", "input"], ["weight_out", "output", "background_out"])
    assert names == (["input", "background", "weight"], ["output", "background_out", "weight_out"])
    with pytest.raises(UnweatherError, match="2 inputs and 1 outputs"):
        video_io(["a", "b"], ["c"], "x.plan")


def test_the_profile_rules_of_a_video_graph(tmp_path):
    from unweather.engine.export import export_onnx
    from unweather.engine.tensorrt_build import check_graph_profile
    from unweather.models import build

    path = tmp_path / "video.onnx"
    export_onnx(build("video_small"), path)
    facts = check_graph_profile(path, Profile(min=(1, 3, 9, 9)))
    assert facts["stateful"] is True and facts["pads_in_graph"] is True and facts["pad_multiple"] == 16


def test_an_input_outside_the_profile_is_a_clear_error():
    low, high = (1, 3, 64, 64), (4, 3, 1088, 1920)
    assert profile_error((1, 3, 720, 1280), low, high) is None
    error = profile_error((1, 3, 2160, 3840), low, high)
    assert isinstance(error, UnweatherError)
    assert "height 2160 is outside 64..1088" in str(error) and "--max-shape" in str(error) and "--tile" in str(error)
    assert "(after padding)" in str(error)
    error = profile_error((1, 3, 2160, 3840), low, high, padded=False)  # an engine that pads itself
    assert str(error).startswith("frames 1x3x2160x3840 does not fit") and "after padding" not in str(error)
    assert "batch 8 is outside 1..4" in str(profile_error((8, 3, 720, 1280), low, high))
    assert "rank 3" in str(profile_error((3, 720, 1280), low, high))


# ---- writing engines, and when one must be rebuilt ---------------------------------------------------------


def test_write_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "engine.plan"
    old = os.umask(0o022)
    try:
        write_atomic(target, b"first")
        with pytest.raises(TypeError):
            write_atomic(target, "not bytes")  # type: ignore[arg-type]
        write_engine(tmp_path / "sub" / "other.plan", b"engine", {"key": "k"})
    finally:
        os.umask(old)
    assert target.read_bytes() == b"first"
    # Engines, sidecars and timing caches can be read by a service running as another user.
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.parent.iterdir()} == {
        "engine.plan": 0o644, "other.plan": 0o644, "other.plan.json": 0o644}


def test_rebuild_reason_accepts_only_an_intact_engine_built_for_this_machine(tmp_path):
    plan = tmp_path / "model.plan"
    expected = _expected()
    assert rebuild_reason(plan, expected) == "no engine built yet"
    write_engine(plan, b"\x01" * 1000, {**expected, "precision": "fp16"})
    meta = read_sidecar(plan)
    assert meta["plan_size"] == 1000 and meta["precision"] == "fp16" and sidecar_path(plan).name == "model.plan.json"
    assert rebuild_reason(plan, expected) is None
    for changes, words in [({"tensorrt_version": "11.0.0"}, "another TensorRT"),
                           ({"gpu_name": "NVIDIA L4"}, "another GPU"),
                           ({"compute_capability": "8.9"}, "another compute capability"),
                           ({"onnx_sha256": "c" * 64}, "another ONNX graph"),
                           ({"profile": Profile(max=(1, 3, 2160, 3840))}, "another profile"),
                           ({"workspace_mb": 512}, "cache key differs")]:
        assert words in rebuild_reason(plan, _expected(**changes))

    plan.write_bytes(b"\x01" * 600)  # truncated
    assert "truncated or replaced" in rebuild_reason(plan, expected)
    plan.write_bytes(b"\x02" * 1000)  # same size, other bytes
    assert "contents changed" in rebuild_reason(plan, expected)
    assert rebuild_reason(plan, expected, check_hash=False) is None
    sidecar_path(plan).write_text("{not json")
    assert "metadata is missing or unreadable" in rebuild_reason(plan, expected)
    sidecar_path(plan).unlink()
    assert "metadata is missing or unreadable" in rebuild_reason(plan, expected)


class _FakeBuilder:
    """Stands in for TensorRT's builder: writes an engine file and its sidecar as `build_engine` does."""

    def __init__(self, expected: dict[str, object]) -> None:
        self.expected = expected
        self.builds: list[tuple[Path, Path]] = []

    def __call__(self, plan: Path, timing_cache: Path) -> None:
        self.builds.append((plan, timing_cache))
        write_engine(plan, os.urandom(256), dict(self.expected))


def test_engine_cache_builds_once_reuses_and_rebuilds_what_cannot_be_used(tmp_path, caplog):
    onnx_path = tmp_path / "student_small-fp16.onnx"
    cache = tmp_path / "cache"
    expected = _expected()
    build = _FakeBuilder(expected)
    with caplog.at_level(logging.INFO, logger="unweather"):
        plan = ensure_engine(onnx_path, cache, expected, build)
        assert ensure_engine(onnx_path, cache, expected, build) == plan
    assert len(build.builds) == 1 and "using the cached TensorRT engine" in caplog.text
    assert build.builds[0] == (plan, timing_cache_path(cache, expected))

    plan.write_bytes(plan.read_bytes()[:100])  # a crash or a full disk cut it short after the sidecar
    assert ensure_engine(onnx_path, cache, expected, build) == plan
    assert len(build.builds) == 2 and rebuild_reason(plan, expected) is None

    other = _expected(tensorrt_version="11.0.0")  # TensorRT upgraded: another key, another file
    other_plan = ensure_engine(onnx_path, cache, other, _FakeBuilder(other))
    assert other_plan != plan and other_plan.is_file() and plan.is_file()

    ensure_engine(onnx_path, cache, expected, build, force=True)
    assert len(build.builds) == 3


def test_an_engine_that_does_not_deserialise_is_rebuilt_once():
    calls: list[str] = []
    results = iter([EngineLoadError("TensorRT 11.0.0 cannot deserialise x.plan"), "engine"])

    def load() -> str:
        calls.append("load")
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    assert load_or_rebuild(load, lambda reason: calls.append(f"rebuild: {reason}")) == "engine"
    assert calls == ["load", "rebuild: TensorRT 11.0.0 cannot deserialise x.plan", "load"]

    def always_fails() -> str:
        raise EngineLoadError("still damaged")

    rebuilds: list[str] = []
    with pytest.raises(EngineLoadError, match="still damaged"):
        load_or_rebuild(always_fails, rebuilds.append)
    assert rebuilds == ["still damaged"]
    assert load_or_rebuild(lambda: "fine", rebuilds.append) == "fine" and len(rebuilds) == 1


# ---- real engines, where TensorRT and a GPU are present ----------------------------------------------------

_HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def needs_tensorrt(test):
    """Mark `test` as needing TensorRT and a GPU, skipped with the reason where either is missing."""
    reason = "TensorRT is not installed (pip install 'unweather[tensorrt]')"
    test = pytest.mark.skipif(not _HAVE_TRT, reason=reason)(test)
    test = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test)
    return pytest.mark.tensorrt(test)
_SMALL = Profile(min=(1, 3, 32, 32), opt=(1, 3, 64, 96), max=(2, 3, 128, 128))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """student_small exported in fp32 and fp16, with its torch network."""
    from unweather.engine.export import ExportConfig, export_onnx
    from unweather.models import build

    folder = tmp_path_factory.mktemp("trt")
    torch.manual_seed(11)
    net = build("student_small").eval()
    paths = {}
    for precision in ("fp32", "fp16"):
        paths[precision] = folder / f"student_small-{precision}.onnx"
        export_onnx(net, paths[precision], ExportConfig(precision=precision))
    return net, paths


@needs_tensorrt
@pytest.mark.parametrize("precision, tolerance", [("fp32", 2e-3), ("fp16", 2e-2)])
def test_built_engine_matches_torch_and_checks_its_profile(graphs, tmp_path, precision, tolerance):
    import unweather.engine as engines
    from unweather.engine.tensorrt_build import build_engine
    from unweather.models import PadCrop

    net, paths = graphs
    plan = tmp_path / f"student_small-{precision}.plan"
    meta = build_engine(paths[precision], plan, _SMALL)
    assert meta["precision"] == precision and read_sidecar(plan)["plan_size"] == plan.stat().st_size
    assert meta["pads_in_graph"] and meta["clamped"]  # the profile is in frame sizes
    engine = engines.open(plan)
    assert (engine.backend, engine.precision) == ("tensorrt", precision)
    x = torch.rand(2, 3, 50, 90, device="cuda")  # frames of no multiple of 16: the engine pads them itself
    with torch.no_grad():
        expected = PadCrop(net.cuda())(x).clamp(0, 1)
    out = engine(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float((out - expected).abs().max()) < tolerance
    with pytest.raises(UnweatherError, match="does not fit the TensorRT engine's profile"):
        engine(torch.rand(1, 3, 160, 160, device="cuda"))



@needs_tensorrt
def test_open_builds_caches_and_rebuilds_a_damaged_engine(graphs, tmp_path, caplog):
    import unweather.engine as engines

    _, paths = graphs
    shapes = {"min_shape": "1x3x32x32", "opt_shape": "1x3x64x64", "max_shape": "1x3x128x128"}
    engine = engines.open(paths["fp16"], backend="tensorrt", cache_dir=tmp_path, **shapes)
    plans = sorted((tmp_path / "engines").glob("*.plan"))
    assert len(plans) == 1 and list((tmp_path / "engines").glob("timing-*.cache"))
    x = torch.rand(1, 3, 64, 64, device="cuda")
    reference = engine(x)
    built = json.loads(Path(f"{plans[0]}.json").read_text())["built"]
    with caplog.at_level(logging.INFO, logger="unweather"):
        again = engines.open(paths["fp16"], backend="tensorrt", cache_dir=tmp_path, **shapes)
    assert "using the cached TensorRT engine" in caplog.text
    assert json.loads(Path(f"{plans[0]}.json").read_text())["built"] == built
    torch.testing.assert_close(again(x), reference)

    plans[0].write_bytes(plans[0].read_bytes()[:1000])  # damaged: the cache notices and rebuilds
    rebuilt = engines.open(paths["fp16"], backend="tensorrt", cache_dir=tmp_path, **shapes)
    torch.testing.assert_close(rebuilt(x), reference, atol=1e-3, rtol=1e-3)
    assert rebuild_reason(plans[0], {}) is None


@needs_tensorrt
def test_parser_errors_are_logged_and_one_clear_failure(tmp_path, caplog):
    import onnx
    from onnx import TensorProto, helper

    from unweather.engine.tensorrt_build import build_engine

    node = helper.make_node("NoSuchOperator", ["frames"], ["restored"], domain="example.custom")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("frames", TensorProto.FLOAT,
                                                                            ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("restored", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("example.custom", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with caplog.at_level(logging.ERROR, logger="unweather"), \
            pytest.raises(UnweatherError, match="TensorRT's ONNX parser rejected"):
        build_engine(path, tmp_path / "bad.plan", _SMALL)
    assert "TensorRT ONNX parser:" in caplog.text
    assert not (tmp_path / "bad.plan").exists()
