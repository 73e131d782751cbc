"""Fit a dcp haze head's strength to what restores rendered haze best: `python3 scripts/fit_haze_strength.py IN OUT`.

IN is a student with a haze head (the shipped fast or quality); OUT is the same student with the `haze_dcp` head
(the image's own airlight and He et al.'s transmission at a global strength w read from the pooled features and
the haze statistics), its strength layer (haze.prior) fitted and every other weight as in IN.

Trained end to end, the strength stayed low (0.3-0.5 on heavy haze, where 0.8-0.95 restores best): the loss
through the whole network blurs what each strength does. Here each training photo (short side --side) gets haze
at each intensity in the training styles, rain, snow and no weather; the prior alone is scored at strengths 0 to
0.95 (PSNR against the photo, capped at --cap dB so that clean frames weigh like the rest), and the layer, linear
in what the head reads, is fitted to the PSNR its strength reaches (interpolated between the scored strengths).
A run that keeps the strength fixed (optim.lr_scale haze.prior: 0, with the encoder that feeds it) then fits the
rest of the network around it.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("clean", "haze/light", "haze/medium", "haze/heavy", "rain", "snow")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", default="data/corpus_meta/train/images", help="the training photos")
    parser.add_argument("--side", type=int, default=256, help="short side the photos are scaled to")
    parser.add_argument("--draws", type=int, default=2, help="renderings per photo and kind")
    parser.add_argument("--cap", type=float, default=50.0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rain-by-network", action=argparse.BooleanOptionalAction, default=True,
                        help="score rain and snow by the whole network's output at each strength: the network "
                             "removes their mist itself, and the prior alone would ask for strength there")
    parser.add_argument("--max-gain", type=float, default=10.0, help="the head's gain bound (t down to 1 / it)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from unweather.models import load_checkpoint
    from unweather.models.student import Student
    from unweather.training import render
    from unweather.training.metrics import psnr
    from unweather.training.synth import read_image

    torch.set_num_threads(args.threads)
    base = load_checkpoint(args.src)
    if not getattr(base.config, "haze_head", False):
        print(f"{args.src} has no haze head", file=sys.stderr)
        return 1
    options = {**base.config.__dict__, "haze_dcp": True, "haze_prior": False, "haze_max_gain": args.max_gain}
    net = Student(type(base.config)(**options)).eval()
    net.load_state_dict(net.adapt_state_dict(base.state_dict()), strict=False)
    head = net.haze
    seen: dict[str, torch.Tensor] = {}
    head.register_forward_pre_hook(lambda _, inputs: seen.update(x=inputs[0], g=inputs[1]))

    files = sorted(glob.glob(str(ROOT / args.images / "*")) if not Path(args.images).is_absolute()
                   else glob.glob(f"{args.images}/*"))
    if not files:
        print(f"no photos in {args.images}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    grid = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    features, scores, kinds = [], [], []
    started = time.time()
    for path in files:
        photo = read_image(path)
        h, w = photo.shape[:2]
        scale = args.side / min(h, w)
        photo = cv2.resize(photo, (int(w * scale) // 16 * 16, int(h * scale) // 16 * 16), interpolation=cv2.INTER_AREA)
        target = torch.from_numpy(photo).permute(2, 0, 1)[None]
        for kind in KINDS:
            for _ in range(args.draws if kind != "clean" else 1):
                style = render.TRAIN_STYLES[rng.integers(len(render.TRAIN_STYLES))]
                weather, _, intensity = kind.partition("/")
                intensity = intensity or render.INTENSITIES[rng.integers(3)]
                seen_photo = photo if kind == "clean" else render.render_band(photo, weather, rng, style, intensity)[0]
                x = torch.from_numpy(np.ascontiguousarray(seen_photo)).permute(2, 0, 1)[None]
                with torch.no_grad():
                    net(x)
                    least, _, h_vec = head.read(seen["x"], seen["g"])
                    airlight = head.image_airlight(least)
                    row = []
                    for strength in grid:
                        if weather in ("rain", "snow") and args.rain_by_network:
                            restored = _with_strength(net, float(strength), x).clamp(0, 1)
                        else:
                            log_t = head.dcp_log_t(least, airlight, float(strength), x.shape[-2:])
                            restored = (airlight + (x - airlight) * torch.exp(-log_t)).clamp(0, 1)
                        row.append(min(psnr(restored, target), args.cap))
                features.append(h_vec.flatten())
                scores.append(row)
                kinds.append(kind)
    print(f"{len(features)} renderings of {len(files)} photos scored in {time.time() - started:.0f} s", flush=True)

    hs, table = torch.stack(features), torch.tensor(scores)
    layer = head.prior
    _start_from_best_strengths(layer, hs, table.argmax(1), grid)
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    for _ in range(args.steps):
        strength = 0.95 * torch.sigmoid(layer(hs[:, :, None, None]).flatten())
        loss = -_interpolated(table, grid, strength).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        strength = 0.95 * torch.sigmoid(layer(hs[:, :, None, None]).flatten())
        reached = _interpolated(table, grid, strength)
    report = {}
    for kind in KINDS:
        rows = [i for i, k in enumerate(kinds) if k == kind]
        report[kind] = {"n": len(rows), "strength_mean": round(float(strength[rows].mean()), 3),
                        "psnr_fitted": round(float(reached[rows].mean()), 2),
                        "psnr_none": round(float(table[rows, 0].mean()), 2),
                        "psnr_best": round(float(table[rows].max(1).values.mean()), 2)}
        print(kind, report[kind], flush=True)

    with safe_open(args.src, "pt") as f:
        meta = dict(f.metadata() or {})
    stored = json.loads(meta.get("options", "{}"))
    stored.update(haze_dcp=True, haze_max_gain=float(net.config.haze_max_gain))
    meta["options"] = json.dumps(stored, sort_keys=True)
    meta["haze_strength_fit"] = json.dumps({"photos": len(files), "side": args.side, "draws": args.draws,
                                            "cap": args.cap, "steps": args.steps, "seed": args.seed,
                                            "kinds": report})
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(args.out), metadata=meta)
    print(f"wrote {args.out}")
    return 0


def _with_strength(net: torch.nn.Module, strength: float, x: torch.Tensor) -> torch.Tensor:
    """`net(x)` with its haze head's strength set to `strength` whatever the image."""
    layer = net.haze.prior
    logit = torch.logit(torch.tensor(strength / 0.95).clamp(1e-6, 1 - 1e-6))
    layer.forward = lambda h: torch.full((h.shape[0], 1, 1, 1), float(logit), dtype=h.dtype)
    try:
        return net(x)
    finally:
        del layer.forward


