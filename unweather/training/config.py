"""Typed training configuration: presets, YAML files and command-line overrides, resolved once.

A run's configuration is built in three layers, each overriding the last: a preset (`tiny`, `cpu`,
`paper`), an optional YAML file with the same nesting as `TrainConfig`, and the command line (its own
flags plus `--set section.field=value`). The resolved configuration is saved beside every run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unweather.errors import UnweatherError

MCR_CHOICES = ("vgg19", "teacher", "none")
SCR_POSITIVE_CHOICES = ("teacher", "gt")
BALANCE_CHOICES = ("none", "input")


@dataclass
class DataConfig:
    """Where the pairs come from and how batches are cut from them."""

    meta_dir: str = ""
    crop: int = 96
    # A student's batch holds this many samples of each weather type.
    batch_per_weather: int = 4
    # A teacher's batch (all of its one weather).
    teacher_batch: int = 8
    # Clean pairs (ground truth -> ground truth) added to every batch, so the student learns to leave
    # clean frames untouched (without them a small student learns a global dehaze of everything).
    clean_per_batch: int = 2
    flip: bool = True
    # "memory" decodes every image once; "disk" reads per sample; "auto" picks memory below the limit.
    cache: str = "auto"
    cache_limit_mb: int = 4096
    # Threads that read images when they are not cached.
    workers: int = 4
    # Weather types whose inputs are rendered afresh from each sample's ground truth (random
    # parameters, `unweather.training.synth`) instead of read: with few photos, a network otherwise
    # learns each stored rendering (haze density, airlight) rather than reading them from the image.
    resynth: list[str] = field(default_factory=list)
    # Before rendering, recolour the ground truth (random channel order, exposure 0.5-1), and the clean
    # pairs alike: colours and brightness then say nothing about the weather, which must be read from
    # its own cues.
    resynth_recolour: bool = False
    # Renderer styles (`unweather.training.render`) that resynth draws from, intensities over the whole
    # range; empty: synth's renderer with its own ranges (the earlier runs' data).
    render_styles: list[str] = field(default_factory=list)
    # With render_styles: what a camera adds (low light, sensor noise, JPEG) on ground truth and input alike,
    # clean pairs included.
    camera: bool = False
    # With camera: the share of samples turned into night scenes lit by windows and lamps (clean and weather).
    night: float = 0.0
    # With camera: the share of samples given lit windows at the scene's own exposure (clean and weather).
    lights: float = 0.0
    # Validation: at most this many pairs per weather, centre-cropped to `val_crop` (0: whole images).
    val_max_pairs: int = 16
    val_crop: int = 256


@dataclass
class ModelConfig:
    """The network trained and its registry options; `train teacher` starts from the `teacher_` pair."""

    arch: str = "student_small"
    options: dict[str, Any] = field(default_factory=dict)
    teacher_arch: str = "student_base"
    teacher_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Adam with a linear warm-up then a cosine decay to `min_lr`."""

    lr: float = 5e-4
    # The release scales lr by batch / 16; applied when true, with the whole batch size.
    scale_lr_by_batch: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    min_lr: float = 1e-6
    grad_clip: float = 0.0
    # lr multipliers by layer name, e.g. {haze: 20}: a new layer added to a trained network learns
    # at its own pace (Adam moves each weight by about lr per step, whatever its gradient's scale).
    lr_scale: dict[str, float] = field(default_factory=dict)
    # Mixed precision on CUDA ("auto": bf16 where supported, else fp16 with a gradient scaler).
    amp: str = "auto"


@dataclass
class LossConfig:
    """Loss weights of both stages and the contrastive feature space."""

    pixel: float = 1.0
    pfe: float = 1.0
    pfv: float = 0.05
    scr: float = 0.1
    hcr: float = 0.2
    mcr: str = "teacher"
    # Compute SCR/HCR on one step in this many, with that many times the weight (1: every step).
    mcr_every: int = 1
    scr_positive: str = "teacher"
    # "input": each weather's pixel loss is divided by its batch's input error (haze's is ~10x rain's).
    pixel_balance: str = "none"
    vgg19_weights: str = ""


@dataclass
class ScheduleConfig:
    """Lengths in steps or epochs (steps win when both are set; 0 means unset)."""

    teacher_steps: int = 0
    teacher_epochs: float = 0.0
    kc_steps: int = 0
    kc_epochs: float = 0.0
    ke_steps: int = 0
    ke_epochs: float = 0.0
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    val_every_steps: int = 0
    val_every_epochs: float = 0.0


