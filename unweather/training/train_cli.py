"""`unweather train teacher` and `unweather train student`: the two-stage training from the command line.

    unweather train teacher --weather rain --meta-dir DATA -o teacher_rain.safetensors --preset cpu
    unweather train student --teachers rain=T_rain.safetensors snow=T_snow.safetensors \\
        haze=T_haze.safetensors --meta-dir DATA -o student.safetensors --preset cpu

Every run keeps its resolved configuration, metrics and checkpoints in its run directory (`--run-dir`,
default `runs/<output name>`); `--resume` continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unweather.errors import UnweatherError
from unweather.fileio import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train teacher` and `train student`."""
    train = subparsers.add_parser(
        "train", help="train single-weather teachers and the unified two-stage student",
        description="Train a single-weather teacher, or the unified student from its teachers in two stages "
                    "(knowledge collation, then knowledge examination).")
    stages = train.add_subparsers(dest="train_command", metavar="STAGE")
    train.set_defaults(func=lambda args: train.print_help() or 2)

    teacher = stages.add_parser("teacher", help="train a teacher on one weather type's data set",
                                description="Train a teacher on one data set of a meta directory.")
    teacher.add_argument("--weather", required=True, metavar="NAME",
                         help="the data set to train on (NAME_meta_train.json in the meta directory)")
    _common(teacher, default_model="the preset's model.teacher_arch")
    teacher.add_argument("--epochs", type=float, help="length in epochs of the data set")
    teacher.add_argument("--steps", type=int, help="length in steps (wins over --epochs)")
    teacher.set_defaults(func=_teacher)

    student = stages.add_parser(
        "student", help="train the unified student from one teacher per weather type",
        description="Train the unified student: stage 1 (KC: T-pixel, PFE, PFV, SCR) then stage 2 "
                    "(KE: G-pixel, HCR), as in Chen et al., CVPR 2022.")
    student.add_argument("--teachers", nargs="+", default=[], metavar="[WEATHER=]FILE",
                         help="one teacher per data set, as WEATHER=FILE or FILE (paired by the weather its "
                              "metadata records); pairing is checked, never by file order")
    _common(student, default_model="the preset's model.arch")
    student.add_argument("--kc-epochs", type=float, help="stage 1 length in epochs")
    student.add_argument("--ke-epochs", type=float, help="stage 2 length in epochs")
    student.add_argument("--kc-steps", type=int, help="stage 1 length in steps (wins over --kc-epochs)")
    student.add_argument("--ke-steps", type=int, help="stage 2 length in steps (wins over --ke-epochs)")
    student.add_argument("--mcr", choices=("vgg19", "teacher", "none"),
                         help="contrastive feature space: ImageNet VGG19 (the paper), the frozen teachers' "
                              "encoder taps (no download), or none (the ablation)")
    student.add_argument("--scr-positive", choices=("teacher", "gt"),
                         help="SCR's positive: the teachers' outputs (the paper) or the ground truth (the release)")
    student.add_argument("--vgg19-weights", metavar="PATH",
                         help="torchvision's vgg19-dcbb9e9d.pth (or set UNWEATHER_VGG19_WEIGHTS)")
    student.add_argument("--direct", action="store_true",
                         help="the baseline: train the student directly on the mixed data with L1 for the "
                              "same number of steps, no teachers")
    student.add_argument("--init", metavar="FILE",
                         help="start the student from this network of the same architecture (e.g. to continue "
                              "a finished run with more KE steps: --kc-steps 0)")
    student.set_defaults(func=_student)


