"""YUV 4:2:0 <-> float RGB in torch, with the stream's own matrix and range.

Converting in float with explicit rounding and 2x2 chroma averaging keeps a decode -> RGB -> encode
round trip within about 0.02 levels of mean colour, where PyAV's default rgb24 conversions shift it
by about 1.4 (STYLE.md). Chroma is upsampled by repetition, so averaging it back is exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# FFmpeg's AVColorSpace values and the luma coefficients (Kr, Kb) of each matrix.
_MATRICES = {
    "bt709": (0.2126, 0.0722),
    "bt601": (0.299, 0.114),
    "smpte240m": (0.212, 0.087),
    "bt2020": (0.2627, 0.0593),
    "fcc": (0.30, 0.11),
}
_COLORSPACE_TO_MATRIX = {1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2
COLORSPACE_UNSPECIFIED = 2


@dataclass(frozen=True)
class ColourSpec:
    """How a stream's YUV samples map to RGB, and the tags to write on the output.

    Attributes:
        matrix: "bt601", "bt709", "bt2020", "smpte240m" or "fcc".
        full_range: samples use 0-255 (JPEG) rather than 16-235/240 (MPEG).
        colorspace, color_range, color_primaries, color_trc: FFmpeg tag values, copied to the output
            as the input had them (unspecified stays unspecified).
    """

    matrix: str = "bt601"
    full_range: bool = False
    colorspace: int = COLORSPACE_UNSPECIFIED
    color_range: int = RANGE_UNSPECIFIED
    color_primaries: int = 2
    color_trc: int = 2

    @property
    def coefficients(self) -> tuple[float, float]:
        """(Kr, Kb)."""
        return _MATRICES[self.matrix]

    def describe(self) -> str:
        """E.g. "bt709 limited"."""
        return f"{self.matrix} {'full' if self.full_range else 'limited'}"


def spec_for(colorspace: int, color_range: int, pix_fmt: str, height: int, primaries: int = 2,
             trc: int = 2) -> ColourSpec:
    """The `ColourSpec` of frames with these tags.

    An unspecified matrix is guessed as players do (BT.709 from 720 lines up, BT.601 below); an
    unspecified range is limited unless the pixel format is a JPEG one (yuvj*).
    """
    matrix = _COLORSPACE_TO_MATRIX.get(int(colorspace))
    if matrix is None:
        matrix = "bt709" if height >= 720 else "bt601"
    full = int(color_range) == RANGE_FULL or (int(color_range) == RANGE_UNSPECIFIED and pix_fmt.startswith("yuvj"))
    return ColourSpec(matrix=matrix, full_range=full, colorspace=int(colorspace), color_range=int(color_range),
                      color_primaries=int(primaries), color_trc=int(trc))


def rgb_output_spec(height: int) -> ColourSpec:
    """The spec written when the input was RGB (images): limited range, BT.709 from 720 lines, else BT.601."""
    if height >= 720:
        return ColourSpec("bt709", False, colorspace=1, color_range=RANGE_LIMITED, color_primaries=1, color_trc=1)
    return ColourSpec("bt601", False, colorspace=6, color_range=RANGE_LIMITED, color_primaries=6, color_trc=6)


def _scales(spec: ColourSpec) -> tuple[float, float, float]:
    """(luma scale, luma offset, chroma scale) in 8-bit levels."""
    return (255.0, 0.0, 255.0) if spec.full_range else (219.0, 16.0, 224.0)


def yuv420_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, spec: ColourSpec) -> torch.Tensor:
    """uint8 planes -> float RGB in [0, 1].

    Args:
        y: (N, H, W) luma; u, v: (N, ceil(H/2), ceil(W/2)) chroma.

    Returns:
        (N, 3, H, W) float32 on the planes' device.
    """
    h, w = y.shape[-2:]
    ys, yo, _ = _scales(spec)
    weight, bias = _to_rgb_weights(spec, str(y.device))
    # The chroma terms of R, G, B are computed at chroma resolution, then repeated 2x2.
    chroma = torch.stack((u, v), dim=1).float()
    terms = F.conv2d(chroma, weight, bias)
    terms = F.interpolate(terms, scale_factor=2, mode="nearest")[..., :h, :w]
    luma = y.float().unsqueeze(1).sub_(yo).div_(ys)
    return terms.add_(luma).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=32)
def _to_rgb_weights(spec: ColourSpec, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per matrix and device: building them per frame would copy to the GPU every time.
    _, _, cs = _scales(spec)
    kr, kb = spec.coefficients
    kg = 1.0 - kr - kb
    cr_r, cb_b = 2.0 * (1.0 - kr), 2.0 * (1.0 - kb)
    weight = torch.tensor([[0.0, cr_r], [-kb * cb_b / kg, -kr * cr_r / kg], [cb_b, 0.0]], dtype=torch.float32) / cs
    bias = -128.0 * weight.sum(dim=1)
    return weight[:, :, None, None].to(device), bias.to(device)


@functools.lru_cache(maxsize=32)
def _to_yuv_weights(spec: ColourSpec, device: str) -> tuple[torch.Tensor, ...]:
    ys, yo, cs = _scales(spec)
    kr, kb = spec.coefficients
    luma = torch.tensor([kr, 1.0 - kr - kb, kb], dtype=torch.float32)
    cb = (torch.tensor([0.0, 0.0, 1.0]) - luma) / (2.0 * (1.0 - kb))
    cr = (torch.tensor([1.0, 0.0, 0.0]) - luma) / (2.0 * (1.0 - kr))
    tensors = ((luma * ys)[None, :, None, None], torch.tensor([yo]),
               (torch.stack((cb, cr)) * cs)[:, :, None, None], torch.tensor([128.0, 128.0]))
    return tuple(t.to(device) for t in tensors)


def rgb_to_yuv420(rgb: torch.Tensor, spec: ColourSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float RGB (N, 3, H, W), clamped to [0, 1] -> uint8 planes Y (N, H, W), U and V (N, ceil(H/2), ceil(W/2)).

    Chroma is the 2x2 average of the per-pixel chroma (edge pixels repeated for odd sizes), rounded
    once; since chroma is linear in RGB, it is computed from the 2x2 average of RGB.
    """
    luma_w, luma_b, chroma_w, chroma_b = _to_yuv_weights(spec, str(rgb.device))
    rgb = rgb.float().clamp(0.0, 1.0)
    y = F.conv2d(rgb, luma_w, luma_b)
    h, w = rgb.shape[-2:]
    if h % 2 or w % 2:
        rgb = F.pad(rgb, (0, w % 2, 0, h % 2), mode="replicate")
    pooled = F.avg_pool2d(rgb, 2)
    c = F.conv2d(pooled, chroma_w, chroma_b)
    y = y.round_().clamp_(0.0, 255.0).to(torch.uint8)[:, 0]
    c = c.round_().clamp_(0.0, 255.0).to(torch.uint8)
    return y, c[:, 0], c[:, 1]


def rgb8_to_float(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return rgb.permute(0, 3, 1, 2).float().div_(255.0)


def float_to_rgb8(rgb: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) -> uint8 (N, H, W, 3), rounded."""
    return rgb.float().clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
