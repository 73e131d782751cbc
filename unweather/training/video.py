"""The video student's clips and training: weather that changes every frame over a moving camera.

Clips are cut from photos with a camera path (`still`, `pan`, `zoom` towards a point like a dashcam
driving forward, `shake`), and every frame gets its own rain or snow (haze stays with the scene), in
the training renderer styles; a share of the clips is clean. The frame student is the first stage
(distilled from the teachers); here it is frozen and the temporal fusion learns from the ground truth
over short clips, with the state aligned between frames exactly as the stream aligns it
(`unweather.motion`), and a temporal consistency term: the output must change from frame to frame as
the clean clip does, no more.

Runs are resumable: `last_state.pt` in the run directory holds the fusion, the optimiser, the step and
the random state; the best checkpoint by validation score is kept beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from unweather import motion
from unweather.errors import UnweatherError
from unweather.media import IMAGE_SUFFIXES, read_rgb
from unweather.models import build, load_checkpoint, save
from unweather.models.padding import pad_to_multiple
from unweather.models.video import VideoStudent
from unweather.training import render
from unweather.training.metrics import psnr

MOTIONS = ("still", "pan", "zoom", "shake")
# Training also draws clips that cut to another photo halfway (the history must not leak across).
TRAIN_MOTIONS = (*MOTIONS, "cut")
WEATHERS = ("rain", "snow", "haze")


@dataclass(frozen=True)
class ClipSpec:
    """What one synthetic clip shows.

    Attributes:
        motion: the camera path, one of `MOTIONS`.
        weather: "rain", "snow", "haze" or None (clean).
        style: the renderer style (`unweather.training.render.STYLES`).
        intensity: "light", "medium", "heavy" or None (drawn over the whole range).
        speed: pixels per frame of a pan, or the relative zoom per frame.
    """

    motion: str = "still"
    weather: str | None = "rain"
    style: str = "particles"
    intensity: str | None = None
    speed: float = 0.0


def camera_path(spec: ClipSpec, frames: int, size: tuple[int, int], source: tuple[int, int],
                rng: np.random.Generator) -> list[np.ndarray]:
    """One 2x3 matrix per frame mapping output pixels (x, y) to source pixels, inside the source.

    Args:
        spec: the clip (its motion and speed).
        frames: the clip's length.
        size: the output (height, width).
        source: the source image's (height, width); it must be at least `size`.
        rng: the random generator (start point, direction).
    """
    h, w = size
    sh, sw = source
    if sh < h or sw < w:
        raise UnweatherError(f"a {sw}x{sh} source cannot hold {w}x{h} frames")
    mats = []
    if spec.motion == "pan":
        angle = rng.uniform(0, 2 * math.pi)
        vx, vy = spec.speed * math.cos(angle), spec.speed * math.sin(angle)
        # Slow the pan down where the source is too small to hold it.
        room_x = max(0.0, (sw - w - 1) / max(frames - 1, 1))
        room_y = max(0.0, (sh - h - 1) / max(frames - 1, 1))
        vx = math.copysign(min(abs(vx), room_x), vx)
        vy = math.copysign(min(abs(vy), room_y), vy)
        x0 = rng.uniform(0, sw - w - abs(vx) * (frames - 1)) + (abs(vx) * (frames - 1) if vx < 0 else 0)
        y0 = rng.uniform(0, sh - h - abs(vy) * (frames - 1)) + (abs(vy) * (frames - 1) if vy < 0 else 0)
        for t in range(frames):
            mats.append(np.float64([[1, 0, x0 + vx * t], [0, 1, y0 + vy * t]]))
    elif spec.motion == "zoom":
        cx = rng.uniform(w / 2, sw - w / 2)
        cy = rng.uniform(h / 2, sh - h / 2)
        for t in range(frames):
            k = (1.0 + spec.speed) ** t
            mats.append(np.float64([[1 / k, 0, cx - w / 2 / k], [0, 1 / k, cy - h / 2 / k]]))
    elif spec.motion in ("still", "shake"):
        margin = 2.0 if spec.motion == "shake" else 0.0
        x0 = rng.uniform(margin, max(margin, sw - w - margin))
        y0 = rng.uniform(margin, max(margin, sh - h - margin))
        for _ in range(frames):
            jx, jy = (rng.uniform(-margin, margin, 2) if margin else (0.0, 0.0))
            mats.append(np.float64([[1, 0, x0 + jx], [0, 1, y0 + jy]]))
    else:
        raise UnweatherError(f"unknown camera motion {spec.motion!r}; choose from {', '.join(MOTIONS)}")
    return mats


def clean_clip(photo: np.ndarray, spec: ClipSpec, frames: int, size: tuple[int, int],
               rng: np.random.Generator) -> np.ndarray:
    """The clean clip (frames, H, W, 3) float32 in [0, 1] that the camera path sees of `photo`."""
    img = photo.astype(np.float32) / 255.0 if photo.dtype == np.uint8 else np.asarray(photo, np.float32)
    h, w = size
    # A random scale of the photo (sharper or wider views), never smaller than the camera path needs.
    travel = {"pan": spec.speed * (frames - 1), "shake": 4.0}.get(spec.motion, 0.0) + 2.0
    need = max((h + travel) / img.shape[0], (w + travel) / img.shape[1])
    scale = rng.uniform(need, max(need, 1.0)) if need < 1.0 else need
    if abs(scale - 1.0) > 1e-3:
        img = cv2.resize(img, (max(w, round(img.shape[1] * scale)), max(h, round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    mats = camera_path(spec, frames, size, img.shape[:2], rng)
    out = np.empty((frames, h, w, 3), np.float32)
    for t, m in enumerate(mats):
        out[t] = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
    return np.clip(out, 0.0, 1.0)


def weather_clip(clean: np.ndarray, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """The clip with `spec`'s weather: rain and snow drawn afresh every frame, haze the same in each."""
    if spec.weather is None:
        return clean.copy()
    out = np.empty_like(clean)
    seed = int(rng.integers(2**31))
    for t, frame in enumerate(clean):
        # Haze belongs to the scene: the same draw every frame; particles are new every frame.
        frame_rng = np.random.default_rng(seed) if spec.weather == "haze" else rng
        out[t] = render.render(frame, spec.weather, frame_rng, spec.style, spec.intensity)
    return np.clip(out, 0.0, 1.0)