@torch.no_grad()
def _start_from_best_strengths(layer: torch.nn.Conv2d, hs: torch.Tensor, best: torch.Tensor, grid: torch.Tensor,
                               ridge: float = 1.0) -> None:
    """Set the strength layer to a least-squares fit of each rendering's best strength (as a logit).

    Fitted on the scores directly from a neutral start, the clean frames' steep loss near w = 0 pulls every
    strength down before the layer tells them from haze, and the sigmoid's tail holds it there; this convex
    start already separates them.
    """
    target = torch.logit((grid[best] / 0.95).clamp(0.02, 0.98)).double()
    mean, scale = hs.double().mean(0), hs.double().std(0) + 1e-6
    z = torch.cat([(hs.double() - mean) / scale, torch.ones(len(hs), 1, dtype=torch.float64)], dim=1)
    coef = torch.linalg.solve(z.T @ z + ridge * torch.eye(z.shape[1], dtype=torch.float64), z.T @ target)
    weight = coef[:-1] / scale
    layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight.dtype))
    layer.bias.copy_((coef[-1] - (weight * mean).sum()).reshape(1).to(layer.bias.dtype))


def _interpolated(table: torch.Tensor, grid: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Each row of `table` (scores at the strengths of `grid`) read at its own `strength`, linearly."""
    i = torch.searchsorted(grid, strength.detach().clamp(grid[0], grid[-1]), right=True).clamp(1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    share = (strength - lo) / (hi - lo)
    rows = torch.arange(len(table))
    return table[rows, i - 1] * (1 - share) + table[rows, i] * share


if __name__ == "__main__":
    sys.exit(main())
