"""A motion-adaptive recursive filter over restored frames, for still cameras.

A network that restores frame by frame leaves a little of the moving weather, different in every
frame, which a viewer sees as shimmer. Where a pixel barely changes from the previous output it is
blended with it (`strength`); where it changes by more than `threshold` (something moved) it is
taken as it is, so motion is not smeared.
"""

from __future__ import annotations

import torch

from unweather.errors import UnweatherError


def check_strength(strength: float) -> None:
    """Raise UnweatherError unless `strength` is in [0, 1)."""
    if not 0.0 <= strength < 1.0:
        raise UnweatherError(f"temporal strength must be at least 0 and below 1, not {strength}.")


class TemporalFilter:
    """Blend each restored frame with the previous output where the two nearly agree.

    Args:
        strength: weight of the previous output on an unchanged pixel, in [0, 1); 0 turns it off.
        threshold: mean absolute RGB change (0-1 scale) at and above which a pixel is taken as is.
    """

    def __init__(self, strength: float, threshold: float = 0.2) -> None:
        check_strength(strength)
        if not threshold > 0.0:
            raise UnweatherError(f"temporal threshold must be positive, not {threshold}.")
        self.strength = strength
        self.threshold = threshold
        self.previous: torch.Tensor | None = None

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Filter a batch (N, 3, H, W) of consecutive frames of one stream, in order."""
        if self.strength == 0.0:
            return frames
        out = []
        for frame in frames.unbind(0):
            previous = self.previous
            if previous is not None and previous.shape == frame.shape and previous.dtype == frame.dtype:
                change = (frame - previous).abs().mean(dim=0, keepdim=True)
                weight = self.strength * (1.0 - change / self.threshold).clamp(min=0.0)
                frame = torch.lerp(frame, previous, weight)
            out.append(frame)
            self.previous = frame
        return torch.stack(out)

    def reset(self) -> None:
        """Forget the previous frame (a new scene, or a reconnected camera)."""
        self.previous = None


def video_model_refusal(model: str, default: bool) -> str:
    """The one line that refuses `--temporal` with a video model (`default`: the model was not named)."""
    which = f"the default model for videos and streams, {model!r}," if default else f"{model!r}"
    return (f"--temporal smooths a frame model's output, and {which} is a video model that carries its own "
            "history from frame to frame: drop --temporal, or choose a frame model (--model fast or quality).")