def _common(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument("--meta-dir", required=True, metavar="DIR",
                        help="data folder with train/ and valid/ meta JSON files")
    parser.add_argument("--model", metavar="NAME", help=f"network to train (default: {default_model})")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.safetensors", help="the trained network")
    parser.add_argument("--preset", default="cpu", choices=("tiny", "cpu", "paper"),
                        help="base configuration (default: cpu)")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file overriding the preset")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one configuration value, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--run-dir", metavar="DIR", help="checkpoints, logs, config (default: runs/<output name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda when available)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--crop", type=int, help="training crop side in pixels (multiple of 16)")
    parser.add_argument("--batch-per-weather", type=int, help="samples of each weather type per batch")
    parser.add_argument("--clean-per-batch", type=int, help="clean pairs (input = ground truth) per batch")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--val-every", type=int, metavar="STEPS", help="validate every this many steps")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: torch's choice); on a CPU shared with other "
                             "jobs, 1 is often faster than oversubscribing the cores")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace, teacher: bool):
    from unweather.training import config as config_mod

    cfg = config_mod.load(args.preset, args.config)
    if teacher:
        # The resolved config records what was trained in model.arch, whichever role.
        cfg.model.arch, cfg.model.options = cfg.model.teacher_arch, dict(cfg.model.teacher_options)
    if args.model is not None and args.model != cfg.model.arch:
        cfg.model.arch, cfg.model.options = args.model, {}
    # --set comes last, so `--set model.options=...` applies to the network trained.
    config_mod.apply_overrides(cfg, args.set)
    for flag, section, name in (("seed", None, "seed"), ("crop", "data", "crop"),
                                ("batch_per_weather", "data", "batch_per_weather"),
                                ("clean_per_batch", "data", "clean_per_batch"), ("lr", "optim", "lr"),
                                ("val_every", "schedule", "val_every_steps")):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(getattr(cfg, section) if section else cfg, name, value)
    if args.no_progress:
        cfg.log.progress = False
    cfg.data.meta_dir = str(args.meta_dir)
    return cfg


def _device(name: str, threads: int | None = None):
    import torch

    if threads:
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnweatherError(f"--device {name}: no CUDA device is available")
    return device


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    return Path("runs") / Path(args.output).name.removesuffix(".safetensors")


def _prepare_run_dir(run_dir: Path, cfg, resume: bool) -> None:
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


