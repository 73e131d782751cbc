"""`unweather bench`: results with machine info, ratios to the baseline, skips with reasons, table and plot.

Runs on the identity network at a tiny resolution; speed itself is never asserted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import statistics
import time

import pytest
import torch

from unweather import cpu
from unweather.bench.config import (
    BackendSpec,
    BenchConfig,
    ModelSpec,
    Resolution,
    parse_backend,
    parse_exclusion,
    parse_model,
    parse_resolution,
)
from unweather.bench.report import markdown_table
from unweather.bench.runner import add_ratios, classify_failure, combinations, make_batches, time_engine
from unweather.bench.timing import percentile, summarize
from unweather.cli import main
from unweather.errors import UnweatherError
from unweather.machine import machine_info, save_results

TINY = "64x48"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One CLI run with two backends, plus one that cannot run here; its JSON, table and plot."""
    out = tmp_path_factory.mktemp("bench")
    backends = ["torch", "onnxruntime", "tensorrt"]
    argv = ["bench", "--models", "identity", "--backends", *backends, "--precisions", "fp32",
            "--resolutions", TINY, "--frames", "3", "--repeats", "2", "--warmup", "1", "--device", "cpu",
            "--json", str(out / "r.json"), "--markdown", str(out / "r.md"), "--plot", str(out / "r.png"),
            "--no-progress"]
    status = main(argv)
    payload = json.loads((out / "r.json").read_text())
    return status, payload, out


def _rows(payload, **where):
    return [r for r in payload["results"] if all(r[k] == v for k, v in where.items())]


