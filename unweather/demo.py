"""`unweather demo`: clean synthetic rain out of a short clip, with nothing but the package.

    unweather demo [-o DIR] [--frames 48] [--size 640x360] [--weather rain] [--model fast]

It films the photo the package carries (unweather/assets/demo_photo.jpg) with a slowly panning camera
under moving synthetic rain (`unweather.training.clips.weather_clip`), writes that clip, restores it
with `unweather.stream.run` and the default model for a video, then writes the before/after video
side by side and a PNG of one frame, and prints the frame rate and the PSNR against the clean clip.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from unweather.errors import UnweatherError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

FPS = 25


def demo_photo() -> Path:
    """The photo the demo films (shipped inside the package)."""
    return Path(__file__).resolve().parent / "assets" / "demo_photo.jpg"


@dataclass
class DemoResult:
    """What `make_demo` wrote and measured."""

    degraded: Path
    restored: Path
    before_after: Path
    png: Path
    frames: int
    fps: float
    model: str
    psnr_degraded: float
    psnr_restored: float


def demo_params(weather: str) -> object:
    """Moderate weather for the demo (the training ranges reach much heavier rain)."""
    from unweather.training import synth

    if weather == "rain":
        return synth.RainParams(density=18.0, angle=12.0, length=0.08, width=1.4, blur=0.7, opacity=0.6,
                                brightness=0.85, layers=2, veil=0.03)
    return synth.SnowParams() if weather == "snow" else synth.HazeParams()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `demo`."""
    parser = subparsers.add_parser(
        "demo", help="clean synthetic rain out of a short clip made from a bundled photo",
        description="Make a short clip from the photo the package carries, add moving synthetic weather, "
                    "clean it with the default model and write before/after video and a PNG.")
    parser.add_argument("-o", "--output", default="unweather-demo", metavar="DIR",
                        help="folder for the clips and the PNG (default: ./unweather-demo)")
    parser.add_argument("--frames", type=int, default=48, help="clip length in frames (default: 48)")
    parser.add_argument("--size", default="640x360", metavar="WxH", help="frame size (default: 640x360)")
    parser.add_argument("--weather", default="rain", choices=("rain", "snow", "haze"),
                        help="the synthetic weather (default: rain)")
    parser.add_argument("--model", help="model to clean with (default: as `unweather run` on a video: the video "
                                            "student when shipped, else quality on a GPU, fast on a CPU)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the engine's choice)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the weather")
    parser.set_defaults(func=_handler)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UnweatherError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    if w < 32 or h < 32 or w % 2 or h % 2:
        raise UnweatherError(f"--size {text}: width and height must be even and at least 32")
    return w, h


def _write_video(path: Path, frames: list, rate: int = FPS) -> None:
    """Write uint8 RGB frames as H.264 (near-lossless, so the model sees the synthetic weather as made)."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "12", "preset": "fast"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _read_video(path: Path) -> list:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _psnr(frames: list, reference: list) -> float:
    """Mean PSNR over frames (8-bit RGB), with the package's one PSNR (`unweather.training.metrics.psnr`)."""
    import numpy as np

    from unweather.training.metrics import psnr

    n = min(len(frames), len(reference))
    return float(psnr(np.stack(frames[:n]), np.stack(reference[:n]), data_range=255.0))


def label_font(width: int) -> tuple[tuple[int, int], float, int]:
    """Where and how big `draw_label` writes on a frame `width` pixels wide: origin, scale and thickness
    of `cv2.FONT_HERSHEY_SIMPLEX`."""
    scale = max(0.4, width / 900)
    return (8, int(28 * scale) + 4), scale, max(1, round(scale * 2))


def draw_label(image: np.ndarray, text: str) -> np.ndarray:
    """Return a copy of an RGB uint8 `image` with `text` in white on a dark outline at its top left.

    The outline is the text's own coverage widened by a pixel or two, not a second, thicker `cv2.putText`:
    Hershey glyphs advance further at a greater thickness, so a thicker copy drifts off the thin one and
    the label reads with doubled glyphs ("unweather fastt").
    """
    import cv2
    import numpy as np

    origin, scale, thickness = label_font(image.shape[1])
    ink = np.zeros(image.shape[:2], np.uint8)
    cv2.putText(ink, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    side = 2 * max(1, thickness // 2) + 1
    halo = cv2.dilate(ink, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side)))
    text_alpha = ink.astype(np.float32)[..., None] / 255.0
    # Anti-aliased thin strokes rarely reach full coverage: the outline is made solid to be read on any scene.
    halo_alpha = np.minimum(halo.astype(np.float32)[..., None] * (2.0 / 255.0), 1.0)
    out = image.astype(np.float32) * (1.0 - halo_alpha)
    out = out * (1.0 - text_alpha) + 255.0 * text_alpha
    return np.rint(out).clip(0, 255).astype(np.uint8)