def shifts(frames: np.ndarray) -> np.ndarray:
    """(frames, 3): the state's move (dx, dy) into each frame and whether it is a cut (frame 0: none).

    As in the stream (`unweather.engine.session`): the estimated motion, summed until it reaches a quarter
    pixel (`motion.PendingMotion`), the sum restarted after a cut.
    """
    out = np.zeros((len(frames), 3), np.float32)
    prev, pending = None, motion.PendingMotion()
    for t, frame in enumerate(frames):
        grey = motion.reduced_grey(frame)
        if prev is not None:
            m = motion.estimate(prev, grey, frame.shape[1])
            if m.is_cut():
                out[t, 2], pending = 1.0, motion.PendingMotion()
            else:
                out[t, :2] = pending.add(m.dx, m.dy)
        prev = grey
    return out


def run_clip(model: VideoStudent, x: torch.Tensor, moves: torch.Tensor, f: torch.Tensor | None = None
             ) -> torch.Tensor:
    """Run the video student over clips `x` (N, T, 3, H, W) with per-frame motion `moves` (N, T, 3).

    The state starts empty, is moved with the motion between frames and emptied on a cut, as in the
    stream. `f`, the frame student's outputs, may be given (a frozen frame student). Returns (N, T, 3, H, W).
    """
    n, frames = x.shape[:2]
    bg, weight = model.initial_state(x[:, 0])
    outs = []
    for t in range(frames):
        if t:
            bg, weight = motion.warp_state(bg, weight, moves[:, t, 0], moves[:, t, 1])
            weight = weight * (1.0 - moves[:, t, 2]).view(n, 1, 1, 1)
        if f is None:
            y, bg, weight = model(x[:, t], bg, weight)
        else:
            y, bg, weight = model.step_from_frame(x[:, t], f[:, t], bg, weight)
        outs.append(y)
    return torch.stack(outs, dim=1)


