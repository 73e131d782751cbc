"""Training as a Python API: a single-weather teacher, the two-stage student, or the direct baseline.

    from unweather.training import api, config

    cfg = config.teacher_config(config.load("tiny"))
    cfg.data.meta_dir = "data/synth"
    rain = api.train_teacher(cfg, "rain", "teacher_rain.safetensors")
    cfg = config.load("tiny")
    cfg.data.meta_dir = "data/synth"
    student = api.train_student(cfg, "student.safetensors", teachers={"rain": rain, ...})

Each call trains `cfg.model.arch` from the resolved configuration it is given and keeps that
configuration, its metrics and its checkpoints in the run directory (default `runs/<output name>`);
`resume=True` continues from the run directory's last checkpoint. `unweather train` parses its options
into a `TrainConfig` and calls these functions.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unweather.errors import UnweatherError
from unweather.fileio import atomic_path, write_text_atomic
from unweather.training.config import TrainConfig, steps_for

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unweather.training.data import Pair, WeatherBatches
    from unweather.training.trainer import FitResult, Stage, Trainer

log = logging.getLogger(__name__)

Teachers = Mapping[str, str | Path] | Sequence[str | Path]


def train_teacher(cfg: TrainConfig, weather: str, output: str | Path, *, run_dir: str | Path | None = None,
                  resume: bool = False, device: str = "auto", init: str | Path | None = None) -> Path:
    """Train a teacher (`cfg.model.arch`) on one data set of `cfg.data.meta_dir`.

    Args:
        cfg: the resolved configuration; `config.teacher_config` gives a preset's teacher network.
        weather: the data set (`WEATHER_meta_train.json` in the meta directory's train/).
        output: the network to write, a `.safetensors` file.
        run_dir: checkpoints, logs and the resolved configuration (default `runs/<output name>`).
        resume: continue from the run directory's last checkpoint.
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`...
        init: start from this network of the same architecture (e.g. a trained all-weather student
            that the teacher then specialises); layers an option adds start neutral.

    Returns:
        The path of the written network.

    Raises:
        UnweatherError: a configuration, data or run directory that cannot train.
        KeyboardInterrupt: the run was interrupted (SIGINT) after saving a checkpoint.
    """

    from unweather.models import build, save
    from unweather.training import data
    from unweather.training.tasks import TeacherTask
    from unweather.training.trainer import Stage, Trainer

    output, torch_device = _start(cfg, output, device)

    meta_dir = cfg.data.meta_dir
    train_sets = data.select(data.load_pairs(meta_dir, "train"), [weather], "train")
    valid_sets = _valid(meta_dir, [weather])
    # A teacher specialises: its whole batch is its own weather, with no clean pairs.
    batches = data.WeatherBatches(train_sets, cfg.data, cfg.seed, per_weather=cfg.data.teacher_batch, clean=0)
    steps = steps_for(cfg.schedule.teacher_steps, cfg.schedule.teacher_epochs, batches.steps_per_epoch)
    if steps <= 0:
        raise UnweatherError("the teacher needs a length: --steps, --epochs or the preset's schedule")
    net = build(cfg.model.arch, **cfg.model.options)
    if init is not None:
        _init_from(net, init, cfg.model.arch)
    task = TeacherTask(net, cfg.loss)
    run = default_run_dir(output) if run_dir is None else Path(run_dir)
    _prepare_run_dir(run, cfg, resume)
    valid = data.ValidSet.build(valid_sets, cfg.data, clean=False) if valid_sets else None
    metadata = _base_metadata("teacher", cfg, [weather], _dataset_record([weather], train_sets))
    if init is not None:
        metadata["init"] = str(init)
    stage = Stage("teacher", task, steps)
    trainer = Trainer(cfg, net, [stage], batches, valid, run, save, metadata, torch_device,
                      val_every=_every(cfg, batches), warmup=_warmup(cfg, batches))
    log.info("training %s teacher %s for %d steps (batch %d, crop %d) on %s; run directory %s",
             weather, cfg.model.arch, steps, batches.batch_size, cfg.data.crop, torch_device, run)
    result = trainer.fit(resume=resume)
    _finish(result, trainer, stage, output, run, cfg)
    return output


def train_student(cfg: TrainConfig, output: str | Path, *, teachers: Teachers = (), direct: bool = False,
                  init: str | Path | None = None, run_dir: str | Path | None = None, resume: bool = False,
                  device: str = "auto") -> Path:
    """Train the unified student (`cfg.model.arch`) on every data set of `cfg.data.meta_dir`.

    With teachers, stage 1 (knowledge collation: T-pixel, PFE, PFV, SCR, with CKT projectors) runs for
    `cfg.schedule.kc_*`, then stage 2 (knowledge examination: G-pixel, HCR) for `cfg.schedule.ke_*`. With
    `direct`, the baseline: L1 on the mixed data for the same number of steps, no teachers needed.

    Args:
        cfg: the resolved configuration.
        output: the network to write, a `.safetensors` file; the CKT projectors, when trained, go beside it
            as `<output name>.ckt.safetensors`.
        teachers: one teacher per data set, as {weather: file}, or files (or `WEATHER=FILE` strings)
            paired by the weather each one's metadata records; pairing is checked, never by order.
        direct: train the baseline without teachers (teachers, when given, only choose the data sets).
        init: start from this network of the same architecture; layers an option adds start neutral.
        run_dir: checkpoints, logs and the resolved configuration (default `runs/<output name>`).
        resume: continue from the run directory's last checkpoint.
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`...

    Returns:
        The path of the written network.

    Raises:
        UnweatherError: a configuration, data, teacher or run directory that cannot train.
        KeyboardInterrupt: the run was interrupted (SIGINT) after saving a checkpoint.
    """
    from safetensors.torch import save_file

    from unweather.models import build, load_checkpoint, read_metadata, save
    from unweather.training import data
    from unweather.training.tasks import DirectTask, KCTask, KETask, StudentWithCKT
    from unweather.training.trainer import Stage, Trainer

    output, torch_device = _start(cfg, output, device)

    meta_dir = cfg.data.meta_dir
    specs = teacher_specs(teachers)
    all_train, clean_train = data.split_clean(data.load_pairs(meta_dir, "train"))
    if direct and not specs:
        weathers = list(all_train)
        teacher_files: list[tuple[str, Path]] = []
    else:
        if not specs:
            raise UnweatherError("train student needs --teachers (one per data set), or --direct for the baseline")
        metadata_of = {}
        for _, path in data.parse_teacher_specs(specs):
            if not path.is_file():
                raise UnweatherError(f"teacher file {path} does not exist")
            metadata_of[path] = read_metadata(path)
        teacher_files = data.pair_teachers(specs, list(all_train), metadata_of)
        weathers = [w for w, _ in teacher_files]
    train_sets = data.select(all_train, weathers, "train")
    valid_found = _valid(meta_dir, [*weathers])
    valid_sets, clean_valid = data.split_clean(valid_found) if valid_found else ({}, [])
    if not valid_found:
        try:
            _, clean_valid = data.split_clean(data.load_pairs(meta_dir, "valid"))
        except UnweatherError:
            clean_valid = []

    batches = data.WeatherBatches(train_sets, cfg.data, cfg.seed, clean_paths=clean_train or None)
    kc = steps_for(cfg.schedule.kc_steps, cfg.schedule.kc_epochs, batches.steps_per_epoch)
    ke = steps_for(cfg.schedule.ke_steps, cfg.schedule.ke_epochs, batches.steps_per_epoch)
    if kc + ke <= 0:
        raise UnweatherError("the student needs a length: --kc-steps/--ke-steps, --kc-epochs/--ke-epochs or the "
                             "preset's schedule")
    student = build(cfg.model.arch, **cfg.model.options)
    if init is not None:
        _init_from(student, init, cfg.model.arch)
    teacher_nets = [(w, load_checkpoint(path)) for w, path in teacher_files]
    ckt = None
    if not direct and kc > 0:
        from unweather.models.ckt import CKT

        channels = {tuple(t.tap_channels) for _, t in teacher_nets}
        if len(channels) != 1:
            raise UnweatherError(f"the teachers have different feature taps {sorted(channels)}: CKT needs "
                                 "teachers of one architecture")
        ckt = CKT(list(channels.pop()), list(student.tap_channels), len(teacher_nets))
    body = StudentWithCKT(student, ckt)

    features = None
    if cfg.loss.mcr == "vgg19" and not direct:
        from unweather.training.vgg import load_vgg19

        features = load_vgg19(cfg.loss.vgg19_weights or None)

    if direct:
        stages = [Stage("direct", DirectTask(body, cfg.loss), kc + ke)]
        role_stages = "direct"
    else:
        stages = []
        if kc > 0:
            stages.append(Stage("kc", KCTask(body, teacher_nets, cfg.loss, features), kc))
        if ke > 0:
            stages.append(Stage("ke", KETask(body, teacher_nets, cfg.loss, features), ke))
        role_stages = "kc+ke"

    run = default_run_dir(output) if run_dir is None else Path(run_dir)
    _prepare_run_dir(run, cfg, resume)
    valid = data.ValidSet.build(valid_sets, cfg.data, clean=True, clean_paths=clean_valid or None) \
        if valid_sets else None
    metadata = _base_metadata("student", cfg, weathers, _dataset_record(weathers, train_sets))
    metadata["training"] = role_stages
    metadata["teachers"] = json.dumps({w: str(p) for w, p in teacher_files})
    if init is not None:
        metadata["init"] = str(init)
    ckt_path = run / "ckt.safetensors"

    def stage_end(stage: Stage, step: int) -> None:
        if stage.name == "kc" and ckt is not None:
            tensors = {k: v.detach().contiguous().cpu() for k, v in ckt.state_dict().items()}
            with atomic_path(ckt_path) as tmp:
                save_file(tensors, str(tmp), metadata={"role": "ckt", "weathers": json.dumps(weathers),
                                                       "steps": str(step)})

    trainer = Trainer(cfg, body, stages, batches, valid, run, save, metadata, torch_device,
                      val_every=_every(cfg, batches), warmup=_warmup(cfg, batches), stage_end=stage_end)
    log.info("training %s student %s: %s on %s (batch %d = %d x %s + %d clean, crop %d, mcr %s); run directory %s",
             role_stages, cfg.model.arch, ", ".join(f"{s.name} {s.steps} steps" for s in stages), torch_device,
             batches.batch_size, batches.per_weather, "/".join(weathers), batches.clean, cfg.data.crop,
             cfg.loss.mcr if not direct else "-", run)
    result = trainer.fit(resume=resume)
    _finish(result, trainer, stages[-1], output, run, cfg)
    if ckt is not None and ckt_path.is_file():
        ckt_out = ckt_output(output)
        with atomic_path(ckt_out) as tmp:
            shutil.copyfile(ckt_path, tmp)
        log.info("wrote %s (the CKT projectors)", ckt_out)
    return output


def default_run_dir(output: str | Path) -> Path:
    """The run directory of a run writing `output` when none is given: `runs/<output name>`."""
    return Path("runs") / Path(output).name.removesuffix(".safetensors")


def ckt_output(output: str | Path) -> Path:
    """Where a student's CKT projectors are written beside its network."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".safetensors") + ".ckt.safetensors")


def teacher_specs(teachers: Teachers) -> list[str]:
    """Teachers as `WEATHER=FILE` or bare `FILE` strings, the form `data.pair_teachers` checks."""
    if isinstance(teachers, Mapping):
        return [f"{weather}={path}" for weather, path in teachers.items()]
    if isinstance(teachers, (str, Path)):
        raise UnweatherError("teachers must be a mapping {weather: file} or a list of files, not one file")
    return [str(t) for t in teachers]


def _start(cfg: TrainConfig, output: str | Path, device: str) -> tuple[Path, torch.device]:
    """What every run does first: check the configuration and the output, pick the device, seed torch."""
    import torch

    cfg.validate()
    output = _check_output(output)
    torch_device = _device(device)
    torch.manual_seed(cfg.seed)
    return output, torch_device


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnweatherError(f"--device {name}: no CUDA device is available")
    return device


def _prepare_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool) -> None:
    from unweather.training import config as config_mod

    saved = run_dir / "config.json"
    if saved.is_file() and (run_dir / "last.json").is_file() and not resume:
        raise UnweatherError(f"run directory {run_dir} already holds a run; pass --resume to continue it or "
                             "choose another --run-dir")
    if resume and saved.is_file():
        before = json.loads(saved.read_text())
        now = cfg.to_dict()
        changed = sorted(f"{s}.{k}" for s in now if isinstance(now[s], dict)
                         for k in now[s] if before.get(s, {}).get(k) != now[s][k])
        if changed:
            log.warning("resuming with changed settings: %s", ", ".join(changed))
    config_mod.save(cfg, run_dir)


