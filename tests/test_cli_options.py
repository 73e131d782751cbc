"""Every option of every subcommand either takes effect or is refused with one line where it cannot apply.

The parsers are read from `unweather.cli.build_parser()`, and every option found there must have an
entry in `TABLE`: a new option without one fails `test_every_option_has_an_entry`, so none can be
silently ignored again.

An entry lists probes. `Effect(args, mode)`: the command of that mode, with `args` added, hands
something different to the code that does the work than the command without them (the work itself is
replaced by spies, so each probe takes milliseconds: the pipeline, Ray, training and the benchmark have
their own tests). `Refused(args, mode)`: the command fails with exit status 1 and one error line that
names the option. Modes are base command lines (`BASES`); `run` has one per way it runs: one input, several,
images, a live stream, and on Ray with files (archive) or cameras (fleet).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from media import make_images, make_video

from unweather.cli import build_parser, main
from unweather.errors import UnweatherError

URL = "rtsp://127.0.0.1:9/cam"


@dataclass(frozen=True)
class Effect:
    """`args` added to the command of `mode` change what reaches the work (`extra`: in both runs)."""

    args: tuple[str, ...]
    mode: str
    extra: tuple[str, ...] = ()
    argv: tuple[str, ...] | None = None  # a whole command line instead (positionals)


@dataclass(frozen=True)
class Refused:
    """`args` added to the command of `mode` are refused: exit 1, one error line naming the option."""

    args: tuple[str, ...]
    mode: str
    names: str = ""  # what the error names, when not the option itself


def E(*args: str, mode: str, extra: tuple[str, ...] = ()) -> Effect:
    return Effect(tuple(args), mode, extra)


def R(*args: str, mode: str, names: str = "") -> Refused:
    return Refused(tuple(args), mode, names)


def A(*argv: str, mode: str) -> Effect:
    return Effect((), mode, argv=tuple(argv))


# Paths below are relative to the test's working folder, made by the `world` fixture.
BASES = {
    "run single": ["run", "a.mp4", "--model", "identity"],
    "run many": ["run", "a.mp4", "b.webm", "-o", "out/", "--model", "identity"],
    "run images": ["run", "photos/", "-o", "clean/", "--model", "identity"],
    "run live": ["run", URL, "-o", "rec.mkv", "--model", "identity"],
    "run archive": ["run", "a.mp4", "b.webm", "-o", "out/", "--model", "identity", "--ray"],
    "run fleet": ["run", URL, "-o", "out/", "--model", "identity", "--ray"],
    "models": ["models"],
    "convert": ["convert", "net.pth", "-o", "net.safetensors"],
    "export": ["export", "--model", "identity", "-o", "net.onnx"],
    "build": ["build", "net.onnx", "-o", "net.plan"],
    "synth": ["synth", "photos/", "-o", "synth"],
    "eval": ["eval", "--model", "identity", "--meta-dir", "data"],
    "bench": ["bench", "--models", "identity"],
    "demo": ["demo"],
    "train teacher": ["train", "teacher", "--weather", "rain", "--meta-dir", "data", "-o", "t.safetensors",
                      "--preset", "tiny", "--model", "student_small"],
    "train student": ["train", "student", "--teachers", "teacher_rain.safetensors", "teacher_snow.safetensors",
                      "teacher_haze.safetensors", "--meta-dir", "data", "-o", "s.safetensors", "--preset", "tiny",
                      "--model", "student_small", "--mcr", "teacher"],
    "train video": ["train", "video", "--images", "photos/", "--init", "init.safetensors", "-o", "v.safetensors"],
}

RUN_MODES = ("single", "many", "images", "live", "archive", "fleet")
NETWORK = {"--open-timeout": "3", "--read-timeout": "3", "--stall-timeout": "3", "--give-up-after": "30"}
TRAIN_COMMON: dict[str, list] = {
    "--meta-dir": [E("--meta-dir", "data/", mode="{m}")],
    "--model": [E("--model", "student_base", mode="{m}")],
    "--output": [E("-o", "other.safetensors", mode="{m}")],
    "--preset": [E("--preset", "cpu", mode="{m}")],
    "--config": [E("--config", "train.yaml", mode="{m}")],
    "--set": [E("--set", "optim.lr=0.01", mode="{m}")],
    "--run-dir": [E("--run-dir", "elsewhere", mode="{m}")],
    "--resume": [E("--resume", mode="{m}")],
    "--device": [E("--device", "meta", mode="{m}")],
    "--seed": [E("--seed", "7", mode="{m}")],
    "--crop": [E("--crop", "16", mode="{m}")],
    "--batch-per-weather": [E("--batch-per-weather", "3", mode="{m}")],
    "--clean-per-batch": [E("--clean-per-batch", "0", mode="{m}")],
    "--lr": [E("--lr", "0.5", mode="{m}")],
    "--val-every": [E("--val-every", "1", mode="{m}")],
    "--threads": [E("--threads", "1", mode="{m}")],
    "--no-progress": [E("--no-progress", mode="{m}", extra=("--set", "log.progress=true"))],
}


def _train(mode: str) -> dict[tuple[str, str], list]:
    return {(mode, k): [dataclasses.replace(p, mode=mode) for p in v] for k, v in TRAIN_COMMON.items()}


TABLE: dict[tuple[str, str], list[Effect | Refused]] = {
    # -- run: on this machine and on Ray ---------------------------------------------------------------
    ("run", "inputs"): [A("run", "b.webm", "--model", "identity", mode="run single"),
                        A("run", "a.mp4", "c.mp4", "-o", "out/", "--model", "identity", "--ray", mode="run archive")],
    ("run", "--output"): [E("-o", "x.mkv", mode="run single"), E("-o", "other/", mode="run many"),
                          E("-o", "other/", mode="run archive"), E("-o", "other/", mode="run fleet")],
    ("run", "--model"): [E("--model", "fast", mode=f"run {m}") for m in RUN_MODES],
    ("run", "--backend"): [E("--backend", "torch", mode="run single"), E("--backend", "torch", mode="run archive")],
    ("run", "--precision"): [E("--precision", "fp32", mode="run single"), E("--precision", "fp32", mode="run fleet"),
                             E("--precision", "int8", mode="run single")],
    ("run", "--allow-slow-precision"): [E("--allow-slow-precision", mode="run single", extra=("--precision", "bf16")),
                                        E("--allow-slow-precision", mode="run archive", extra=("--precision", "bf16")),
                                        R("--allow-slow-precision", mode="run single"),
                                        R("--allow-slow-precision", mode="run fleet")],
    ("run", "--device"): [E("--device", "cpu", mode="run single"), E("--device", "cpu", mode="run archive")],
    ("run", "--trust-checkpoint"): [E("--trust-checkpoint", mode="run single"),
                                    E("--trust-checkpoint", mode="run archive")],
    ("run", "--batch"): [E("--batch", "4", mode="run single"), E("--batch", "4", mode="run many"),
                         E("--batch", "4", mode="run archive"),
                         E("--batch", "4", mode="run live", extra=("--offline",)),
                         R("--batch", "4", mode="run live"), R("--batch", "4", mode="run fleet")],
    ("run", "--tile"): [E("--tile", "64", mode="run single"), E("--tile", "64", mode="run archive")],
    ("run", "--tile-overlap"): [E("--tile-overlap", "8", mode="run single", extra=("--tile", "64")),
                                E("--tile-overlap", "8", mode="run fleet", extra=("--tile", "64")),
                                R("--tile-overlap", "8", mode="run single"),
                                R("--tile-overlap", "8", mode="run archive")],
    ("run", "--engine-batch"): [E("--engine-batch", "2", mode="run many"), R("--engine-batch", "2", mode="run single"),
                                R("--engine-batch", "2", mode="run archive")],
    ("run", "--live"): [E("--live", mode="run single"), E("--live", mode="run many"), E("--live", mode="run fleet"),
                        R("--live", mode="run archive")],
    ("run", "--offline"): [E("--offline", mode="run live"), E("--offline", mode="run fleet")],
    ("run", "--max-frames"): [E("--max-frames", "3", mode="run single"), E("--max-frames", "3", mode="run many"),
                              R("--max-frames", "3", mode="run archive"), R("--max-frames", "3", mode="run fleet")],
    ("run", "--start"): [E("--start", "0.1", mode="run single"), E("--start", "0.1", mode="run many"),
                         R("--start", "0.1", mode="run archive"), R("--start", "0.1", mode="run fleet")],
    ("run", "--duration"): [E("--duration", "2", mode="run single"), E("--duration", "2", mode="run live"),
                            E("--duration", "2", mode="run fleet"), R("--duration", "2", mode="run archive")],
    ("run", "--strength"): [E("--strength", "0.5", mode="run single"), E("--strength", "0.5", mode="run archive")],
    ("run", "--mask"): [E("--mask", "mask.png", mode="run single"), E("--mask", "mask.png", mode="run fleet")],
    ("run", "--side-by-side"): [E("--side-by-side", mode="run single"), E("--side-by-side", mode="run archive")],
    # A video model carries its own history: --temporal is for frame models.
    ("run", "--temporal"): [E("--temporal", "0.5", mode="run live"), E("--temporal", "0.5", mode="run fleet"),
                            R("--temporal", "0.5", "--model", "video_small", mode="run single"),
                            R("--temporal", "0.5", "--model", "video_small", mode="run fleet")],
    ("run", "--stats"): [E("--stats", "s.json", mode=f"run {m}") for m in RUN_MODES],
    ("run", "--codec"): [E("--codec", "libx264", mode="run single"), E("--codec", "libx264", mode="run many"),
                         E("--codec", "libx264", mode="run archive"), R("--codec", "libx264", mode="run images")],
    ("run", "--crf"): [E("--crf", "20", mode="run single"), E("--crf", "20", mode="run fleet"),
                       R("--crf", "20", mode="run images")],
    ("run", "--preset"): [E("--preset", "slow", mode="run live"), E("--preset", "slow", mode="run archive"),
                          R("--preset", "slow", mode="run images")],
    ("run", "--quiet"): [E("-q", mode="run single"), E("-q", mode="run many"), E("-q", mode="run archive")],
    **{("run", name): [E(name, value, mode="run live"), E(name, value, mode="run fleet"),
                       R(name, value, mode="run single"), R(name, value, mode="run archive")]
       for name, value in NETWORK.items()},
    ("run", "--rtsp-transport"): [E("--rtsp-transport", "udp", mode="run live"),
                                  E("--rtsp-transport", "udp", mode="run single", extra=("-o", "rtsp://127.0.0.1:9/out")),
                                  R("--rtsp-transport", "udp", mode="run single"),
                                  R("--rtsp-transport", "udp", mode="run archive")],
    ("run", "--ray"): [E("--ray", mode="run many"), E("--ray", "127.0.0.1:6379", mode="run many")],
    ("run", "--chunk-seconds"): [E("--chunk-seconds", "2", mode="run archive"),
                                 R("--chunk-seconds", "2", mode="run single"),
                                 R("--chunk-seconds", "2", mode="run fleet")],
    ("run", "--resume"): [E("--resume", mode="run archive"), R("--resume", mode="run many"),
                          R("--resume", mode="run fleet")],
    ("run", "--max-failed"): [E("--max-failed", "1", mode="run archive"), R("--max-failed", "1", mode="run many"),
                              R("--max-failed", "1", mode="run fleet")],
    ("run", "--actors"): [E("--actors", "2", mode="run archive"), R("--actors", "2", mode="run single"),
                          R("--actors", "2", mode="run fleet")],
    ("run", "--gpus-per-actor"): [E("--gpus-per-actor", "0.5", mode="run archive"),
                                  R("--gpus-per-actor", "0.5", mode="run many"),
                                  R("--gpus-per-actor", "0.5", mode="run fleet")],
    ("run", "--gpus-per-camera"): [E("--gpus-per-camera", "0.5", mode="run fleet"),
                                   R("--gpus-per-camera", "0.5", mode="run live"),
                                   R("--gpus-per-camera", "0.5", mode="run archive")],
    ("run", "--ray-stats"): [E("--ray-stats", "r.json", mode="run single"),
                             E("--ray-stats", "r.json", mode="run archive"),
                             R("--stats", "a.json", "--ray-stats", "r.json", mode="run single", names="--ray-stats")],
    # -- models, convert ---------------------------------------------------------------------------------
    ("models", "--size"): [E("--size", "64x32", mode="models")],
    ("models", "--json"): [E("--json", mode="models")],
    ("convert", "checkpoint"): [A("convert", "other.pth", "-o", "net.safetensors", mode="convert")],
    ("convert", "--output"): [E("-o", "other.safetensors", mode="convert")],
    ("convert", "--arch"): [E("--arch", "student_small", mode="convert")],
    ("convert", "--options"): [E("--options", '{"widths": [8]}', mode="convert")],
    ("convert", "--trust-checkpoint"): [E("--trust-checkpoint", mode="convert")],
    ("convert", "--half"): [E("--half", mode="convert")],
    ("convert", "--metadata"): [E("--metadata", "data=mine", mode="convert")],
    # -- export, build -------------------------------------------------------------------------------------
    ("export", "--model"): [E("--model", "student_small", mode="export")],
    ("export", "--precision"): [E("--precision", "fp16", mode="export"), E("--precision", "int8", mode="export")],
    ("export", "--opset"): [E("--opset", "19", mode="export")],
    ("export", "--calibration-frames"): [E("--calibration-frames", "photos/", mode="export"),
                                         E("--calibration-frames", "a.mp4", mode="export")],
    ("export", "--min-psnr"): [E("--min-psnr", "30", mode="export")],
    ("export", "--keep-fp32"): [E("--keep-fp32", "context.*", mode="export")],
    ("export", "--trust-checkpoint"): [E("--trust-checkpoint", mode="export")],
    ("export", "--output"): [E("-o", "other.onnx", mode="export")],
    ("build", "onnx"): [A("build", "other.onnx", "-o", "net.plan", mode="build")],
    ("build", "--output"): [E("-o", "other.plan", mode="build")],
    ("build", "--min-shape"): [E("--min-shape", "1x3x32x32", mode="build")],
    ("build", "--opt-shape"): [E("--opt-shape", "1x3x360x640", mode="build")],
    ("build", "--max-shape"): [E("--max-shape", "2x3x720x1280", mode="build")],
    ("build", "--workspace"): [E("--workspace", "512", mode="build")],
    ("build", "--device"): [E("--device", "cuda:1", mode="build")],
    ("build", "--force"): [E("--force", mode="build")],
    # -- synth, eval -------------------------------------------------------------------------------------------
    ("synth", "photos"): [A("synth", "photos/a.png", "-o", "synth", mode="synth")],
    ("synth", "--out"): [E("-o", "elsewhere", mode="synth")],
    ("synth", "--weather"): [E("--weather", "rain", mode="synth")],
    ("synth", "--crops"): [E("--crops", "3", mode="synth")],
    ("synth", "--size"): [E("--size", "64", mode="synth")],
    ("synth", "--seed"): [E("--seed", "3", mode="synth")],
    ("synth", "--valid-fraction"): [E("--valid-fraction", "0.5", mode="synth")],
    ("synth", "--clean-pairs"): [E("--clean-pairs", "2", mode="synth")],
    ("eval", "--model"): [E("--model", "fast", mode="eval")],
    ("eval", "--meta-dir"): [E("--meta-dir", "data2", mode="eval")],
    ("eval", "--split"): [E("--split", "train", mode="eval")],
    ("eval", "--root"): [E("--root", "data2", mode="eval")],
    ("eval", "--json"): [E("--json", "scores.json", mode="eval")],
    ("eval", "--backend"): [E("--backend", "torch", mode="eval")],
    ("eval", "--device"): [E("--device", "cpu", mode="eval")],
    ("eval", "--precision"): [E("--precision", "fp32", mode="eval")],
    ("eval", "--allow-slow-precision"): [E("--allow-slow-precision", mode="eval", extra=("--precision", "bf16")),
                                         R("--allow-slow-precision", mode="eval")],
    ("eval", "--trust-checkpoint"): [E("--trust-checkpoint", mode="eval")],
    ("eval", "--limit"): [E("--limit", "2", mode="eval"), R("--limit", "0", mode="eval")],
    # -- bench, demo ---------------------------------------------------------------------------------------------
    ("bench", "input"): [A("bench", "a.mp4", "--models", "identity", mode="bench")],
    ("bench", "--models"): [E("--models", "fast", mode="bench")],
    ("bench", "--backends"): [E("--backends", "torch", mode="bench")],
    ("bench", "--precisions"): [E("--precisions", "fp32", mode="bench")],
    ("bench", "--resolutions"): [E("--resolutions", "64x32", mode="bench")],
    ("bench", "--batch"): [E("--batch", "2", mode="bench")],
    ("bench", "--frames"): [E("--frames", "4", mode="bench")],
    ("bench", "--repeats"): [E("--repeats", "1", mode="bench")],
    ("bench", "--warmup"): [E("--warmup", "0", mode="bench")],
    ("bench", "--exclude"): [E("--exclude", "backend=tensorrt", mode="bench")],
    ("bench", "--max-call-seconds"): [E("--max-call-seconds", "5", mode="bench")],
    ("bench", "--time-limit"): [E("--time-limit", "5", mode="bench"), E("--time-limit", "0", mode="bench")],
    ("bench", "--allow-slow-precision"): [E("--allow-slow-precision", mode="bench")],
    ("bench", "--device"): [E("--device", "cpu", mode="bench")],
    ("bench", "--json"): [E("--json", "b.json", mode="bench")],
    ("bench", "--plot"): [E("--plot", "b.png", mode="bench")],
    ("bench", "--markdown"): [E("--markdown", "b.md", mode="bench")],
    ("bench", "--no-pipeline"): [E("--no-pipeline", mode="bench")],
    ("bench", "--live"): [E("--live", "10", mode="bench")],
    ("bench", "--no-progress"): [E("--no-progress", mode="bench")],
    ("demo", "--output"): [E("-o", "elsewhere", mode="demo")],
    ("demo", "--frames"): [E("--frames", "4", mode="demo")],
    ("demo", "--size"): [E("--size", "64x32", mode="demo")],
    ("demo", "--weather"): [E("--weather", "snow", mode="demo")],
    ("demo", "--model"): [E("--model", "identity", mode="demo")],
    ("demo", "--device"): [E("--device", "cpu", mode="demo")],
    ("demo", "--seed"): [E("--seed", "5", mode="demo")],
    # -- train -----------------------------------------------------------------------------------------------------
    **_train("train teacher"),
    **_train("train student"),
    ("train teacher", "--weather"): [E("--weather", "snow", mode="train teacher")],
    ("train teacher", "--epochs"): [E("--epochs", "2", mode="train teacher")],
    ("train teacher", "--steps"): [E("--steps", "2", mode="train teacher")],
    ("train teacher", "--init"): [E("--init", "init.safetensors", mode="train teacher")],
    ("train student", "--teachers"): [E("--teachers", "rain=copy_rain.safetensors", "teacher_snow.safetensors",
                                        "teacher_haze.safetensors", mode="train student")],
    ("train student", "--kc-epochs"): [E("--kc-epochs", "2", mode="train student")],
    ("train student", "--ke-epochs"): [E("--ke-epochs", "2", mode="train student")],
    ("train student", "--kc-steps"): [E("--kc-steps", "1", mode="train student")],
    ("train student", "--ke-steps"): [E("--ke-steps", "1", mode="train student")],
    ("train student", "--mcr"): [E("--mcr", "none", mode="train student")],
    ("train student", "--scr-positive"): [E("--scr-positive", "gt", mode="train student")],
    ("train student", "--vgg19-weights"): [E("--vgg19-weights", "vgg19.pth", mode="train student")],
    ("train student", "--direct"): [E("--direct", mode="train student")],
    ("train student", "--init"): [E("--init", "init.safetensors", mode="train student")],
    ("train video", "--images"): [E("--images", "photos/", "data/", mode="train video")],
    ("train video", "--init"): [E("--init", "teacher_rain.safetensors", mode="train video")],
    ("train video", "--frame"): [E("--frame", "init.safetensors", mode="train video")],
    ("train video", "--output"): [E("-o", "other.safetensors", mode="train video")],
    ("train video", "--model"): [E("--model", "video_base", mode="train video")],
    ("train video", "--val-images"): [E("--val-images", "photos/", mode="train video")],
    ("train video", "--run-dir"): [E("--run-dir", "elsewhere", mode="train video")],
    ("train video", "--resume"): [E("--resume", mode="train video")],
    ("train video", "--steps"): [E("--steps", "3", mode="train video")],
    ("train video", "--batch"): [E("--batch", "2", mode="train video")],
    ("train video", "--frames"): [E("--frames", "3", mode="train video")],
    ("train video", "--crop"): [E("--crop", "32", mode="train video")],
    ("train video", "--lr"): [E("--lr", "0.01", mode="train video")],
    ("train video", "--clean-share"): [E("--clean-share", "0.5", mode="train video")],
    ("train video", "--consistency"): [E("--consistency", "2", mode="train video")],
    ("train video", "--val-every"): [E("--val-every", "5", mode="train video")],
    ("train video", "--seed"): [E("--seed", "5", mode="train video")],
    ("train video", "--threads"): [E("--threads", "2", mode="train video")],
}


def parser_options() -> set[tuple[str, str]]:
    """(subcommand, option) for every option of every subcommand, nested ones ("train teacher") too;
    an option is named by its long form, a positional by its dest."""
    found: set[tuple[str, str]] = set()

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())
                continue
            if path:
                name = max(action.option_strings, key=len) if action.option_strings else action.dest
                found.add((path, name))

    walk(build_parser(), "")
    # `train` itself only chooses the stage.
    found.discard(("train", "train_command"))
    return found


def test_every_option_has_an_entry():
    options = parser_options()
    missing = sorted(options - set(TABLE))
    assert not missing, (f"options without an entry in TABLE (say where each takes effect, and where it is "
                         f"refused): {missing}")
    assert sorted(set(TABLE) - options) == []
    assert all(TABLE[key] for key in TABLE)
    assert all(p.mode in BASES for probes in TABLE.values() for p in probes)


# -- the world the probes run in: tiny real files, and spies in place of the work ----------------------------------


class Stop(UnweatherError):
    """Raised by a spy to end a command once the work has been handed what it needs."""


def plain(x: Any) -> Any:
    """`x` as comparable plain data."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [plain(v) for v in x]
    if isinstance(x, (str, int, float, bool, type(None))):
        return x
    if isinstance(x, (Path, torch.device)):
        return str(x)
    if isinstance(x, torch.dtype):
        return str(x)
    if isinstance(x, (threading.Event, argparse.Namespace)):
        return type(x).__name__
    if isinstance(x, torch.nn.Module):
        return [type(x).__name__, getattr(x, "arch", None), plain(getattr(x, "arch_options", None)),
                sum(p.numel() for p in x.parameters())]
    if callable(x):
        return getattr(x, "__name__", type(x).__name__)
    return type(x).__name__