def _check_output(path: Path) -> None:
    if path.suffix != ".safetensors":
        raise UnweatherError(f"output {path} must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)


def _finish(result, trainer, stage, output: Path, run_dir: Path, cfg) -> None:
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


def _base_metadata(role: str, cfg, weathers: list[str], datasets: dict[str, Any]) -> dict[str, str]:
    from unweather import __version__

    return {"role": role, "weathers": json.dumps(weathers), "datasets": json.dumps(datasets),
            "meta_dir": str(cfg.data.meta_dir), "run_config": json.dumps(cfg.to_dict()),
            "trained_by": f"unweather {__version__} train {role}"}


def _dataset_record(meta_dir: str, names: list[str], pairs: dict[str, list]) -> dict[str, Any]:
    return {name: {"meta": f"{name}_meta_train.json", "pairs": len(pairs[name])} for name in names}


def _teacher(args: argparse.Namespace) -> int:
    import torch

    from unweather.models import build, save
    from unweather.training import config as config_mod
    from unweather.training import data
    from unweather.training.tasks import TeacherTask
    from unweather.training.trainer import Stage, Trainer

    cfg = _config(args, teacher=True)
    if args.steps is not None:
        cfg.schedule.teacher_steps = args.steps
    elif args.epochs is not None:
        cfg.schedule.teacher_steps, cfg.schedule.teacher_epochs = 0, args.epochs
    cfg.validate()
    output = Path(args.output)
    _check_output(output)
    device = _device(args.device, args.threads)
    torch.manual_seed(cfg.seed)

    train_sets = data.select(data.load_pairs(args.meta_dir, "train"), [args.weather], "train")
    valid_sets = _valid(args.meta_dir, [args.weather])
    # A teacher specialises: its whole batch is its own weather, with no clean pairs.
    batches = data.WeatherBatches(train_sets, cfg.data, cfg.seed, per_weather=cfg.data.teacher_batch, clean=0)
    steps = config_mod.steps_for(cfg.schedule.teacher_steps, cfg.schedule.teacher_epochs, batches.steps_per_epoch)
    if steps <= 0:
        raise UnweatherError("the teacher needs a length: --steps, --epochs or the preset's schedule")
    net = build(cfg.model.arch, **cfg.model.options)
    task = TeacherTask(net, cfg.loss)
    run_dir = _run_dir(args)
    _prepare_run_dir(run_dir, cfg, args.resume)
    valid = data.ValidSet.build(valid_sets, cfg.data, clean=False) if valid_sets else None
    metadata = _base_metadata("teacher", cfg, [args.weather],
                              _dataset_record(args.meta_dir, [args.weather], train_sets))
    stage = Stage("teacher", task, steps)
    trainer = Trainer(cfg, net, [stage], batches, valid, run_dir, save, metadata, device,
                      val_every=_every(cfg, batches), warmup=_warmup(cfg, batches))
    log.info("training %s teacher %s for %d steps (batch %d, crop %d) on %s; run directory %s",
             args.weather, cfg.model.arch, steps, batches.batch_size, cfg.data.crop, device, run_dir)
    result = trainer.fit(resume=args.resume)
    _finish(result, trainer, stage, output, run_dir, cfg)
    return 0


def _load_init(student: nn.Module, start: nn.Module, path: str, arch: str) -> None:
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


def _valid(meta_dir: str, names: list[str]) -> dict[str, list]:
    from unweather.training import data

    try:
        found = data.load_pairs(meta_dir, "valid")
    except UnweatherError as exc:
        log.warning("no validation data (%s): the output is the last state, not the best", exc)
        return {}
    return data.select(found, names, "valid")


def _every(cfg, batches) -> int:
    from unweather.training.config import steps_for

    return steps_for(cfg.schedule.val_every_steps, cfg.schedule.val_every_epochs, batches.steps_per_epoch)


def _warmup(cfg, batches) -> int:
    from unweather.training.config import steps_for

    return steps_for(cfg.schedule.warmup_steps, cfg.schedule.warmup_epochs, batches.steps_per_epoch)


def _student(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from unweather.models import build, load_checkpoint, read_metadata, save
    from unweather.training import config as config_mod
    from unweather.training import data
    from unweather.training.tasks import DirectTask, KCTask, KETask, StudentWithCKT
    from unweather.training.trainer import Stage, Trainer

    cfg = _config(args, teacher=False)
    for flag, name in (("kc_steps", "kc_steps"), ("ke_steps", "ke_steps")):
        if getattr(args, flag) is not None:
            setattr(cfg.schedule, name, getattr(args, flag))
    for flag, name in (("kc_epochs", "kc"), ("ke_epochs", "ke")):
        if getattr(args, flag) is not None and getattr(args, f"{name}_steps") is None:
            setattr(cfg.schedule, f"{name}_steps", 0)
            setattr(cfg.schedule, f"{name}_epochs", getattr(args, flag))
    if args.mcr:
        cfg.loss.mcr = args.mcr
    if args.scr_positive:
        cfg.loss.scr_positive = args.scr_positive
    if args.vgg19_weights:
        cfg.loss.vgg19_weights = args.vgg19_weights
    cfg.validate()
    output = Path(args.output)
    _check_output(output)
    device = _device(args.device, args.threads)
    torch.manual_seed(cfg.seed)

    all_train, clean_train = data.split_clean(data.load_pairs(args.meta_dir, "train"))
    if args.direct and not args.teachers:
        weathers = list(all_train)
        teacher_files: list[tuple[str, Path]] = []
    else:
        if not args.teachers:
            raise UnweatherError("train student needs --teachers (one per data set), or --direct for the baseline")
        metadata_of = {}
        for _, path in data.parse_teacher_specs(args.teachers):
            if not path.is_file():
                raise UnweatherError(f"teacher file {path} does not exist")
            metadata_of[path] = read_metadata(path)
        teacher_files = data.pair_teachers(args.teachers, list(all_train), metadata_of)
        weathers = [w for w, _ in teacher_files]
    train_sets = data.select(all_train, weathers, "train")
    valid_found = _valid(args.meta_dir, [*weathers])
    valid_sets, clean_valid = data.split_clean(valid_found) if valid_found else ({}, [])
    if not valid_found:
        try:
            _, clean_valid = data.split_clean(data.load_pairs(args.meta_dir, "valid"))
        except UnweatherError:
            clean_valid = []

    batches = data.WeatherBatches(train_sets, cfg.data, cfg.seed, clean_paths=clean_train or None)
    kc = config_mod.steps_for(cfg.schedule.kc_steps, cfg.schedule.kc_epochs, batches.steps_per_epoch)
    ke = config_mod.steps_for(cfg.schedule.ke_steps, cfg.schedule.ke_epochs, batches.steps_per_epoch)
    if kc + ke <= 0:
        raise UnweatherError("the student needs a length: --kc-steps/--ke-steps, --kc-epochs/--ke-epochs or the "
                             "preset's schedule")
    student = build(cfg.model.arch, **cfg.model.options)
    if args.init:
        start = load_checkpoint(args.init)
        if getattr(start, "arch", None) != cfg.model.arch:
            raise UnweatherError(f"--init {args.init} is a {getattr(start, 'arch', 'unknown network')}, not the "
                                 f"{cfg.model.arch} being trained")
        _load_init(student, start, args.init, cfg.model.arch)
    teachers = [(w, load_checkpoint(path)) for w, path in teacher_files]
    ckt = None
    if not args.direct and kc > 0:
        from unweather.models.ckt import CKT

        channels = {tuple(t.tap_channels) for _, t in teachers}
        if len(channels) != 1:
            raise UnweatherError(f"the teachers have different feature taps {sorted(channels)}: CKT needs "
                                 "teachers of one architecture")
        ckt = CKT(list(channels.pop()), list(student.tap_channels), len(teachers))
    body = StudentWithCKT(student, ckt)

    features = None
    if cfg.loss.mcr == "vgg19" and not args.direct:
        from unweather.training.vgg import load_vgg19

        features = load_vgg19(cfg.loss.vgg19_weights or None)

    if args.direct:
        stages = [Stage("direct", DirectTask(body, cfg.loss), kc + ke)]
        role_stages = "direct"
    else:
        stages = []
        if kc > 0:
            stages.append(Stage("kc", KCTask(body, teachers, cfg.loss, features), kc))
        if ke > 0:
            stages.append(Stage("ke", KETask(body, teachers, cfg.loss, features), ke))
        role_stages = "kc+ke"

    run_dir = _run_dir(args)
    _prepare_run_dir(run_dir, cfg, args.resume)
    valid = data.ValidSet.build(valid_sets, cfg.data, clean=True, clean_paths=clean_valid or None) \
        if valid_sets else None
    metadata = _base_metadata("student", cfg, weathers, _dataset_record(args.meta_dir, weathers, train_sets))
    metadata["training"] = role_stages
    metadata["teachers"] = json.dumps({w: str(p) for w, p in teacher_files})
    if args.init:
        metadata["init"] = str(args.init)
    ckt_path = run_dir / "ckt.safetensors"

    def stage_end(stage: Stage, step: int) -> None:
        if stage.name == "kc" and ckt is not None:
            tensors = {k: v.detach().contiguous().cpu() for k, v in ckt.state_dict().items()}
            with atomic_path(ckt_path) as tmp:
                save_file(tensors, str(tmp), metadata={"role": "ckt", "weathers": json.dumps(weathers),
                                                       "steps": str(step)})

    trainer = Trainer(cfg, body, stages, batches, valid, run_dir, save, metadata, device,
                      val_every=_every(cfg, batches), warmup=_warmup(cfg, batches), stage_end=stage_end)
    log.info("training %s student %s: %s on %s (batch %d = %d x %s + %d clean, crop %d, mcr %s); run directory %s",
             role_stages, cfg.model.arch, ", ".join(f"{s.name} {s.steps} steps" for s in stages), device,
             batches.batch_size, batches.per_weather, "/".join(weathers), batches.clean, cfg.data.crop,
             cfg.loss.mcr if not args.direct else "-", run_dir)
    result = trainer.fit(resume=args.resume)
    _finish(result, trainer, stages[-1], output, run_dir, cfg)
    if ckt is not None and ckt_path.is_file():
        ckt_out = output.with_name(output.name.removesuffix(".safetensors") + ".ckt.safetensors")
        with atomic_path(ckt_out) as tmp:
            shutil.copyfile(ckt_path, tmp)
        log.info("wrote %s (the CKT projectors)", ckt_out)
    return 0
