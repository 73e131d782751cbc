"""A generic training loop over a sequence of stages (task modules returning named losses).

The run directory holds everything a run produces:
- config.json / config.yaml: the resolved configuration;
- metrics.jsonl: one JSON line per log interval and per validation (always written);
- tensorboard/: the same as TensorBoard events, when `tensorboard` is installed;
- last.safetensors + last_state.pt + last.json: the resume point (weights as safetensors; optimizer,
  scheduler and scaler state as a tensors-only file loaded with `weights_only=True`; step and best list
  as JSON);
- best/: the best `keep_best` networks by validation PSNR, each a loadable checkpoint.

The loop avoids host syncs: losses are accumulated on the device and read every `log_every` steps.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from unweather.errors import UnweatherError
from unweather.fileio import atomic_path
from unweather.models import PadCrop
from unweather.training.config import TrainConfig
from unweather.training.data import CLEAN, ValidSet, WeatherBatches
from unweather.training.metrics import psnr
from unweather.training.tasks import Task

log = logging.getLogger(__name__)

SaveFn = Callable[[nn.Module, Path, dict[str, str]], None]


@dataclass
class Stage:
    """One stage of a run: its task and its length in steps."""

    name: str
    task: Task
    steps: int


@dataclass
class FitResult:
    """What a finished run produced."""

    step: int
    best: list[dict] = field(default_factory=list)
    last_val: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def best_path(self) -> Path | None:
        return Path(self.best[0]["path"]) if self.best else None


def param_groups(module: nn.Module, lr: float, scale: dict[str, float]) -> list[dict]:
    """Adam parameter groups: `lr` times the multiplier of the first name in `scale` that is a
    component of the parameter's dotted name ("haze" matches "student.haze.gain.weight")."""
    groups: dict[float, list] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            factor = next((float(f) for key, f in scale.items() if f".{key}." in f".{name}."), 1.0)
            groups.setdefault(factor, []).append(p)
    unused = [key for key in scale if not any(f".{key}." in f".{n}." for n, _ in module.named_parameters())]
    if unused:
        raise UnweatherError(f"optim.lr_scale names no layer of the network: {', '.join(map(str, unused))}")
    return [{"params": ps, "lr": lr * factor} for factor, ps in groups.items()]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def validate(net: nn.Module, valid: ValidSet, device: torch.device, clean_floor: float = 0.0) -> dict[str, float]:
    """PSNR per group of `valid` (RGB, whole validation crops) and `score`: the mean over weather types.

    PSNR is `unweather.training.metrics.psnr`, the one `unweather eval` reports (the output clamped to
    [0, 1]), so a run's validation numbers and `unweather eval` on its network agree.

    With `clean_floor` > 0, every dB the clean group falls below it is taken off the score, so a checkpoint
    that damages clean frames is not kept for its weather scores.
    """
    was_training = net.training
    net.eval()
    wrapped = PadCrop(net)
    result: dict[str, float] = {}
    for name, pairs in valid.pairs.items():
        values = [psnr(wrapped(deg.to(device)), gt.to(device)) for gt, deg in pairs]
        if values:
            result[name] = sum(values) / len(values)
    net.train(was_training)
    weathers = [v for k, v in result.items() if k != CLEAN]
    result["score"] = sum(weathers) / len(weathers) if weathers else float("nan")
    if clean_floor > 0 and CLEAN in result:
        result["score"] -= max(0.0, clean_floor - result[CLEAN])
    return result


def _amp(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    if device.type != "cuda" or cfg.optim.amp in ("off", "none", "false"):
        return None, False
    if cfg.optim.amp == "fp16":
        return torch.float16, True
    if cfg.optim.amp in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


class _Logs:
    """metrics.jsonl always; TensorBoard too when it is installed."""

    def __init__(self, run_dir: Path) -> None:
        self.file = (run_dir / "metrics.jsonl").open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.tb = None
        else:
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, float | str]) -> None:
        self.file.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _save_atomic(write: Callable[[Path], None], path: Path) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


