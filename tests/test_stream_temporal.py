"""`--temporal`: the still-camera filter over restored frames, alone and through `unweather run`."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from unweather.cli import main
from unweather.errors import UnweatherError
from unweather.stream.temporal import TemporalFilter


def _shimmering_scene(frames: int = 12, seed: int = 0) -> torch.Tensor:
    """A still scene with small noise that changes every frame (what residual rain looks like)."""
    rng = np.random.default_rng(seed)
    scene = np.linspace(0.2, 0.8, 64 * 48, dtype=np.float32).reshape(1, 1, 48, 64).repeat(3, axis=1)
    noise = rng.normal(0.0, 0.03, size=(frames, 3, 48, 64)).astype(np.float32)
    return torch.from_numpy(scene + noise)


def _flicker(frames: torch.Tensor) -> float:
    return float((frames[1:] - frames[:-1]).abs().mean())


def test_small_changes_are_smoothed_in_order_across_batches() -> None:
    clip = _shimmering_scene()
    whole = TemporalFilter(0.8)(clip)
    assert _flicker(whole) < 0.4 * _flicker(clip)
    # Batches of one stream are filtered as one sequence.
    split = TemporalFilter(0.8)
    parts = torch.cat([split(clip[:5]), split(clip[5:])])
    assert torch.allclose(parts, whole)


def test_large_changes_pass_unchanged_and_zero_strength_is_off() -> None:
    clip = _shimmering_scene(frames=2)
    cut = torch.cat([clip[:1], clip[1:] + 0.5])  # every pixel changes by far more than the threshold
    out = TemporalFilter(0.9, threshold=0.2)(cut)
    assert torch.equal(out[1], cut[1])
    assert torch.equal(TemporalFilter(0.0)(clip), clip)


def test_a_new_frame_size_starts_afresh() -> None:
    smooth = TemporalFilter(0.8)
    smooth(torch.zeros(1, 3, 8, 8))
    frame = torch.full((1, 3, 4, 4), 0.1)
    assert torch.equal(smooth(frame), frame)


@pytest.mark.parametrize("strength", [-0.1, 1.0, 2.0])
def test_strength_out_of_range_is_refused(strength: float) -> None:
    with pytest.raises(UnweatherError, match="temporal"):
        TemporalFilter(strength)


def _write_shimmering_video(path, frames: int = 20) -> None:
    clip = (_shimmering_scene(frames).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        stream.options = {"crf": "0"}
        for image in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _decoded(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float32)


def test_run_with_temporal_steadies_a_still_clip(tmp_path) -> None:
    src = tmp_path / "still.mp4"
    _write_shimmering_video(src)
    plain, steady = tmp_path / "plain.mkv", tmp_path / "steady.mkv"
    assert main(["run", str(src), "-o", str(plain), "--model", "identity", "-q", "--crf", "0"]) == 0
    assert main(["run", str(src), "-o", str(steady), "--model", "identity", "-q", "--crf", "0",
                 "--temporal", "0.8"]) == 0
    a, b = _decoded(plain), _decoded(steady)
    assert len(a) == len(b) == 20
    flicker_a = np.abs(np.diff(a, axis=0)).mean()
    flicker_b = np.abs(np.diff(b, axis=0)).mean()
    assert flicker_b < 0.5 * flicker_a, (flicker_a, flicker_b)
    # The scene itself is kept: the mean picture barely moves.
    assert abs(a.mean() - b.mean()) < 1.0


def test_run_refuses_a_bad_temporal_value(tmp_path, capsys) -> None:
    src = tmp_path / "still.mp4"
    _write_shimmering_video(src, frames=2)
    assert main(["run", str(src), "-o", str(tmp_path / "o.mkv"), "--model", "identity", "-q",
                 "--temporal", "1.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "temporal" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o.mkv").exists()
