"""`unweather train teacher|student|video`: the two-stage training, and the video student, from the command line.

    unweather train teacher --weather rain --meta-dir DATA -o teacher_rain.safetensors --preset cpu
    unweather train student --teachers rain=T_rain.safetensors snow=T_snow.safetensors \\
        haze=T_haze.safetensors --meta-dir DATA -o student.safetensors --preset cpu

Every run keeps its resolved configuration, metrics and checkpoints in its run directory (`--run-dir`,
default `runs/<output name>`); `--resume` continues from its last checkpoint. The handlers only turn the
options into a `TrainConfig`; the training itself is `unweather.training.api`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unweather.training.config import TrainConfig


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
    teacher.add_argument("--init", metavar="FILE",
                         help="start from this network of the same architecture (e.g. the all-weather `quality` "
                              "student, which the teacher then specialises on its weather)")
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

    video = stages.add_parser(
        "video", help="train the video student's temporal fusion on synthetic clips over a frame student",
        description="Train the video student: the frame student (the first stage, from the teachers) frozen, "
                    "its temporal fusion learnt on clips cut from photos with a moving camera and weather "
                    "drawn afresh every frame.")
    video.add_argument("--images", nargs="+", required=True, metavar="DIR", help="folders of training photos")
    video.add_argument("--init", required=True, metavar="FILE",
                       help="the frame student's weights (or a video student to continue from)")
    video.add_argument("--frame", metavar="FILE",
                       help="with a video student as --init: put this frame network in it and refit the fusion")
    video.add_argument("-o", "--output", required=True, metavar="OUT.safetensors", help="the trained network")
    video.add_argument("--model", default="video_small", metavar="NAME",
                       help="video architecture (default: %(default)s)")
    video.add_argument("--val-images", metavar="DIR", help="held-out photos for validation clips")
    video.add_argument("--run-dir", metavar="DIR", help="state, logs, best checkpoint (default: runs/<output name>)")
    video.add_argument("--resume", action="store_true", help="continue from the run directory's saved state")
    video.add_argument("--steps", type=int, default=2000, help="optimiser steps (default: %(default)s)")
    video.add_argument("--batch", type=int, default=4, help="clips per step (default: %(default)s)")
    video.add_argument("--frames", type=int, default=8, help="frames per clip (default: %(default)s)")
    video.add_argument("--crop", type=int, default=128,
                       help="clip side in pixels, a multiple of 16 (default: %(default)s)")
    video.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    video.add_argument("--clean-share", type=float, default=0.2, metavar="P",
                       help="share of clips without weather (default: %(default)s)")
    video.add_argument("--consistency", type=float, default=0.5, metavar="W",
                       help="weight of the temporal consistency term (default: %(default)s)")
    video.add_argument("--val-every", type=int, default=250, metavar="STEPS", help="default: %(default)s")
    video.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    video.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default: %(default)s)")
    video.set_defaults(func=_video)


def _video(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unweather.training.video import VideoTrainConfig, train_video

    run_dir = args.run_dir or str(Path("runs") / Path(args.output).stem)
    cfg = VideoTrainConfig(images=list(args.images), init=args.init, run_dir=run_dir, out=args.output,
                           arch=args.model, steps=args.steps, batch=args.batch, frames=args.frames, crop=args.crop,
                           lr=args.lr, clean_share=args.clean_share, consistency=args.consistency,
                           val_images=args.val_images, val_every=args.val_every, seed=args.seed,
                           threads=args.threads, frame=args.frame)
    path = train_video(cfg, resume=args.resume)
    print(f"wrote {path}")
    return 0


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


def _config(args: argparse.Namespace, teacher: bool) -> TrainConfig:
    from unweather.training import config as config_mod

    cfg = config_mod.load(args.preset, args.config)
    if teacher:
        cfg = config_mod.teacher_config(cfg)
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


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _teacher(args: argparse.Namespace) -> int:
    from unweather.training.api import train_teacher

    cfg = _config(args, teacher=True)
    if args.steps is not None:
        cfg.schedule.teacher_steps = args.steps
    elif args.epochs is not None:
        cfg.schedule.teacher_steps, cfg.schedule.teacher_epochs = 0, args.epochs
    _threads(args.threads)
    train_teacher(cfg, args.weather, args.output, run_dir=args.run_dir or None, resume=args.resume,
                  device=args.device, init=args.init)
    return 0


def _student(args: argparse.Namespace) -> int:
    from unweather.training.api import train_student

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
    _threads(args.threads)
    train_student(cfg, args.output, teachers=args.teachers, direct=args.direct, init=args.init or None,
                  run_dir=args.run_dir or None, resume=args.resume, device=args.device)
    return 0
