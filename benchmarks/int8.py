"""INT8 on the CPU: the `fast` model's QDQ graph in ONNX Runtime against its FP32 graph and torch FP32, and its PSNR.

    python benchmarks/int8.py                        # 640x360, JSON in benchmarks/results/int8.json
    python benchmarks/int8.py --threads 1 --rounds 9 --frames data/corpus_meta/valid
    python benchmarks/int8.py --keep-fp32 down3.conv     # one more int8 row with that convolution in float

Speed: the engine alone (batch 1, frames in memory), torch fp32, ONNX Runtime fp32 and ONNX Runtime
int8 timed in interleaved rounds (each round times every engine on the same frames in turn, so load
from other processes falls on all of them alike); median, p95 and spread per engine. One more int8
row, "onnxruntime int8-u8": the convolutions quantized the way ONNX Runtime's documentation suggests
for x86 CPUs (unsigned asymmetric activations, outputs quantized too, so every convolution fuses
into QLinearConv), which is not TensorRT's format and not what `unweather export` writes: it shows
whether another INT8 flavour would be faster here.

Accuracy: PSNR of the int8 graph against the fp32 graph and against torch fp32 on real frames (the
corpus's validation photos with rain, snow and haze when `data/corpus_meta/valid` exists, else the
bundled photos), none of them used for calibration (the export calibrates on the bundled demo photo).

The JSON carries the CPU (`unweather.cpu.detect()`: model, flags, torch's kernel level), library
versions, the git commit and the load average before and after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "corpus_meta" / "valid"


def real_frames(source: Path | None, count: int, size: tuple[int, int]) -> list[tuple[str, torch.Tensor]]:
    """Up to `count` real frames, center-cropped to at most `size` (w, h), spread over `source`'s images."""
    from unweather.engine.export import bundled_photo, center_crop, demo_photo
    from unweather.media import is_image_file, read_rgb

    if source is None or not source.is_dir():
        return [("bundled check photo", bundled_photo()), ("bundled demo photo (calibration)", demo_photo())]
    files = sorted(p for p in source.rglob("*") if is_image_file(p))
    step = max(1, len(files) // count)
    frames = []
    for path in files[::step][:count]:
        rgb = torch.from_numpy(read_rgb(path).astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
        frame = center_crop(rgb, max(size))[..., :size[1], :size[0]]
        frames.append((str(path.relative_to(source)), frame.contiguous()))
    return frames


def u8_variant(fp32_path: Path, out_path: Path) -> None:
    """The fp32 graph's convolutions quantized with unsigned asymmetric activations (ONNX Runtime's x86 advice)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from unweather.engine.export import demo_photo

    class One(CalibrationDataReader):
        def __init__(self) -> None:
            self.frames = iter([demo_photo().numpy()])

        def get_next(self) -> dict[str, np.ndarray] | None:
            frame = next(self.frames, None)
            return None if frame is None else {"frames": frame}

    prepared = out_path.with_name("prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out_path), One(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def time_rounds(engines: dict[str, Any], frames: list[torch.Tensor], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per frame of each engine, in interleaved rounds (one warm-up call each first)."""
    samples: dict[str, list[float]] = {name: [] for name in engines}
    with torch.inference_mode():
        for engine in engines.values():
            engine(frames[0])
        for _ in range(rounds):
            for name, engine in engines.items():
                for frame in frames:
                    start = time.perf_counter()
                    engine(frame)
                    samples[name].append((time.perf_counter() - start) * 1000.0)
    return samples


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "min": ordered[0], "max": ordered[-1], "samples": len(ordered)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast", help="shipped weights or registry name (default: fast)")
    parser.add_argument("--size", default="640x360", metavar="WxH", help="frame size timed (default: 640x360)")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime (default: 2)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default: 7)")
    parser.add_argument("--timed-frames", type=int, default=4, help="frames timed per engine and round (default: 4)")
    parser.add_argument("--frames", type=Path, default=CORPUS,
                        help="folder of real frames for PSNR (default: data/corpus_meta/valid if present)")
    parser.add_argument("--psnr-frames", type=int, default=27, help="real frames scored (default: 27)")
    parser.add_argument("--keep-fp32", metavar="PATTERN", help="also time an int8 graph with these convolutions "
                                                                  "in float (`unweather export --keep-fp32`)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "int8.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

    import unweather.engine as engines
    from unweather.engine.export import ExportConfig, export_onnx, psnr
    from unweather.engine.onnxruntime_backend import OnnxRuntimeEngine
    from unweather.engine.sources import load_network, resolve
    from unweather.machine import load_average, machine_info, save_results

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    machine = machine_info()
    machine["load_average_start"] = machine.pop("load_average", None)
    net = load_network(resolve(args.model))
    frames = real_frames(args.frames, args.psnr_frames, (w, h))
    with tempfile.TemporaryDirectory(prefix="unweather-int8-bench-") as folder:
        fp32_path, int8_path, u8_path = (Path(folder) / f"{args.model}-{p}.onnx" for p in ("fp32", "int8", "u8"))
        export_onnx(net, fp32_path)
        start = time.perf_counter()
        report = export_onnx(net, int8_path, ExportConfig(precision="int8"))
        export_s = time.perf_counter() - start
        print(report.summary(), flush=True)
        u8_variant(fp32_path, u8_path)
        kept_path = Path(folder) / f"{args.model}-int8-kept.onnx"
        if args.keep_fp32:
            export_onnx(net, kept_path, ExportConfig(precision="int8", keep_fp32=(args.keep_fp32,), min_psnr=0))
        opened = {
            "torch fp32": engines.open(args.model, backend="torch", precision="fp32", device="cpu"),
            "onnxruntime fp32": OnnxRuntimeEngine(fp32_path, threads=args.threads),
            "onnxruntime int8": OnnxRuntimeEngine(int8_path, precision="int8", threads=args.threads),
            "onnxruntime int8-u8": OnnxRuntimeEngine(u8_path, precision="int8", threads=args.threads),
        }
        if args.keep_fp32:
            opened[f"onnxruntime int8 keep {args.keep_fp32}"] = OnnxRuntimeEngine(kept_path, precision="int8",
                                                                                  threads=args.threads)
        int8_rows = [name for name in opened if "int8" in name]
        # Accuracy on real frames of their own size.
        scores = []
        with torch.inference_mode():
            for name, frame in frames:
                fp32_graph = opened["onnxruntime fp32"](frame).numpy()
                torch_fp32 = opened["torch fp32"](frame).numpy()
                row = {"frame": name, "size": list(frame.shape[-2:][::-1])}
                for label in int8_rows:
                    out = opened[label](frame).numpy()
                    row[f"{label} vs fp32 graph"] = round(psnr(out, fp32_graph), 3)
                    row[f"{label} vs torch fp32"] = round(psnr(out, torch_fp32), 3)
                scores.append(row)
        timed = [torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(i)) for i in range(args.timed_frames)]
        if frames and tuple(frames[0][1].shape[-2:]) == (h, w):
            timed = [f for _, f in frames[:args.timed_frames]]
        samples = time_rounds(opened, timed, args.rounds)
        for engine in opened.values():
            engine.close()

    speed = {name: {**summary(values), "fps": 1000.0 / statistics.median(values)} for name, values in samples.items()}
    base = speed["torch fp32"]["median"]
    for row in speed.values():
        row["x_vs_torch_fp32"] = base / row["median"]
    accuracy = {}
    for label in int8_rows:
        for ref in ("fp32 graph", "torch fp32"):
            values = [r[f"{label} vs {ref}"] for r in scores]
            accuracy[f"{label} vs {ref}"] = {"min": min(values), "median": statistics.median(values),
                                             "mean": statistics.fmean(values)}
    machine["load_average_end"] = load_average()
    payload = {
        "schema": "unweather.benchmarks.int8/1",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model, "size": [w, h], "threads": args.threads, "rounds": args.rounds,
        "note": "engine alone, batch 1; ms per frame, interleaved rounds; int8 = what `unweather export "
                "--precision int8` writes (symmetric int8 QDQ, TensorRT's format); int8-u8 = ONNX Runtime's x86 "
                "advice (uint8 asymmetric activations), for comparison only",
        "keep_fp32": args.keep_fp32,
        "export": {"int8_seconds": round(export_s, 1), "gate_psnr": report.psnr,
                   "calibration": report.calibration, "operators": report.operators},
        "speed_ms": speed,
        "psnr_db": accuracy,
        "psnr_frames": scores,
        "machine": machine,
    }
    path = save_results(args.json, payload)
    cpu = machine.get("cpu", {})
    print(f"{args.model} at {w}x{h}, {args.threads} thread(s), CPU {cpu.get('model')} ({cpu.get('kind')}); "
          f"load {machine['load_average_start']} -> {machine['load_average_end']}")
    for name, row in speed.items():
        print(f"  {name:34s} median {row['median']:7.1f} ms  p95 {row['p95']:7.1f} ms  "
              f"{row['fps']:5.1f} FPS  x{row['x_vs_torch_fp32']:.2f} vs torch fp32")
    for name, row in accuracy.items():
        print(f"  {name:50s} PSNR min {row['min']:.2f} dB, median {row['median']:.2f} dB over {len(scores)} frames")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