class Spies:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append([name, plain(args), plain(kwargs)])

    def fn(self, name: str, returns: Any = None, raises: type[BaseException] | None = None):
        def spy(*args: Any, **kwargs: Any) -> Any:
            self.record(name, *args, **kwargs)
            if raises is not None:
                raise raises(f"{name} reached")
            return returns() if callable(returns) else returns
        return spy


class FakeEngine:
    device = torch.device("cpu")

    def describe(self) -> str:
        return "fake"

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _ray_stats() -> dict:
    return {"totals": {"done": 0, "inputs": 0, "frames": 0, "seconds": 0.0, "files_per_minute": 0.0,
                       "skipped": 0, "failed": 0, "not_run": 0}, "inputs": []}


def _import_every_module() -> None:
    """Import every module of the package before anything is patched: a module first imported while a
    patch is in place would keep the spy it bound with `from X import name` for the rest of the session."""
    import importlib
    import pkgutil

    import unweather

    for info in pkgutil.walk_packages(unweather.__path__, "unweather."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # the optional extras (Ray, TensorRT) where they are not installed
            pass


def install_spies(monkeypatch: pytest.MonkeyPatch, spies: Spies) -> None:
    _import_every_module()
    import unweather.bench.report
    import unweather.bench.runner
    import unweather.cluster.ray_run
    import unweather.demo
    import unweather.engine
    import unweather.engine.export
    import unweather.engine.sources
    import unweather.engine.tensorrt_build
    import unweather.machine
    import unweather.models
    import unweather.models.cli
    import unweather.stream.multi
    import unweather.stream.runner
    import unweather.training.evaluate
    import unweather.training.synth
    import unweather.training.trainer
    import unweather.training.video
    from unweather.stream.multi import MultiStats
    from unweather.stream.stats import RunStats

    put = monkeypatch.setattr
    put(unweather.stream.runner, "run", spies.fn("run", RunStats))
    put(unweather.stream.multi, "run_many", spies.fn("run_many", MultiStats))
    put(unweather.cluster.ray_run, "run_on_ray", spies.fn("run_on_ray", _ray_stats))
    put(unweather.models.cli, "describe_models", spies.fn("describe_models", list))
    put(unweather.models.cli, "describe_weights", spies.fn("describe_weights", list))

    def load_checkpoint(*args: Any, **kwargs: Any) -> torch.nn.Module:
        spies.record("load_checkpoint", *args, **kwargs)
        from unweather.models import build

        return build("identity")

    def save(net: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        spies.record("save", net, path, *args, **kwargs)
        Path(path).write_bytes(b"")

    put(unweather.models, "load_checkpoint", load_checkpoint)
    put(unweather.models, "save", save)
    put(unweather.engine.sources, "load_network", spies.fn("load_network", lambda: torch.nn.Identity()))
    put(unweather.engine.export, "export_onnx", spies.fn("export_onnx", lambda: type("R", (), {"summary": str})()))
    put(unweather.engine.tensorrt_build, "expected_metadata", spies.fn("expected_metadata", dict))
    put(unweather.engine.tensorrt_build, "rebuild_reason", spies.fn("rebuild_reason", "missing"))
    put(unweather.engine.tensorrt_build, "build_engine", spies.fn(
        "build_engine", lambda: {"precision": "fp16", "tensorrt": "10", "gpu": "none", "build_seconds": 0}))
    put(unweather.training.synth, "synthesize", spies.fn(
        "synthesize", lambda: {"counts": {}, "photos": {"train": [], "valid": []}}))
    put(unweather.training.evaluate, "evaluate", spies.fn("evaluate", dict))
    put(unweather.training.video, "train_video", spies.fn("train_video", lambda: Path("v.safetensors")))
    put(unweather.engine, "open", spies.fn("engine.open", FakeEngine))
    put(unweather.bench.runner, "run_bench", spies.fn("run_bench", lambda: {"results": [{"status": "ok"}]}))
    put(unweather.bench.report, "markdown_report", spies.fn("markdown_report", "report"))
    put(unweather.bench.report, "write_plot", spies.fn("write_plot"))
    put(unweather.machine, "save_results", spies.fn("save_results"))
    put(unweather.demo, "make_demo", spies.fn("make_demo", lambda: unweather.demo.DemoResult(
        Path("d.mp4"), Path("r.mp4"), Path("ba.mp4"), Path("ba.png"), 1, 1.0, "identity", 1.0, 2.0)))
    put(torch, "set_num_threads", spies.fn("set_num_threads"))

    class Trainer:
        def __init__(self, cfg: Any, net: Any, stages: Any, batches: Any, valid: Any, run_dir: Any, save: Any,
                     metadata: Any, device: Any, **kwargs: Any) -> None:
            spies.record("Trainer", cfg.to_dict(), net, [[s.name, s.steps] for s in stages],
                         [batches.batch_size, batches.per_weather, batches.clean], valid is not None, run_dir,
                         metadata, device, **kwargs)

        def fit(self, resume: bool = False) -> None:
            spies.record("fit", resume=resume)
            raise Stop("training reached")

    put(unweather.training.trainer, "Trainer", Trainer)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny real inputs for every base command line."""
    from unweather.models import build, save
    from unweather.training.synth import synthesize

    root = tmp_path_factory.mktemp("world")
    make_video(root / "a.mp4", frames=3, size=(32, 24), audio=False)
    shutil.copy(root / "a.mp4", root / "c.mp4")
    make_video(root / "b.webm", frames=3, size=(32, 24), audio=False, codec="libvpx-vp9", options={})
    make_images(root / "photos", count=3, size=(48, 40))
    shutil.copy(root / "photos" / sorted(p.name for p in (root / "photos").iterdir())[0], root / "photos" / "a.png")
    for name in ("net.pth", "other.pth", "net.onnx", "other.onnx", "mask.png"):
        (root / name).write_bytes(b"")
    (root / "train.yaml").write_text("optim: {lr: 0.002}\n")
    synthesize(sorted((root / "photos").iterdir()), root / "data", weathers=["rain", "snow", "haze"], crops=2,
               size=32, seed=0, valid_fraction=0.34, clean_pairs=1, progress=False)
    small = {"widths": [4, 4, 8, 8], "context_channels": 4}
    for weather in ("rain", "snow", "haze"):
        save(build("student_small", **small), root / f"teacher_{weather}.safetensors",
             metadata={"weathers": json.dumps([weather]), "role": "teacher"})
    shutil.copy(root / "teacher_rain.safetensors", root / "copy_rain.safetensors")
    (root / "data2").symlink_to(root / "data")  # the same data under another name
    save(build("student_small"), root / "init.safetensors")
    return root


_BASE_CAPTURES: dict[tuple[str, tuple[str, ...]], Any] = {}


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def run_probe(world: Path, capsys: pytest.CaptureFixture[str], spies: Spies,
              argv: list[str]) -> tuple[int, Any, str]:
    """Run `argv` in `world`; return its exit status, what reached the work, and its stderr."""
    before = _files(world)
    spies.calls.clear()
    code = main(argv)
    out, err = capsys.readouterr()
    created = sorted(str(p.relative_to(world)) for p in _files(world) - before)
    for path in sorted(_files(world) - before, key=lambda p: -len(p.parts)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    # Timings differ from run to run; what was handed over and written does not.
    shown = re.sub(r"\d+\.\d+ s\b", "T s", out + err)
    return code, [spies.calls[:], shown, created], err


def _probes() -> list[tuple[str, Effect | Refused]]:
    def shown(p: Effect | Refused) -> str:
        words = getattr(p, "argv", None) or p.args
        return f"{'effect' if isinstance(p, Effect) else 'refused'} [{p.mode}] {' '.join(words)}"

    return [(f"{k[0]} {k[1]}: {shown(p)}", (k, p)) for k, probes in sorted(TABLE.items()) for p in probes]


@pytest.mark.parametrize("key, probe", [p for _, p in _probes()], ids=[i for i, _ in _probes()])
def test_option_takes_effect_or_is_refused(key, probe, world, capsys, monkeypatch):
    monkeypatch.chdir(world)
    monkeypatch.setenv("COLUMNS", "200")
    spies = Spies()
    install_spies(monkeypatch, spies)
    base = BASES[probe.mode]
    if isinstance(probe, Refused):
        code, _, err = run_probe(world, capsys, spies, base + list(probe.args))
        lines = [line for line in err.splitlines() if line.startswith("unweather: error:")]
        assert code == 1 and len(lines) == 1, f"{probe}: exit {code}, stderr:\n{err}"
        assert "Traceback" not in err
        assert (probe.names or key[1]) in lines[0], lines[0]
        assert not any(call[0] in ("run", "run_many", "run_on_ray", "Trainer") for call in spies.calls)
        return
    cache_key = (probe.mode, probe.extra)
    if cache_key not in _BASE_CAPTURES:
        _BASE_CAPTURES[cache_key] = run_probe(world, capsys, spies, base + list(probe.extra))
    base_code, base_capture, _ = _BASE_CAPTURES[cache_key]
    argv = list(probe.argv) if probe.argv is not None else base + list(probe.extra) + list(probe.args)
    code, capture, err = run_probe(world, capsys, spies, argv)
    assert code == base_code, f"{argv}: exit {code} (base {base_code}), stderr:\n{err}"
    assert "Traceback" not in err
    assert capture[0], f"{argv}: nothing reached the work; stderr:\n{err}"
    assert capture != base_capture, f"{argv}: {key[1]} changed nothing that reached the work"


def test_refusals_are_one_line_before_any_work(world, capsys, monkeypatch):
    monkeypatch.chdir(world)
    spies = Spies()
    install_spies(monkeypatch, spies)
    code, _, err = run_probe(world, capsys, spies, BASES["run single"] + ["--resume"])
    assert code == 1 and err.strip() == "unweather: error: --resume applies to runs on Ray: add --ray."
    assert spies.calls == []