class Trainer:
    """Runs `stages` in order over one optimizer, one schedule and one global step count.

    Args:
        cfg: the resolved configuration (optimisation, logging, seed).
        trainable: the module whose parameters are optimised and checkpointed (shared by all stages).
        stages: the stages, each with its task and number of steps.
        batches: the training batches (batch `s` is a function of the seed and `s`).
        valid: the validation pairs, or None to skip validation.
        run_dir: where checkpoints and logs go.
        save_net: writes a stage's network as a loadable checkpoint with metadata (`unweather.models.save`).
        metadata: metadata every exported network carries (weathers, data, config...).
        device: where to train.
        val_every: validate every this many steps (0: only at the end of each stage).
        stage_end: called with (stage, step) after each stage completes (e.g. to save the CKT).
    """

    def __init__(self, cfg: TrainConfig, trainable: nn.Module, stages: Sequence[Stage], batches: WeatherBatches,
                 valid: ValidSet | None, run_dir: Path, save_net: SaveFn, metadata: dict[str, str],
                 device: torch.device, val_every: int = 0, warmup: int = 0,
                 stage_end: Callable[[Stage, int], None] | None = None) -> None:
        self.cfg = cfg
        self.trainable = trainable
        # Networks with constrained weights (a student's phase balance) project them back after each step.
        self._projected = [m for m in trainable.modules() if hasattr(m, "project_")]
        self.stages = list(stages)
        self.batches = batches
        self.valid = valid
        self.run_dir = Path(run_dir)
        self.save_net = save_net
        self.metadata = dict(metadata)
        self.device = device
        self.val_every = int(val_every)
        self.warmup = int(warmup)
        self.stage_end = stage_end
        self.total = sum(s.steps for s in self.stages)
        self.step = 0
        self.best: list[dict] = []
        self.last_val: dict[str, float] = {}
        self._stop = threading.Event()
        self._saved_at = time.monotonic()

        params = [p for p in trainable.parameters() if p.requires_grad]
        if not params:
            raise UnweatherError("the model has no trainable parameters")
        lr = cfg.optim.lr
        if cfg.optim.scale_lr_by_batch:
            lr = lr * batches.batch_size / 16
        self.lr = lr
        self.optimizer = torch.optim.Adam(param_groups(trainable, lr, cfg.optim.lr_scale), lr=lr,
                                          betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
        min_ratio = min(1.0, cfg.optim.min_lr / lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total, self.warmup, min_ratio))
        self.amp_dtype, use_scaler = _amp(cfg, device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    # -- checkpoints -------------------------------------------------------------------------------

    @property
    def last_paths(self) -> tuple[Path, Path, Path]:
        return (self.run_dir / "last.safetensors", self.run_dir / "last_state.pt", self.run_dir / "last.json")

    def save_last(self) -> None:
        """Write the resume point (weights, optimizer/scheduler state, step) atomically."""
        from safetensors.torch import save_file

        weights, state, info = self.last_paths
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.trainable.state_dict().items()}
        _save_atomic(lambda p: save_file(tensors, str(p)), weights)
        blob = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            blob["scaler"] = self.scaler.state_dict()
        _save_atomic(lambda p: torch.save(blob, p), state)
        meta = {"step": self.step, "total": self.total, "best": self.best, "last_val": self.last_val,
                "stages": [[s.name, s.steps] for s in self.stages], "weathers": self.metadata.get("weathers")}
        _save_atomic(lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"), info)
        self._saved_at = time.monotonic()

    def load_last(self) -> bool:
        """Restore the resume point if the run directory has one; return whether it did."""
        from safetensors.torch import load_file

        weights, state, info = self.last_paths
        if not (weights.is_file() and state.is_file() and info.is_file()):
            return False
        meta = json.loads(info.read_text())
        if [list(s) for s in meta.get("stages", [])] != [[s.name, s.steps] for s in self.stages]:
            raise UnweatherError(f"cannot resume from {self.run_dir}: its stages {meta.get('stages')} differ "
                                 f"from this run's {[[s.name, s.steps] for s in self.stages]}")
        if meta.get("weathers") != self.metadata.get("weathers"):
            raise UnweatherError(f"cannot resume from {self.run_dir}: it was trained on weathers {meta.get('weathers')}"
                                 f" in that order, not {self.metadata.get('weathers')}")
        missing, unexpected = self.trainable.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise UnweatherError(f"cannot resume from {weights}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        blob = torch.load(state, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        if self.scaler is not None and "scaler" in blob:
            self.scaler.load_state_dict(blob["scaler"])
        self.step = int(meta["step"])
        self.best = list(meta.get("best", []))
        self.last_val = dict(meta.get("last_val", {}))
        log.info("resumed %s at step %d of %d", self.run_dir, self.step, self.total)
        return True

    def _keep_best(self, stage: Stage, score: float, val: dict[str, float]) -> None:
        keep = self.cfg.log.keep_best
        if keep <= 0 or not math.isfinite(score):
            return
        if len(self.best) >= keep and score <= self.best[-1]["psnr"]:
            return
        best_dir = self.run_dir / "best"
        best_dir.mkdir(parents=True, exist_ok=True)
        path = best_dir / f"step{self.step:07d}-{stage.name}-psnr{score:.2f}.safetensors"
        self.save_net(stage.task.net, path, self.export_metadata(stage, val))
        self.best.append({"path": str(path), "psnr": score, "step": self.step, "stage": stage.name})
        self.best.sort(key=lambda b: -b["psnr"])
        for dropped in self.best[keep:]:
            Path(dropped["path"]).unlink(missing_ok=True)
        self.best = self.best[:keep]

    def export_metadata(self, stage: Stage, val: dict[str, float]) -> dict[str, str]:
        """The metadata of a network exported at the current step."""
        meta = dict(self.metadata)
        meta.update({"stage": stage.name, "steps": str(self.step),
                     "val_psnr": json.dumps({k: round(v, 3) for k, v in val.items()})})
        return meta

    # -- the loop ----------------------------------------------------------------------------------

    def _stage_at(self, step: int) -> tuple[Stage, int]:
        start = 0
        for stage in self.stages:
            if step < start + stage.steps:
                return stage, start
            start += stage.steps
        return self.stages[-1], start - self.stages[-1].steps

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and stop after the current step."""
        self._stop.set()

    def fit(self, resume: bool = False) -> FitResult:
        """Train to the end (or until stopped); return the result."""
        from tqdm import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and not self.load_last():
            log.info("no checkpoint to resume in %s; starting from step 0", self.run_dir)
        torch.manual_seed(self.cfg.seed + self.step)
        for stage in self.stages:
            stage.task.to(self.device)
        logs = _Logs(self.run_dir)
        handler_installed = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_: self.request_stop()) if handler_installed else None
        bar = tqdm(total=self.total, initial=self.step, disable=not self.cfg.log.progress, unit="step",
                   dynamic_ncols=True)
        try:
            self._loop(logs, bar)
        finally:
            bar.close()
            logs.close()
            if handler_installed:
                signal.signal(signal.SIGINT, previous)
            self.batches.close()
        return FitResult(self.step, list(self.best), dict(self.last_val), self._stop.is_set())

    def _loop(self, logs: _Logs, bar) -> None:
        cfg = self.cfg
        if self.step >= self.total:
            return
        stage, start = self._stage_at(self.step)
        stage.task.train()
        sums: dict[str, torch.Tensor] = {}
        count, tick = 0, time.perf_counter()
        for step, batch in self.batches.iterate(self.step, self.total):
            if step >= start + stage.steps:
                stage, start = self._stage_at(step)
                stage.task.train()
            fb = batch.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                terms = stage.task(fb, step=step)
            loss = sum(terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.trainable.parameters(), cfg.optim.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            for module in self._projected:
                module.project_()
            self.scheduler.step()
            self.step = step + 1
            bar.update(1)
            for key, value in {"total": loss, **terms}.items():
                value = value.detach().float()
                sums[key] = sums[key] + value if key in sums else value
            count += 1

            stage_done = self.step == start + stage.steps
            if count >= cfg.log.log_every or stage_done or self._stop.is_set():
                elapsed = time.perf_counter() - tick
                values = {f"loss/{k}": float(v) / count for k, v in sums.items()}
                record = {"stage": stage.name, "lr": self.scheduler.get_last_lr()[0],
                          "steps_per_s": count / elapsed if elapsed > 0 else 0.0, **values}
                logs.write(self.step, record)
                bar.set_postfix(stage=stage.name, loss=f"{values['loss/total']:.4f}")
                if not all(math.isfinite(v) for v in values.values()):
                    self.save_last()
                    raise UnweatherError(f"the loss became {values['loss/total']} at step {self.step} "
                                         f"(stage {stage.name}); lower the learning rate")
                sums, count, tick = {}, 0, time.perf_counter()
                if 0 < cfg.log.checkpoint_minutes * 60 <= time.monotonic() - self._saved_at:
                    self.save_last()
            if self.valid is not None and (stage_done or (self.val_every and self.step % self.val_every == 0)):
                self._validate(stage, logs)
            if stage_done:
                if self.stage_end is not None:
                    self.stage_end(stage, self.step)
                self.save_last()
            if self._stop.is_set():
                self.save_last()
                log.info("stopped at step %d; checkpoint saved in %s (resume with --resume)", self.step,
                         self.run_dir)
                return
        self.save_last()

    def _validate(self, stage: Stage, logs: _Logs) -> None:
        tick = time.perf_counter()
        val = validate(stage.task.net, self.valid, self.device, self.cfg.log.clean_floor)
        self.last_val = val
        logs.write(self.step, {"stage": stage.name, "val_seconds": round(time.perf_counter() - tick, 3),
                               **{f"val/psnr/{k}": v for k, v in val.items()}})
        log.debug("step %d validation: %s", self.step, val)
        self._keep_best(stage, val["score"], val)