@dataclass
class LogConfig:
    """What the loop reports and keeps."""

    log_every: int = 25
    keep_best: int = 3
    # Write the resume point at least this often, so a killed run (SIGKILL, power loss) loses little.
    checkpoint_minutes: float = 5.0
    progress: bool = True
    # "best": the output file holds the checkpoint with the best validation PSNR; "last": the final one.
    output: str = "best"
    # Validation score: every dB of clean-frame PSNR below this floor is taken off (0: clean not counted).
    clean_floor: float = 0.0


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    preset: str = "cpu"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain JSON-serialisable data."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def validate(self) -> None:
        """Raise `UnweatherError` for values that cannot train."""
        if self.loss.mcr not in MCR_CHOICES:
            raise UnweatherError(f"loss.mcr must be one of {', '.join(MCR_CHOICES)}, not {self.loss.mcr!r}")
        if self.loss.scr_positive not in SCR_POSITIVE_CHOICES:
            raise UnweatherError(f"loss.scr_positive must be one of {', '.join(SCR_POSITIVE_CHOICES)}, "
                                 f"not {self.loss.scr_positive!r}")
        if self.loss.pixel_balance not in BALANCE_CHOICES:
            raise UnweatherError(f"loss.pixel_balance must be one of {', '.join(BALANCE_CHOICES)}, "
                                 f"not {self.loss.pixel_balance!r}")
        if self.data.cache not in ("auto", "memory", "disk"):
            raise UnweatherError(f"data.cache must be auto, memory or disk, not {self.data.cache!r}")
        if self.log.output not in ("best", "last"):
            raise UnweatherError(f"log.output must be best or last, not {self.log.output!r}")
        if self.data.crop < 16 or self.data.crop % 16:
            raise UnweatherError(f"data.crop must be a positive multiple of 16, not {self.data.crop}")
        if self.data.batch_per_weather < 1:
            raise UnweatherError("data.batch_per_weather must be at least 1")
        if self.optim.lr <= 0:
            raise UnweatherError("optim.lr must be positive")
        from unweather.training.render import HELD_OUT_STYLE, STYLES

        unknown = [s for s in self.data.render_styles if s not in STYLES]
        if unknown:
            raise UnweatherError(f"data.render_styles: unknown style {unknown[0]!r}; choose from {', '.join(STYLES)}")
        if HELD_OUT_STYLE in self.data.render_styles:
            raise UnweatherError(f"data.render_styles: {HELD_OUT_STYLE!r} is kept for evaluation only")


def _tiny() -> TrainConfig:
    cfg = TrainConfig(preset="tiny")
    cfg.model = ModelConfig(arch="student_small", teacher_arch="student_small")
    cfg.data = DataConfig(crop=32, batch_per_weather=2, teacher_batch=2, clean_per_batch=1, cache="memory",
                          val_max_pairs=2, val_crop=32, workers=0)
    cfg.optim = OptimConfig(lr=1e-3)
    cfg.schedule = ScheduleConfig(teacher_steps=4, kc_steps=3, ke_steps=3, warmup_steps=1, val_every_steps=3)
    cfg.log = LogConfig(log_every=2, keep_best=2, progress=False)
    return cfg


def _cpu() -> TrainConfig:
    # Sized for two CPU cores (run with --threads 1 when other jobs share them). Measured at 96 px with
    # 1 thread on a lightly loaded machine: a student_base teacher ~3 steps/s (3000 steps ~17 min);
    # student_small from student_base teachers ~1.4 (KC) and ~1.9 (KE) steps/s with the contrastive term
    # every 4th step (1500 + 1500 steps ~35 min). A busy machine is several times slower.
    cfg = TrainConfig(preset="cpu")
    cfg.data = DataConfig(crop=96, batch_per_weather=4, teacher_batch=8, clean_per_batch=2, val_max_pairs=24,
                          val_crop=192)
    cfg.optim = OptimConfig(lr=5e-4, min_lr=1e-5)
    cfg.loss = LossConfig(mcr="teacher", mcr_every=4, pixel_balance="input")
    cfg.schedule = ScheduleConfig(teacher_steps=3000, kc_steps=1500, ke_steps=1500, warmup_steps=100,
                                  val_every_steps=250)
    cfg.log = LogConfig(log_every=25, keep_best=3)
    return cfg


def _paper() -> TrainConfig:
    # The release's values: MSBDN, Adam, 2e-4 * batch / 16 with batch 32, 3 warm-up epochs then cosine
    # to 1e-6, 224 crops with flips, 250 epochs split 125 / 125, validation every 2 epochs, top 3 kept.
    cfg = TrainConfig(preset="paper")
    cfg.data = DataConfig(crop=224, batch_per_weather=11, teacher_batch=32, clean_per_batch=0, val_max_pairs=0,
                          val_crop=0)
    cfg.model = ModelConfig(arch="msbdn", teacher_arch="msbdn")
    cfg.optim = OptimConfig(lr=2e-4, scale_lr_by_batch=True, min_lr=1e-6)
    cfg.loss = LossConfig(mcr="vgg19", scr_positive="teacher", pixel_balance="none")
    cfg.schedule = ScheduleConfig(teacher_epochs=250, kc_epochs=125, ke_epochs=125, warmup_epochs=3,
                                  val_every_epochs=2)
    cfg.log = LogConfig(log_every=50, keep_best=3)
    return cfg