def _check_output(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UnweatherError(f"output {path} must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _finish(result: FitResult, trainer: Trainer, stage: Stage, output: Path, run_dir: Path,
            cfg: TrainConfig) -> None:
    """Write the output network: the best checkpoint by validation PSNR, or the last state."""
    from unweather.models import save

    if result.interrupted:
        raise KeyboardInterrupt
    if cfg.log.output == "best" and result.best_path is not None and result.best_path.is_file():
        with atomic_path(output) as tmp:
            shutil.copyfile(result.best_path, tmp)
        chosen = result.best[0]
        log.info("wrote %s (step %d, validation PSNR %.2f dB)", output, chosen["step"], chosen["psnr"])
    else:
        save(stage.task.net, output, trainer.export_metadata(stage, result.last_val))
        log.info("wrote %s (step %d)", output, result.step)
    summary = {"output": str(output), "step": result.step, "best": result.best, "last_val": result.last_val}
    write_text_atomic(run_dir / "result.json", json.dumps(summary, indent=2) + "\n")


def _base_metadata(role: str, cfg: TrainConfig, weathers: list[str], datasets: dict[str, Any]) -> dict[str, str]:
    from unweather import __version__

    return {"role": role, "weathers": json.dumps(weathers), "datasets": json.dumps(datasets),
            "meta_dir": str(cfg.data.meta_dir), "run_config": json.dumps(cfg.to_dict()),
            "trained_by": f"unweather {__version__} train {role}"}


def _dataset_record(names: list[str], pairs: dict[str, list[Pair]]) -> dict[str, Any]:
    return {name: {"meta": f"{name}_meta_train.json", "pairs": len(pairs[name])} for name in names}


def _init_from(net: nn.Module, init: str | Path, arch: str) -> None:
    """Load `init`'s weights into `net`, which must be of the same architecture (`arch`)."""
    from unweather.models import load_checkpoint

    start = load_checkpoint(init)
    if getattr(start, "arch", None) != arch:
        raise UnweatherError(f"--init {init} is a {getattr(start, 'arch', 'unknown network')}, not the "
                             f"{arch} being trained")
    _load_init(net, start, init, arch)


def _load_init(student: nn.Module, start: nn.Module, path: str | Path, arch: str) -> None:
    """Load `start`'s weights into `student`; layers an option adds (they start neutral) may be missing."""
    try:
        state = start.state_dict()
        if hasattr(student, "adapt_state_dict"):
            state = student.adapt_state_dict(state)
        missing, unexpected = student.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UnweatherError(f"--init {path} does not fit {arch} with these options: "
                             f"{str(exc).splitlines()[0]}") from None
    optional = tuple(getattr(student, "optional_prefixes", ()))
    wrong = list(unexpected) + [k for k in missing if not k.startswith(optional)]
    if wrong:
        raise UnweatherError(f"--init {path} does not fit {arch} with these options: "
                             f"{len(wrong)} weights differ, e.g. {wrong[0]}")
    if missing:
        added = sorted({k.split(".")[0] for k in missing})
        log.info("--init %s: new layers start neutral: %s", path, ", ".join(added))


def _valid(meta_dir: str, names: list[str]) -> dict[str, list[Pair]]:
    from unweather.training import data

    try:
        found = data.load_pairs(meta_dir, "valid")
    except UnweatherError as exc:
        log.warning("no validation data (%s): the output is the last state, not the best", exc)
        return {}
    return data.select(found, names, "valid")


def _every(cfg: TrainConfig, batches: WeatherBatches) -> int:
    return steps_for(cfg.schedule.val_every_steps, cfg.schedule.val_every_epochs, batches.steps_per_epoch)


def _warmup(cfg: TrainConfig, batches: WeatherBatches) -> int:
    return steps_for(cfg.schedule.warmup_steps, cfg.schedule.warmup_epochs, batches.steps_per_epoch)