def test_results_file_has_machine_config_and_measurements(bench_run):
    status, payload, _ = bench_run
    assert status == 0
    machine = payload["machine"]
    for key in ("cpu", "ram_gb", "gpus", "libraries", "git", "timestamp", "load_average_start",
                "load_average_end"):
        assert key in machine
    assert machine["cpu"]["threads"] >= 1 and machine["libraries"]["torch"] == torch.__version__
    assert machine["git"]["commit"] is None or len(machine["git"]["commit"]) == 40
    assert payload["config"]["resolutions"] == [TINY] and payload["clips"][TINY]["frames"] == 3
    assert payload["command"].startswith("unweather bench --models identity")

    base = _rows(payload, backend="torch", precision="fp32")[0]
    assert base["status"] == "ok" and base["baseline"] is True
    eng = base["engine"]
    assert len(eng["samples_ms"]) == 2 * eng["calls_per_repeat"] == 2 * 3  # frames 3, batch 1, 2 repeats
    assert len(eng["fps_per_repeat"]) == 2 and all(f > 0 for f in eng["fps_per_repeat"])
    lat = eng["latency_ms"]
    assert lat["min"] <= lat["median"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert eng["fps"] == statistics.median(eng["fps_per_repeat"])
    assert base["resources"]["rss_peak_mb"] >= base["resources"]["rss_before_mb"] > 0
    assert set(base["resources"]["cpu"]) == {"busy_pct", "own_pct", "others_pct"}
    assert "gpu_peak_mb" not in base["resources"]  # no GPU readings for a CPU combination
    assert base["load_average_start"] is None or len(base["load_average_start"]) == 3
    share = machine["cpu_share_during_run"]
    assert share["own_pct"] > 0 and 0 <= share["others_pct"] <= 101

    pipe = base["pipeline"]
    assert pipe["status"] == "ok" and pipe["frames"] == [3, 3] and len(pipe["fps_per_repeat"]) == 2
    assert pipe["fps"] > 0 and 0 < pipe["latency_ms"]["p50"] <= pipe["latency_ms"]["p99"]


def test_ratios_are_exact_for_the_baseline_and_computed_from_medians(bench_run):
    _, payload, _ = bench_run
    base = _rows(payload, backend="torch", precision="fp32")[0]
    assert base["engine"]["x_vs_baseline"] == 1.0
    measured = [r for r in payload["results"] if r["status"] == "ok"]
    assert len(measured) >= 1
    assert base["pipeline"]["x_vs_baseline"] == 1.0
    for row in measured:
        expected = base["engine"]["latency_ms"]["median"] / row["engine"]["latency_ms"]["median"]
        assert math.isclose(row["engine"]["x_vs_baseline"], expected, rel_tol=1e-12)
        expected = row["pipeline"]["fps"] / base["pipeline"]["fps"]
        assert math.isclose(row["pipeline"]["x_vs_baseline"], expected, rel_tol=1e-12)


def test_unavailable_combination_is_skipped_with_reason_and_the_rest_run(bench_run):
    _, payload, _ = bench_run
    trt = _rows(payload, backend="tensorrt")[0]
    assert trt["status"] == "skipped" and "TensorRT" in trt["reason"]
    ort = _rows(payload, backend="onnxruntime")[0]
    assert ort["status"] == "ok" and ort["engine_device"] == "cpu" and ort["engine"]["x_vs_baseline"] > 0


def test_markdown_and_plot_are_written(bench_run):
    _, payload, out = bench_run
    table = (out / "r.md").read_text()
    assert "| model | backend | precision | resolution | batch | engine FPS | p50 ms | p95 ms | p99 ms" in table
    assert "peak RSS MB |" in table and "other processes kept" in table
    assert f"| identity | torch | fp32 | {TINY} | 1 |" in table and "1.00x" in table
    assert "skipped (not applicable here): identity tensorrt fp32" in table
    assert payload["command"] in table
    png = (out / "r.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_loaded_runs_are_flagged_in_the_report(bench_run):
    from unweather.bench.report import markdown_report

    _, payload, _ = bench_run
    for others, flagged in ((0.0, False), (60.0, True)):
        payload["machine"]["cpu_share_during_run"]["others_pct"] = others
        report = markdown_report(payload)
        assert ("shared with other work" in report) is flagged
        assert f"other processes kept {others:.0f}% of the CPUs busy" in report


def test_cpu_share_counts_this_process():
    from unweather.bench.timing import CpuShare

    share = CpuShare().start()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    result = share.stop()
    assert result["own_pct"] > 0 and result["busy_pct"] > 0
    assert all(0 <= v <= 101 for v in result.values())


AVX2_CPU = "model name\t: AMD EPYC\nflags\t\t: avx2 fma f16c\n"
AMX_CPU = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 fma avx512f avx512_bf16 amx_bf16\n"


REAL_DETECT = cpu.detect


def _fake_cpu(monkeypatch, text):
    caps = REAL_DETECT(text)
    monkeypatch.setattr(cpu, "detect", lambda cpuinfo=None: caps)
    return caps


@pytest.mark.parametrize("cpu_text, bf16", [(AVX2_CPU, "skipped"), (AMX_CPU, "ok")])
def test_cpu_defaults_run_bf16_only_where_it_is_native(tmp_path, monkeypatch, cpu_text, bf16):
    _fake_cpu(monkeypatch, cpu_text)
    out = tmp_path / "r.json"
    assert main(["bench", "--models", "identity", "--backends", "torch", "--resolutions", "32x32", "--frames",
                 "1", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--no-pipeline", "--no-progress",
                 "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["precisions"] == ["fp32", "bf16"]  # torch fp16 is not even tried on a CPU
    assert [(r["precision"], r["status"]) for r in payload["results"]] == [("fp32", "ok"), ("bf16", bf16)]
    if bf16 == "skipped":
        assert "no native bf16 on this CPU (AMD EPYC, AVX2" in payload["results"][1]["reason"]
        assert "--allow-slow-precision" in payload["results"][1]["reason"]
    assert "--precisions fp32 bf16" in payload["command"]


def test_slow_cpu_precisions_asked_for_are_refused_or_skipped_unless_allowed(tmp_path, monkeypatch, capsys):
    _fake_cpu(monkeypatch, AVX2_CPU)
    base = ["bench", "--models", "identity", "--backends", "torch", "--resolutions", "32x32", "--frames", "1",
            "--repeats", "1", "--warmup", "0", "--device", "cpu", "--no-pipeline", "--no-progress"]
    capsys.readouterr()
    assert main([*base, "--precisions", "fp32", "bf16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unweather: error: this CPU (AMD EPYC, AVX2) has no native bf16")
    assert "--precision fp32" in err[0] and "--allow-slow-precision" in err[0]

    out = tmp_path / "r.json"
    assert main([*base, "--precisions", "fp32", "fp16", "--json", str(out)]) == 0
    fp16 = json.loads(out.read_text())["results"][1]
    assert fp16["status"] == "skipped" and "few fp16 kernels" in fp16["reason"]

    assert main([*base, "--precisions", "fp32", "bf16", "fp16", "--allow-slow-precision", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [r["status"] for r in payload["results"]] == ["ok", "ok", "ok"]
    assert payload["config"]["allow_slow_precision"] is True and "--allow-slow-precision" in payload["command"]


def test_results_so_far_are_handed_out_after_each_combination():
    from unweather.bench.runner import run_bench

    config = BenchConfig(precisions=["fp32", "bf16", "fp16"], resolutions=[Resolution(32, 32)], frames=1,
                         repeats=1, warmup=0, device="cpu", pipeline=False, allow_slow_precision=True)
    partials = []
    final = run_bench(config, progress=False, on_result=partials.append)
    assert [len(p["results"]) for p in partials] == [1, 2] and all(p["partial"] for p in partials)
    assert partials[1]["results"][1]["precision"] == "bf16" and "engine" in partials[1]["results"][1]
    assert "partial" not in final and len(final["results"]) == 3 and final["interrupted"] is False
    json.dumps(partials[0], allow_nan=False)


def test_cuda_request_without_gpu_is_skipped(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU skip cannot be shown")
    from unweather.bench.runner import run_bench

    config = BenchConfig(resolutions=[Resolution(32, 32)], frames=2, repeats=1, warmup=0, device="cuda",
                         pipeline=False)
    payload = run_bench(config, progress=False)
    (row,) = payload["results"]
    assert row["status"] == "skipped" and "CUDA" in row["reason"]
    assert "x_vs_baseline" not in row
    assert "skipped (not applicable here): identity torch fp32 32x32" in markdown_table(payload)


@pytest.mark.gpu
def test_gpu_run_reports_device_memory_and_async_fps(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import importlib.util

    from unweather.bench.runner import run_bench

    config = BenchConfig(models=[ModelSpec("student_small")],
                         backends=[BackendSpec("torch"), parse_backend("torch:cuda_graph")],
                         precisions=["fp32", "fp16"], resolutions=[Resolution(64, 48)], frames=3, repeats=2,
                         warmup=1, device="cuda")
    payload = run_bench(config, progress=False)
    assert payload["machine"]["gpus"][0]["name"]
    rows = payload["results"]
    assert [r["status"] for r in rows] == ["ok"] * 4, [r.get("reason") for r in rows]
    for row in rows:
        assert row["engine_device"].startswith("cuda") and row["engine"]["fps_async"] > 0
        res = row["resources"]
        assert res["gpu_peak_mb"] >= res["gpu_before_mb"] >= 0
        if importlib.util.find_spec("pynvml") is not None and "nvml" not in res:
            assert res["gpu_device_used_peak_mb"] > 0 and "gpu_util_mean" in res
        assert row["pipeline"]["status"] == "ok"


def test_user_footage_is_resized_for_the_benchmark(tmp_path):
    from unweather.bench.clip import prepare_clip, synthetic_frames, write_clip

    src = tmp_path / "footage.mp4"
    write_clip(synthetic_frames(Resolution(96, 64), 5), src, Resolution(96, 64))
    frames, count = prepare_clip(str(src), Resolution(48, 32), 3, tmp_path / "clip.mp4")
    assert count == 3 and frames.shape == (3, 3, 32, 48)
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0.05
    # The resized footage keeps its content: the mean colour of the first frame stays close.
    frames_native, _ = prepare_clip(str(src), Resolution(96, 64), 1, tmp_path / "native.mp4")
    assert torch.allclose(frames[0].mean((1, 2)), frames_native[0].mean((1, 2)), atol=0.02)


def test_engine_timing_counts_every_call_and_batches_keep_their_shape():
    frames = torch.rand(5, 3, 16, 16)
    batches = make_batches(frames, 2, torch.device("cpu"))
    assert [b.shape[0] for b in batches] == [2, 2, 2]
    assert torch.equal(batches[2][1], frames[0])  # the last batch is filled by cycling

    calls = []

    def engine(x):
        calls.append(x.shape)
        return x

    result = time_engine(engine, batches, warmup=2, repeats=3)
    assert len(calls) == 2 + 3 * 3 and len(result["samples_ms"]) == 9
    assert result["calls_per_repeat"] == 3 and result["frames_per_call"] == 2


def test_ctrl_c_stops_the_engine_worker_at_its_next_call():
    import signal
    import threading

    from unweather.bench.runner import in_worker_thread

    calls = []

    def engine(x):
        calls.append(1)
        if len(calls) == 3:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C
        time.sleep(0.01)
        return x

    stop = threading.Event()
    # Python's own Ctrl-C handler, even where SIGINT came ignored (a job started in the background by a shell).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            in_worker_thread(time_engine, engine, [torch.zeros(1, 3, 8, 8)], 0, 10_000, None, stop, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.is_set() and 3 <= len(calls) < 100


def test_ratios_follow_the_baseline_of_the_same_group():
    def row(backend, precision, median, res="64x48", baseline=False, status="ok"):
        return {"model": "m", "backend": backend, "precision": precision, "resolution": res, "batch": 1,
                "baseline": baseline, "status": status,
                "engine": {"latency_ms": {"median": median}},
                "pipeline": {"status": "ok", "fps": 100.0 / median}}

    rows = [row("torch", "fp32", 10.0, baseline=True), row("onnxruntime", "fp32", 4.0),
            row("torch", "fp32", 3.0, res="32x32", baseline=True, status="skipped"),
            row("onnxruntime", "fp32", 1.0, res="32x32")]
    add_ratios(rows)
    assert rows[0]["engine"]["x_vs_baseline"] == 1.0 and rows[1]["engine"]["x_vs_baseline"] == 2.5
    assert math.isclose(rows[1]["pipeline"]["x_vs_baseline"], 2.5)
    assert rows[3]["engine"]["x_vs_baseline"] is None  # its baseline did not run


def test_specs_and_combinations():
    assert parse_resolution("1280x720") == Resolution(1280, 720)
    for bad in ("1280", "1281x720", "8x8"):
        with pytest.raises(UnweatherError):
            parse_resolution(bad)
    spec = parse_backend("onnxruntime:threads=2,device=cpu")
    assert spec == BackendSpec("onnxruntime", (("threads", 2), ("device", "cpu")))
    assert parse_backend("torch:cuda_graph").label == "torch:cuda_graph"
    with pytest.raises(UnweatherError, match="known backends"):
        parse_backend("tensorflow")
    assert parse_model("msbdn@640x360") == ModelSpec("msbdn", (Resolution(640, 360),))
    assert parse_model("/data/run@2/best.safetensors").model == "/data/run@2/best.safetensors"

    config = BenchConfig(models=[ModelSpec("a"), parse_model("b@640x360")],
                         backends=[BackendSpec("onnxruntime")], precisions=["fp32", "fp16"],
                         resolutions=[Resolution(640, 360), Resolution(1280, 720)])
    combos = combinations(config)
    # Each group starts with the torch fp32 baseline, even when torch was not asked for.
    assert [(c.model.model, str(c.resolution), c.backend.name, c.precision, c.baseline) for c in combos] == [
        ("a", "640x360", "torch", "fp32", True), ("a", "640x360", "onnxruntime", "fp32", False),
        ("a", "640x360", "onnxruntime", "fp16", False), ("a", "1280x720", "torch", "fp32", True),
        ("a", "1280x720", "onnxruntime", "fp32", False), ("a", "1280x720", "onnxruntime", "fp16", False),
        ("b", "640x360", "torch", "fp32", True), ("b", "640x360", "onnxruntime", "fp32", False),
        ("b", "640x360", "onnxruntime", "fp16", False)]


def test_exclusions_and_slow_first_calls_are_skipped_with_reasons(tmp_path):
    from unweather.bench.runner import TooSlowError, run_bench

    config = BenchConfig(backends=[BackendSpec("torch")], precisions=["fp32", "bf16"],
                         resolutions=[Resolution(32, 32)], frames=2, repeats=1, warmup=1, device="cpu",
                         pipeline=False, exclude=[parse_exclusion("backend=tor*,precision=bf16")])
    base, bf16 = run_bench(config, progress=False)["results"]
    assert base["status"] == "ok"  # the baseline is never excluded
    assert bf16["status"] == "skipped" and bf16["reason"] == "excluded by --exclude backend=tor*,precision=bf16"
    with pytest.raises(UnweatherError, match="KEY=VALUE"):
        parse_exclusion("speed=fast")

    def slow(x):
        time.sleep(0.02)
        return x

    batches = [torch.zeros(1, 3, 8, 8)]
    for warmup in (0, 1):
        with pytest.raises(TooSlowError, match="first call took"):
            time_engine(slow, batches, warmup=warmup, repeats=1, max_call_s=0.001)
    assert len(time_engine(slow, batches, warmup=1, repeats=1, max_call_s=10.0)["samples_ms"]) == 1


def test_tensorrt_engines_are_built_for_the_benchmarked_shape(tmp_path):
    import onnx

    from unweather.bench.runner import tensorrt_profile
    from unweather.engine.export import export_onnx
    from unweather.models import build

    config = BenchConfig(backends=[BackendSpec("tensorrt")], resolutions=[Resolution(640, 360)], batches=[2])
    combo = combinations(config)[-1]
    # Exported graphs pad frames themselves: the profile is in frame sizes.
    assert tensorrt_profile(combo) == {"opt_shape": "2x3x360x640", "max_shape": "4x3x1088x1920"}
    path = tmp_path / "identity.onnx"
    export_onnx(build("identity"), path)
    onnx_combo = combinations(dataclasses.replace(config, models=[ModelSpec(str(path))]))[-1]
    assert tensorrt_profile(onnx_combo)["opt_shape"] == "2x3x360x640"
    # An ONNX file of the earlier layout runs at padded sizes.
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key == "unweather.pad_multiple"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    assert tensorrt_profile(onnx_combo) == {"opt_shape": "2x3x368x640", "max_shape": "4x3x1088x1920"}


def test_results_files_get_the_permissions_of_an_ordinary_new_file(tmp_path):
    out = tmp_path / "r.json"
    old = os.umask(0o022)
    try:
        assert main(["bench", "--models", "identity", "--backends", "torch", "--precisions", "fp32", "--resolutions",
                     "32x32", "--frames", "1", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--no-pipeline",
                     "--no-progress", "--json", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # a service running as another user can read it
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_failures_are_classified():
    combo = combinations(BenchConfig(precisions=["fp16"]))[-1]
    assert classify_failure(torch.OutOfMemoryError("CUDA out of memory"), combo)[0] == "skipped"
    status, reason = classify_failure(RuntimeError('"slow_conv2d" not implemented for \'Half\''), combo)
    assert status == "skipped" and "fp16" in reason
    status, reason = classify_failure(ValueError("bad\nsecond line"), combo)
    assert (status, reason) == ("failed", "ValueError: bad")
    # Our own errors: a refusal to open the engine is a skip, one raised while measuring a failure.
    assert classify_failure(UnweatherError("bf16 is emulated here"), combo, opening=True) == (
        "skipped", "bf16 is emulated here")
    assert classify_failure(UnweatherError("the pipeline stopped: boom"), combo) == (
        "failed", "the pipeline stopped: boom")


def test_a_broken_pipeline_is_failed_not_skipped(tmp_path, monkeypatch):
    import unweather.bench.runner as runner

    def broken(*args, **kwargs):
        raise UnweatherError("the pipeline stopped: the encoder broke")

    monkeypatch.setattr(runner, "time_pipeline", broken)
    out = tmp_path / "r.json"
    argv = ["bench", "--models", "identity", "no-such-model", "--backends", "torch", "--precisions", "fp32",
            "--resolutions", "32x32", "--frames", "1", "--repeats", "1", "--warmup", "0", "--device", "cpu",
            "--no-progress", "--json", str(out), "--markdown", str(tmp_path / "r.md")]
    assert main(argv) == 1  # measured, but an error happened: not a clean run
    rows = json.loads(out.read_text())["results"]
    (ok,) = [r for r in rows if r["model"] == "identity"]
    assert ok["status"] == "ok" and ok["pipeline"] == {"status": "failed",
                                                       "reason": "the pipeline stopped: the encoder broke"}
    (missing,) = [r for r in rows if r["model"] == "no-such-model"]
    assert missing["status"] == "failed" and "no-such-model" in missing["reason"]  # a mistake, not a skip
    table = (tmp_path / "r.md").read_text()
    assert "- pipeline failed (error): the pipeline stopped: the encoder broke" in table
    assert "- failed (error): no-such-model torch fp32" in table


def test_percentiles_and_summary():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5 and math.isclose(percentile(values, 95), 95.05)
    s = summarize([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["mean"]) == (2.0, 1.0, 3.0, 2.0)


def test_save_results_adds_machine_info_and_writes_strict_json(tmp_path):
    path = save_results(tmp_path / "sub" / "x.json", {"value": float("nan"), "shape": (1, 2)})
    data = json.loads(path.read_text())
    assert data["value"] is None and data["shape"] == [1, 2]
    assert data["machine"]["cpu"]["model"] and "torch" in data["machine"]["libraries"]
    info = machine_info()
    assert info["cpu"]["cores"] >= 1 and info["ram_gb"] > 0
    # Every results file says what the CPU runs fast: its flags, kind, native bf16/int8, torch's kernels.
    caps = cpu.detect()
    assert data["machine"]["cpu"]["flags"] == caps.flags and set(caps.flags) == set(cpu.FLAGS)
    for key in ("kind", "native_bf16", "native_int8", "torch_capability"):
        assert data["machine"]["cpu"][key] == caps.to_dict()[key]


def test_the_table_header_names_the_cpu_and_its_flags(bench_run):
    _, payload, out = bench_run
    line = cpu.describe(payload["machine"]["cpu"])
    assert line.startswith(payload["machine"]["cpu"]["model"]) and payload["machine"]["cpu"]["kind"] in line
    present = [name for name, on in payload["machine"]["cpu"]["flags"].items() if on]
    assert all(name in line for name in present)
    assert f"Measured on {line}" in (out / "r.md").read_text()
    amx = cpu.describe(REAL_DETECT(AMX_CPU).to_dict())
    assert "AMX: avx2 fma avx512f avx512_bf16 amx_bf16" in amx and "native bf16" in amx
    assert "no native bf16 or int8" in cpu.describe(REAL_DETECT(AVX2_CPU).to_dict())
    assert cpu.describe({"model": "Old CPU"}) == "Old CPU"  # results written before flags were recorded


class CountingDeadline:
    """A deadline that passes after `checks` checks (time_engine checks it before every call)."""

    def __init__(self, checks: int, seconds: float = 9.0) -> None:
        self.checks, self.seconds = checks, seconds

    def expired(self) -> bool:
        self.checks -= 1
        return self.checks < 0

    def remaining(self) -> float:
        return 0.0 if self.checks <= 0 else 60.0


def test_engine_timing_stops_at_the_deadline_and_keeps_what_it_timed():
    from unweather.bench.runner import TimeLimitError

    calls = []
    batches = [torch.zeros(1, 3, 8, 8)] * 4

    def engine(x):
        calls.append(1)
        return x

    # 2 warm-up calls, then a first pass of 4 and 1 call of the second: 5 timed of the 12 asked for.
    result = time_engine(engine, batches, warmup=2, repeats=3, deadline=CountingDeadline(7))
    assert len(calls) == 7 and result["timed_out"] is True and len(result["samples_ms"]) == 5
    assert len(result["fps_per_repeat"]) == 2  # the partial pass counts its own call
    assert time_engine(engine, batches, warmup=1, repeats=1, deadline=CountingDeadline(99))["timed_out"] is False
    with pytest.raises(TimeLimitError, match="time limit of 9 s .* during the warm-up"):
        time_engine(engine, batches, warmup=3, repeats=1, deadline=CountingDeadline(2))


def test_a_combination_past_its_time_limit_is_reported_timed_out_with_its_figures(tmp_path, monkeypatch):
    import unweather.bench.runner as runner

    limits = []

    def after(seconds):
        limits.append(seconds)
        # The engine's half: 1 warm-up call and 2 timed calls; the whole limit has passed by the pipeline.
        return CountingDeadline(3 if len(limits) == 2 else 0, seconds)

    monkeypatch.setattr(runner.Deadline, "after", staticmethod(after))
    out = tmp_path / "r.json"
    argv = ["bench", "--models", "identity", "--backends", "torch", "--precisions", "fp32", "--resolutions",
            "32x32", "--frames", "4", "--repeats", "2", "--warmup", "1", "--device", "cpu", "--no-progress",
            "--time-limit", "7", "--json", str(out), "--markdown", str(tmp_path / "r.md")]
    assert main(argv) == 0  # timed out is no error: it measured what it could
    payload = json.loads(out.read_text())
    assert limits == [7.0, 3.5] and payload["config"]["time_limit_s"] == 7.0 and "--time-limit 7" in payload["command"]
    (row,) = payload["results"]
    assert row["status"] == "timed_out"
    assert row["reason"].startswith("the engine timing's half of the time limit of 7 s (--time-limit) ran out")
    assert len(row["engine"]["samples_ms"]) == 2 and row["engine"]["x_vs_baseline"] == 1.0
    assert row["pipeline"]["status"] == "timed_out" and "fps" not in row["pipeline"]
    table = (tmp_path / "r.md").read_text()
    assert "(timed out, 2 calls)" in table
    assert "- timed out: identity torch fp32 32x32 batch 1: the engine timing" in table
    assert "at most 7 s per combination" in table


def test_a_pipeline_past_its_time_limit_keeps_the_runs_it_finished(tmp_path, monkeypatch):
    import unweather.bench.runner as runner
    from unweather.stream import RunConfig
    from unweather.stream.stats import RunStats

    runs = []

    def fake_run(source, output, config, engine, stop_event):
        runs.append(stop_event)
        if len(runs) == 2:
            stop_event.set()  # as the deadline's timer would, during the second run
        return RunStats(frames_out=4 if len(runs) == 1 else 1, fps=10.0 * len(runs))

    monkeypatch.setattr(runner, "_pipeline_api", lambda: (RunConfig, fake_run))
    deadline = runner.Deadline.after(60.0)
    result = runner.time_pipeline(None, tmp_path / "clip.mp4", 1, 3, tmp_path, deadline)
    assert len(runs) == 2 and result["status"] == "timed_out" and result["fps_per_repeat"] == [10.0, 20.0]
    expired = runner.time_pipeline(None, tmp_path / "clip.mp4", 1, 3, tmp_path, runner.Deadline.after(0.0))
    assert expired["status"] == "timed_out" and "before the pipeline restored a frame" in expired["reason"]
    # A run is stopped early enough to finish its queued frames by the limit: 9 calls of 1 s at 1.5x
    # do not fit in 5 s, so none starts.
    assert runner.drain_seconds(RunConfig().queue_size + 1, 1, 1.0) == 1.5 * (RunConfig().queue_size + 1)
    assert runner.drain_seconds(9, 4, 1.0) == 1.5 * 3
    runs.clear()
    late = runner.time_pipeline(None, tmp_path / "clip.mp4", 1, 3, tmp_path, runner.Deadline.after(5.0), call_s=1.0)
    assert late["status"] == "timed_out" and runs == []


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["bench", "--models", "identity", "--resolutions", "big", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unweather: error:") and "WIDTHxHEIGHT" in err and len(err.splitlines()) == 1
    assert main(["bench", "--models", "identity", "--backends", "tensorflow", "--no-progress"]) == 1
    assert "known backends: torch, onnxruntime, tensorrt" in capsys.readouterr().err


def test_live_rate_reports_latency_percentiles_and_drops(tmp_path, capsys):
    out = tmp_path / "live.json"
    argv = ["bench", "--models", "identity", "--backends", "torch", "--precisions", "fp32", "--resolutions", "32x32",
            "--frames", "6", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--no-pipeline", "--no-progress",
            "--live", "50", "--json", str(out)]
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["live_rate"] == 50 and "--live 50" in payload["command"]
    (row,) = payload["results"]
    live = row["live"]
    assert live["status"] == "ok" and live["rate"] == 50
    assert live["frames_in"] == 6 and live["frames_out"] + live["dropped"] == 6
    assert 0 <= live["dropped_pct"] <= 100
    lat = live["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    table = capsys.readouterr().out
    assert "| input FPS | frames in / out / dropped | latency p50 ms | p95 ms | p99 ms |" in table
    assert f"| identity | torch | fp32 | 32x32 | 50 | 6 / {live['frames_out']} / {live['dropped']} |" in table
    assert main([*argv[:-4], "--live", "0"]) == 1
    assert "--live takes a frame rate above 0" in capsys.readouterr().err