def make_demo(output: str | Path, frames: int = 48, size: tuple[int, int] = (640, 360), weather: str = "rain",
              model: str | None = None, device: str | None = None, seed: int = 1,
              stop_event: threading.Event | None = None) -> DemoResult:
    """Make the demo clip, restore it, and write the before/after video and PNG into `output`.

    Args:
        output: the folder to write into (created).
        frames: clip length.
        size: (width, height), both even.
        weather: "rain", "snow" or "haze".
        model: the model argument of `unweather.engine.open`; None: the default for the device.
        device: where the engine runs; None: its choice.
        seed: seed of the synthetic weather.
        stop_event: set it to stop restoring; the restored clip is closed with the frames done so far.

    Raises:
        KeyboardInterrupt: when stopped by `stop_event` (the restored clip stays playable).
    """
    import cv2
    import numpy as np

    from unweather.engine import default_model
    from unweather.stream import RunConfig, run
    from unweather.training.clips import weather_clip
    from unweather.training.synth import read_image, to_uint8

    if frames < 2:
        raise UnweatherError("the demo needs at least 2 frames")
    photo = demo_photo()
    if not photo.is_file():
        raise UnweatherError(f"the demo photo is missing from this installation ({photo})")
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    # A slow pan with some wind: the weather moves, the scene moves, as a dashcam would see it.
    clean, degraded = weather_clip(read_image(photo), weather, frames, rng, pan=True, size=(h, w), wind=0.15,
                                   pan_speed=0.001, params=demo_params(weather))
    clean8 = [to_uint8(f) for f in clean]
    degraded8 = [to_uint8(f) for f in degraded]
    degraded_path = out_dir / f"{weather}.mp4"
    restored_path = out_dir / f"{weather}_restored.mp4"
    _write_video(degraded_path, degraded8)

    # The clip is a video: the same default as `unweather run` on a video (the video student when shipped).
    model_name = model or default_model(device, video=True)
    config = RunConfig(model=model_name, device=device, progress=False, mode="offline")
    stats = run(str(degraded_path), str(restored_path), config=config, stop_event=stop_event)
    if stop_event is not None and stop_event.is_set():
        log.warning("stopped: %s holds the %d frames restored so far", restored_path, stats.frames_out)
        raise KeyboardInterrupt
    # Compare with what the model saw (the decoded clip), so codec loss is not counted against it.
    seen = _read_video(degraded_path)
    restored = _read_video(restored_path)
    if len(restored) != len(seen):
        raise UnweatherError(f"the restored clip has {len(restored)} frames, not {len(seen)}")

    pairs = [np.hstack([draw_label(a, f"{weather} (synthetic)"), draw_label(b, f"unweather {Path(model_name).stem}")])
             for a, b in zip(seen, restored, strict=True)]
    before_after = out_dir / "before_after.mp4"
    _write_video(before_after, pairs)
    png = out_dir / "before_after.png"
    cv2.imwrite(str(png), cv2.cvtColor(pairs[len(pairs) // 2], cv2.COLOR_RGB2BGR))
    return DemoResult(degraded_path, restored_path, before_after, png, len(restored), float(stats.fps), model_name,
                      _psnr(seen, clean8), _psnr(restored, clean8))


def _handler(args: argparse.Namespace) -> int:
    from unweather.stream.signals import stop_on_signals

    stop = threading.Event()
    with stop_on_signals(stop):
        result = make_demo(args.output, frames=args.frames, size=_size(args.size), weather=args.weather,
                           model=args.model, device=args.device, seed=args.seed, stop_event=stop)
    print(f"model: {result.model}")
    print(f"{result.frames} frames restored at {result.fps:.1f} FPS (decode, model and encode, end to end)")
    print(f"PSNR against the clean clip: {result.psnr_degraded:.2f} dB with the weather, "
          f"{result.psnr_restored:.2f} dB restored")
    for path in (result.degraded, result.restored, result.before_after, result.png):
        print(f"wrote {path}")
    return 0