def clip_loss(y: torch.Tensor, gt: torch.Tensor, consistency: float) -> dict[str, torch.Tensor]:
    """L1 to the clean clip, plus L1 between the output's and the clean clip's frame-to-frame changes."""
    pixel = F.l1_loss(y, gt)
    temporal = F.l1_loss(y[:, 1:] - y[:, :-1], gt[:, 1:] - gt[:, :-1]) if y.shape[1] > 1 else pixel * 0
    return {"pixel": pixel, "temporal": temporal, "total": pixel + consistency * temporal}


@dataclass
class VideoTrainConfig:
    """A video student's training run.

    Attributes:
        images: folders of training photos.
        init: the frame student's weights (a frame checkpoint), or a video checkpoint to continue.
        run_dir: where the run's state, log and best checkpoints go.
        out: the trained network (safetensors).
        arch: the registered video architecture.
        steps: optimiser steps.
        batch: clips per step.
        frames: frames per clip.
        crop: the clips' height and width in pixels.
        lr: peak learning rate (cosine decay after a short warm-up).
        consistency: weight of the temporal consistency term.
        clean_share: share of clips without weather.
        motions: camera paths drawn with equal probability.
        weathers: weathers drawn with `weather_odds`.
        weather_odds: relative odds of each of `weathers`.
        styles: renderer styles used for training.
        val_images: a folder of held-out photos (other packages) for validation; None: no validation.
        val_every: validate every this many steps.
        save_every: save the resumable state every this many steps.
        seed: the random seed.
        threads: torch threads.
        frame: with a video checkpoint as `init`, replace its frame student with this frame network
            (a newer `fast`), so that the fusion is refitted to it.
    """

    images: list[str]
    init: str
    run_dir: str
    out: str
    arch: str = "video_small"
    steps: int = 3000
    batch: int = 4
    frames: int = 8
    crop: int = 128
    lr: float = 1e-3
    consistency: float = 0.5
    clean_share: float = 0.2
    motions: tuple[str, ...] = TRAIN_MOTIONS
    weathers: tuple[str, ...] = WEATHERS
    weather_odds: tuple[float, ...] = (0.4, 0.4, 0.2)
    styles: tuple[str, ...] = render.TRAIN_STYLES
    val_images: str | None = None
    val_every: int = 250
    save_every: int = 50
    seed: int = 0
    threads: int = 1
    frame: str | None = None


