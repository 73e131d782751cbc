"""Before/after images for the README: real weather photos and held-out synthetic pairs, per shipped model.

    apt-get download mate-backgrounds && dpkg -x mate-backgrounds_*.deb mate
    python scripts/readme_images.py --real mate/usr/share/backgrounds/mate/nature/RainDrops.jpg \\
        mate/usr/share/backgrounds/mate/nature/Storm.jpg [--meta-dir data/synth] [--out docs/images]

    python scripts/readme_images.py --corpus data/corpus_meta --look data/corpus/look   # the corpus pictures

Each real photo (no clean version exists) becomes one PNG: input | fast | quality, scaled to `--width`
per panel. With `--corpus`, one held-out scene (a validation photo of another package) per weather, at
light, medium and heavy intensity in the held-out renderer style, as input | fast | quality | ground
truth (`corpus_<weather>.jpg`), a clean night frame the same way (`corpus_clean_night.jpg`), and with
`--look` every real weather photo the corpus search found (`look_<name>.jpg`). Without `--corpus`, the
synthetic pairs come from --meta-dir's validation split (photos never seen in training): one pair per
weather type, centre-cropped, as input | fast | quality | ground truth, with each panel's PSNR.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
WEATHERS = ("rain", "snow", "haze")


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """Write `text` on a dark band at the top of an RGB uint8 image."""
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), thickness=-1)
    cv2.putText(out, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _restore(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        return net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def _save(path: Path, panels: list[np.ndarray]) -> None:
    """Write `panels` side by side, 4 white pixels apart: PNG, or JPEG (quality 88) for a .jpg path."""
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 88] if path.suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(row, axis=1), cv2.COLOR_RGB2BGR), params)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", nargs="*", type=Path, default=[], help="real weather photos")
    parser.add_argument("--meta-dir", type=Path, default=ROOT / "data/synth")
    parser.add_argument("--weights", type=Path, default=ROOT / "unweather/weights")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images")
    parser.add_argument("--width", type=int, default=360, help="width of each panel of a real photo")
    parser.add_argument("--crop", type=int, default=192, help="side of the synthetic crops")
    parser.add_argument("--pair", type=int, default=5, help="which validation pair of each weather")
    parser.add_argument("--corpus", type=Path, help="a prepared corpus: held-out scenes at each intensity")
    parser.add_argument("--look", type=Path, help="a folder of real weather photos (the corpus's look split)")
    parser.add_argument("--scene", default="", help="with --corpus: a validation photo's name contains this")
    args = parser.parse_args()
    if args.corpus or args.look:
        return corpus_images(args)

    from unweather.models import PadCrop, load_checkpoint
    from unweather.training.metrics import psnr
    from unweather.training.synth import read_image

    nets = {name: PadCrop(load_checkpoint(args.weights / f"{name}.safetensors")).eval() for name in ("fast", "quality")}
    for photo in args.real:
        image = read_image(photo)
        h, w = image.shape[:2]
        image = cv2.resize(image, (args.width, round(h * args.width / w)), interpolation=cv2.INTER_AREA)
        panels = [_label(_to_uint8(image), "input (real)")]
        panels += [_label(_to_uint8(_restore(net, image)), name) for name, net in nets.items()]
        _save(args.out / f"real_{photo.stem.lower()}.png", panels)

    for weather in WEATHERS:
        meta = args.meta_dir / "valid" / f"{weather}_meta_valid.json"
        if not meta.is_file():
            print(f"skipped {weather}: no {meta}")
            continue
        pairs = json.loads(meta.read_text())
        gt_path, input_path = (args.meta_dir / p if not Path(p).is_absolute() else Path(p)
                               for p in pairs[min(args.pair, len(pairs) - 1)])
        gt, degraded = read_image(gt_path), read_image(input_path)
        c = min(args.crop, *gt.shape[:2])
        y, x = (gt.shape[0] - c) // 2, (gt.shape[1] - c) // 2
        gt, degraded = gt[y:y + c, x:x + c], degraded[y:y + c, x:x + c]
        panels = [_label(_to_uint8(degraded), f"{weather} {psnr(degraded, gt):.1f} dB")]
        for name, net in nets.items():
            out = _restore(net, degraded)
            panels.append(_label(_to_uint8(out), f"{name} {psnr(out, gt):.1f} dB"))
        panels.append(_label(_to_uint8(gt), "ground truth"))
        _save(args.out / f"synthetic_{weather}.png", panels)
    return 0


def corpus_images(args: argparse.Namespace) -> int:
    """The held-out scenes of a prepared corpus at each intensity, a clean night frame, the real weather photos."""
    from unweather.media import read_rgb
    from unweather.models import PadCrop, load_checkpoint
    from unweather.training.metrics import psnr

    nets = {name: PadCrop(load_checkpoint(args.weights / f"{name}.safetensors")).eval() for name in ("fast", "quality")}

    def small(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        return cv2.resize(img, (args.width, round(h * args.width / w)), interpolation=cv2.INTER_AREA)

    def row(degraded: np.ndarray, gt: np.ndarray | None, label: str) -> list[np.ndarray]:
        x = small(degraded).astype(np.float32) / 255.0
        ref = None if gt is None else small(gt).astype(np.float32) / 255.0
        db = (lambda a: f" {psnr(a, ref):.1f} dB") if ref is not None else (lambda a: "")
        panels = [_label(_to_uint8(x), label + db(x))]
        for name, net in nets.items():
            out = _restore(net, x)
            panels.append(_label(_to_uint8(out), name + db(out)))
        if ref is not None:
            panels.append(_label(_to_uint8(ref), "ground truth"))
        return panels

    if args.corpus:
        pairs = json.loads((args.corpus / "eval.json").read_text())["pairs"]
        scenes = sorted({p["gt"] for p in pairs if args.scene in p["gt"] and "_frame" not in p["gt"]})
        for i, weather in enumerate(WEATHERS):
            scene = scenes[(i * 5) % len(scenes)]
            rows = []
            for intensity in ("light", "medium", "heavy"):
                pair = next(p for p in pairs if p["gt"] == scene and p["weather"] == weather
                            and p["style"] == "optics" and p["intensity"] == intensity)
                rows.append(row(read_rgb(args.corpus / pair["input"]), read_rgb(args.corpus / pair["gt"]),
                                f"{weather} {intensity}"))
            width = sum(p.shape[1] for p in rows[0]) + 4 * (len(rows[0]) - 1)
            strips = [np.concatenate([np.concatenate([p, np.full((p.shape[0], 4, 3), 255, np.uint8)], 1)
                                      for p in r], 1)[:, :width] for r in rows]
            gap = np.full((4, width, 3), 255, np.uint8)
            stacked = np.concatenate([s for strip in strips for s in (strip, gap)][:-1])
            _save(args.out / f"corpus_{weather}.jpg", [stacked])
        night = next((p for p in pairs if p["weather"] == "clean" and "night" in p["tags"]), None)
        if night is not None:
            frame = read_rgb(args.corpus / night["gt"])
            _save(args.out / "corpus_clean_night.jpg", row(frame, frame, "clean night"))
    if args.look:
        from unweather.media import IMAGE_SUFFIXES

        for photo in sorted(p for p in args.look.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            name = photo.stem.split("__")[-1].split("_")[-1].lower()
            _save(args.out / f"look_{name}.jpg", row(read_rgb(photo), None, "input (real)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