PRESETS = {"tiny": _tiny, "cpu": _cpu, "paper": _paper}


def preset(name: str) -> TrainConfig:
    """Return a fresh copy of the preset `name`."""
    if name not in PRESETS:
        raise UnweatherError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def _set_field(obj: Any, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            raise UnweatherError(f"{source}: unknown configuration section {dotted!r}")
        obj = getattr(obj, part)
    name = parts[-1]
    fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    if name not in fields:
        raise UnweatherError(f"{source}: unknown configuration field {dotted!r}")
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise UnweatherError(f"{source}: {dotted!r} is a section and needs a mapping")
        for key, sub in value.items():
            _set_field(current, str(key), sub, source)
        return
    setattr(obj, name, _coerce(current, value, dotted, source))


def _coerce(current: Any, value: Any, dotted: str, source: str) -> Any:
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(current, int):
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError(value)
            return int(as_float)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            return tuple(type(c)(v) for c, v in zip(current, value, strict=True))
        if isinstance(current, dict):
            if not isinstance(value, dict):
                raise TypeError(value)
            return dict(value)
        if isinstance(current, list):
            # A single name may stand for a one-element list (`data.resynth=haze`).
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        return str(value)
    except (TypeError, ValueError) as exc:
        raise UnweatherError(f"{source}: {dotted}={value!r} is not a valid {type(current).__name__}") from exc


def apply_mapping(cfg: TrainConfig, mapping: dict[str, Any], source: str = "config") -> TrainConfig:
    """Override `cfg` in place with a nested mapping such as a YAML file's content; return it."""
    if not isinstance(mapping, dict):
        raise UnweatherError(f"{source}: the configuration must be a mapping of sections")
    for key, value in mapping.items():
        if key == "preset":
            continue
        _set_field(cfg, str(key), value, source)
    return cfg


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `section.field=value` strings (values parsed as YAML scalars); return `cfg`."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise UnweatherError(f"--set {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        _set_field(cfg, key.strip(), yaml.safe_load(raw), f"--set {item}")
    return cfg


def load(preset_name: str = "cpu", config_file: str | Path | None = None,
         overrides: list[str] | None = None) -> TrainConfig:
    """Resolve a configuration: the preset, then the YAML file (which may name its preset), then overrides."""
    mapping: dict[str, Any] = {}
    if config_file:
        import yaml

        path = Path(config_file)
        if not path.is_file():
            raise UnweatherError(f"configuration file {path} does not exist")
        try:
            mapping = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UnweatherError(f"configuration file {path} is not valid YAML: {exc}") from exc
        if not isinstance(mapping, dict):
            raise UnweatherError(f"configuration file {path} must hold a mapping of sections")
    cfg = preset(str(mapping.get("preset", preset_name)) if config_file and "preset" in mapping
                 else preset_name)
    apply_mapping(cfg, mapping, str(config_file))
    apply_overrides(cfg, overrides or [])
    return cfg


def from_dict(mapping: dict[str, Any]) -> TrainConfig:
    """Rebuild a configuration saved by `TrainConfig.to_dict`."""
    cfg = preset(str(mapping.get("preset", "cpu")))
    cfg = copy.deepcopy(cfg)
    apply_mapping(cfg, mapping, "saved configuration")
    cfg.preset = str(mapping.get("preset", cfg.preset))
    return cfg


def save(cfg: TrainConfig, run_dir: Path) -> None:
    """Write the resolved configuration as config.yaml and config.json in `run_dir`."""
    import yaml

    from unweather.fileio import write_text_atomic

    data = cfg.to_dict()
    write_text_atomic(run_dir / "config.json", json.dumps(data, indent=2) + "\n")
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))


def teacher_config(cfg: TrainConfig) -> TrainConfig:
    """Return a copy of `cfg` whose `model.arch` and `model.options` are its teacher pair.

    A resolved configuration records what was trained in `model.arch`, whichever role.
    """
    out = copy.deepcopy(cfg)
    out.model.arch, out.model.options = out.model.teacher_arch, dict(out.model.teacher_options)
    return out


def steps_for(steps: int, epochs: float, steps_per_epoch: int) -> int:
    """Return a length in steps: `steps` when set, else `epochs` converted (at least 1 when set)."""
    if steps > 0:
        return int(steps)
    if epochs > 0:
        return max(1, math.ceil(epochs * steps_per_epoch))
    return 0