def photo_paths(folders: Sequence[str]) -> list[Path]:
    """The image files in `folders`, sorted."""
    paths = sorted(p for d in folders for p in Path(d).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UnweatherError(f"no photos in {', '.join(folders)}")
    return paths


def random_spec(cfg: VideoTrainConfig, rng: np.random.Generator) -> ClipSpec:
    """A clip drawn from the run's mix of motions, weathers, styles and intensities."""
    kind = str(rng.choice(list(cfg.motions)))
    speed = {"pan": rng.uniform(0.3, 4.0), "zoom": rng.uniform(0.005, 0.03)}.get(kind, 0.0)
    weather = None
    if rng.random() >= cfg.clean_share:
        odds = np.asarray(cfg.weather_odds, np.float64)
        weather = str(rng.choice(list(cfg.weathers), p=odds / odds.sum()))
    return ClipSpec(kind, weather, str(rng.choice(list(cfg.styles))), None, float(speed))


def make_batch(photos: Sequence[np.ndarray], cfg: VideoTrainConfig, rng: np.random.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, motion): clips (N, T, 3, H, W) and their estimated motion (N, T, 3)."""
    xs, gts, moves = [], [], []
    for _ in range(cfg.batch):
        spec = random_spec(cfg, rng)
        photo = photos[int(rng.integers(len(photos)))]
        size = (cfg.crop, cfg.crop)
        if spec.motion == "cut":
            spec = dataclasses.replace(spec, motion="still")
            half = cfg.frames // 2
            other = photos[int(rng.integers(len(photos)))]
            gt = np.concatenate([clean_clip(photo, spec, half, size, rng),
                                 clean_clip(other, spec, cfg.frames - half, size, rng)])
        else:
            gt = clean_clip(photo, spec, cfg.frames, size, rng)
        x = weather_clip(gt, spec, rng)
        xs.append(x)
        gts.append(gt)
        moves.append(shifts(x))
    to = lambda a: torch.from_numpy(np.stack(a)).permute(0, 1, 4, 2, 3).contiguous()  # noqa: E731
    return to(xs), to(gts), torch.from_numpy(np.stack(moves))


def validation_clips(folder: str, frames: int = 8, size: tuple[int, int] = (180, 320), seed: int = 7
                     ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Fixed held-out clips: (group, input, clean) for still, panned and zoomed rain and snow, and clean."""
    groups = [("rain/still", ClipSpec("still", "rain", "particles", "medium")),
              ("snow/still", ClipSpec("still", "snow", "noise", "medium")),
              ("rain/pan", ClipSpec("pan", "rain", "noise", "medium", 2.0)),
              ("snow/zoom", ClipSpec("zoom", "snow", "particles", "medium", 0.01)),
              ("clean/pan", ClipSpec("pan", None, "particles", None, 1.5))]
    rng = np.random.default_rng(seed)
    clips = []
    for path in photo_paths([folder])[:4]:
        photo = read_rgb(path).astype(np.float32) / 255.0
        for group, spec in groups:
            gt = clean_clip(photo, spec, frames, size, rng)
            clips.append((group, weather_clip(gt, spec, rng), gt))
    return clips


@torch.no_grad()
def validate(model: VideoStudent, clips: Sequence[tuple[str, np.ndarray, np.ndarray]], warmup: int = 2
             ) -> dict[str, float]:
    """Mean PSNR per group over each clip's frames after `warmup`, for the video and the frame student."""
    model.eval()
    scores: dict[str, list[float]] = {}
    for group, x_np, gt_np in clips:
        h, w = x_np.shape[1:3]
        x = pad_to_multiple(torch.from_numpy(x_np).permute(0, 3, 1, 2), model.pad_multiple)[None]
        moves = torch.from_numpy(shifts(x_np))[None]
        f = model.frame(x[0]).clamp(0, 1)[None]
        y = run_clip(model, x, moves, f).clamp(0, 1)[..., :h, :w]
        f = f[..., :h, :w]
        gt = torch.from_numpy(gt_np).permute(0, 3, 1, 2)
        for name, out in (("video", y[0]), ("frame", f[0])):
            values = [float(psnr(out[t], gt[t])) for t in range(warmup, len(gt))]
            scores.setdefault(f"{name}/{group}", []).append(float(np.mean(values)))
    result = {key: float(np.mean(v)) for key, v in scores.items()}
    weather = [v for k, v in result.items() if k.startswith("video/") and not k.startswith("video/clean")]
    clean = [v for k, v in result.items() if k.startswith("video/clean")]
    # A dB of score lost for each dB the clean clips fall below 40.
    result["score"] = float(np.mean(weather)) + min(0.0, float(np.mean(clean)) - 40.0) if clean else float(
        np.mean(weather))
    return result


def build_video(cfg: VideoTrainConfig) -> VideoStudent:
    """The video student with the frame student's weights from `cfg.init` (or a whole video checkpoint).

    With a video checkpoint and `cfg.frame`, the frame network is replaced: of the same architecture, in
    place; of another one (quality's in a fusion trained over fast's), a `cfg.arch` network is built around
    it with the checkpoint's fusion (the fusion sees only images, so it carries over).
    """
    init = load_checkpoint(cfg.init)
    if isinstance(init, VideoStudent):
        if cfg.frame:
            frame = load_checkpoint(cfg.frame)
            arch = getattr(frame, "arch", None)
            if arch is None or isinstance(frame, VideoStudent):
                raise UnweatherError(f"--frame {cfg.frame} is not a frame network")
            if arch != init.frame.arch:
                model = build(cfg.arch, frame_arch=arch, frame_options=dict(getattr(frame, "arch_options", {})),
                              **dataclasses.asdict(init.fusion.config))
                model.frame.load_state_dict(frame.state_dict())
                model.fusion.load_state_dict(init.fusion.state_dict())
                return model
            init.frame.load_state_dict(frame.state_dict())
        return init
    if cfg.frame:
        raise UnweatherError("--frame replaces the frame network of a video checkpoint; --init is a frame network")
    model = build(cfg.arch, frame_arch=init.arch, frame_options=dict(getattr(init, "arch_options", {})))
    model.frame.load_state_dict(init.state_dict())
    return model


def train_video(cfg: VideoTrainConfig, resume: bool = False, log=print) -> Path:
    """Train the video student's fusion on synthetic clips; return the trained network's path."""
    if not 0.0 <= cfg.clean_share <= 1.0:
        raise UnweatherError(f"--clean-share must be between 0 and 1, not {cfg.clean_share:g}")
    if cfg.consistency < 0:
        raise UnweatherError(f"--consistency must be 0 or more, not {cfg.consistency:g}")
    torch.set_num_threads(max(1, cfg.threads))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "last_state.pt"
    record = dataclasses.asdict(cfg)
    config_path = run_dir / "config.json"
    if resume and state_path.is_file() and config_path.is_file():
        saved = json.loads(config_path.read_text())
        changed = sorted(k for k in ("arch", "steps", "batch", "frames", "crop", "lr") if saved.get(k) != record[k])
        if changed:
            raise UnweatherError(f"cannot resume {run_dir}: {', '.join(changed)} changed; use a new run directory")
    config_path.write_text(json.dumps(record, indent=1, default=list) + "\n")

    model = build_video(cfg)
    if cfg.crop % model.pad_multiple:
        raise UnweatherError(f"--crop must be a multiple of {model.pad_multiple}, not {cfg.crop}")
    model.frame.requires_grad_(False)
    model.frame.eval()
    opt = torch.optim.AdamW(model.fusion.parameters(), lr=cfg.lr, weight_decay=1e-4)
    rng = np.random.default_rng(cfg.seed)
    step, best = 0, -math.inf
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.fusion.load_state_dict(state["fusion"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        step, best = int(state["step"]), float(state["best"])
        log(f"resumed {run_dir} at step {step} of {cfg.steps}")

    photos = [read_rgb(p).astype(np.float32) / 255.0 for p in photo_paths(cfg.images)]
    val = validation_clips(cfg.val_images) if cfg.val_images else []
    metrics = (run_dir / "metrics.jsonl").open("a")

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"fusion": model.fusion.state_dict(), "optimizer": opt.state_dict(),
                    "rng": rng.bit_generator.state, "step": step, "best": best}, tmp)
        tmp.replace(state_path)

    warmup = max(1, cfg.steps // 50)
    started, losses = time.monotonic(), []
    try:
        while step < cfg.steps:
            factor = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * max(factor, 0.02)
            x, gt, moves = make_batch(photos, cfg, rng)
            with torch.no_grad():
                f = model.frame(x.flatten(0, 1)).unflatten(0, x.shape[:2])
            model.fusion.train()
            y = run_clip(model, x, moves, f)
            loss = clip_loss(y, gt, cfg.consistency)
            opt.zero_grad(set_to_none=True)
            loss["total"].backward()
            opt.step()
            step += 1
            losses.append([float(loss[k].detach()) for k in ("total", "pixel", "temporal")])
            if step % 25 == 0:
                mean = np.mean(losses, axis=0)
                entry = {"step": step, "lr": opt.param_groups[0]["lr"], "loss/total": mean[0],
                         "loss/pixel": mean[1], "loss/temporal": mean[2],
                         "steps_per_s": 25 / max(time.monotonic() - started, 1e-9)}
                metrics.write(json.dumps(entry) + "\n")
                metrics.flush()
                log(f"step {step}/{cfg.steps} loss {mean[0]:.4f} ({entry['steps_per_s']:.2f} steps/s)")
                started, losses = time.monotonic(), []
            if val and (step % cfg.val_every == 0 or step == cfg.steps):
                scores = validate(model, val)
                metrics.write(json.dumps({"step": step, **{f"val/{k}": v for k, v in scores.items()}}) + "\n")
                metrics.flush()
                log(f"step {step}: validation score {scores['score']:.2f} dB " + ", ".join(
                    f"{k} {v:.2f}" for k, v in sorted(scores.items()) if k != "score"))
                if scores["score"] > best:
                    best = scores["score"]
                    save(model, run_dir / "best.safetensors", metadata={"step": str(step), "score": f"{best:.3f}"})
            if step % cfg.save_every == 0:
                save_state()
    except KeyboardInterrupt:
        save_state()
        raise
    save_state()
    metrics.close()
    final = run_dir / "best.safetensors" if (run_dir / "best.safetensors").is_file() else None
    if final is not None:
        model = load_checkpoint(final)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(model, out, metadata={"run": run_dir.name, "steps": str(cfg.steps), "best_score": f"{best:.3f}"})
    return out
