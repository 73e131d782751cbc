"""Render the bundled check photo under rain, snow and haze: the frames the INT8 accuracy gate checks besides it.

    python scripts/check_weather.py        # writes unweather/assets/check_{rain,snow,haze}.jpg

The weather is the training renderer's (`unweather.training.synth.add_weather`) with parameters
drawn from its default ranges by a fixed seed per weather, so the files are reproducible. A clean
photo alone is a weak gate: an INT8 graph that kept 50 dB on it lost 30 dB on rainy, snowy and hazy
frames (benchmarks/int8.py), because weather moves activations to where INT8 steps are coarse.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = {"rain": 1, "snow": 2, "haze": 3}
QUALITY = 92


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import cv2
    import numpy as np

    from unweather.training.synth import add_weather, read_image, to_uint8

    assets = ROOT / "unweather" / "assets"
    photo = read_image(assets / "check_photo.jpg")
    for weather, seed in SEEDS.items():
        image = to_uint8(add_weather(photo, weather, np.random.default_rng(seed)))
        path = assets / f"check_{weather}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
