"""One stream's state for a video network: aligned with the camera's motion, reset where history is void.

A stream (a file, a camera, a chunk of an archive) owns one `VideoSession`; frames go through it in
order. Before each frame the state is moved with the global motion from the previous frame
(`unweather.motion`), and emptied on a cut to another scene, and by the caller on a reconnection, a
seek or a gap in timestamps (`reset`). Frame networks pass straight through to the engine.
"""

from __future__ import annotations

import torch

from unweather import motion
from unweather.engine.base import Engine


class VideoSession:
    """Runs `engine` over one stream's frames in order, carrying a video network's state.

    Args:
        engine: an opened engine; stateless ones are simply called.
        cut_threshold: `motion.Motion.is_cut`'s threshold.

    Attributes:
        resets: how many times the state was emptied, by cause ("cut", or the caller's reason).
    """

    def __init__(self, engine: Engine, cut_threshold: float = 1.5) -> None:
        self.engine = engine
        self.cut_threshold = cut_threshold
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self._prev_grey = None
        self._pending = motion.PendingMotion()
        self.resets: dict[str, int] = {}

    @property
    def stateful(self) -> bool:
        """Whether the engine runs a video network."""
        return bool(getattr(self.engine, "stateful", False))

    def reset(self, reason: str = "reset") -> None:
        """Forget the history (a reconnection, a seek, a gap in timestamps, a new scene)."""
        if self.state is not None or self._prev_grey is not None:
            self.resets[reason] = self.resets.get(reason, 0) + 1
        self.state = None
        self._prev_grey = None
        self._pending = motion.PendingMotion()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Restore a batch (N, 3, H, W) of consecutive frames of this stream, in order."""
        if not self.stateful:
            return self.engine(frames)
        return torch.cat([self._one(frame[None]) for frame in frames.unbind(0)])

    def _one(self, frame: torch.Tensor) -> torch.Tensor:
        grey = motion.reduced_grey(frame[0].permute(1, 2, 0).float().cpu().numpy())
        if self.state is not None and self.state[0].shape[-2:] != frame.shape[-2:]:
            self.reset("size")
        if self.state is not None and self._prev_grey is not None:
            moved = motion.estimate(self._prev_grey, grey, frame.shape[-1])
            if moved.is_cut(self.cut_threshold):
                self.reset("cut")
            else:
                dx, dy = self._pending.add(moved.dx, moved.dy)
                if dx or dy:
                    self.state = motion.warp_state(*self.state, dx, dy)
        if self.state is None:
            self.state = self.engine.empty_state(frame)
        self._prev_grey = grey
        out, self.state = self.engine.step(frame, self.state)
        return out
