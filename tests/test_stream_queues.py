"""The queues and buffer ring between stages, and the colour conversion, on their own."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest
import torch
from media import pattern

from unweather.stream.colour import ColourSpec, rgb_to_yuv420, spec_for, yuv420_to_rgb
from unweather.stream.queues import EOS, Aborted, BufferRing, FrameQueue, StallError


def test_live_queue_drops_the_oldest_and_counts_it() -> None:
    dropped = []
    q = FrameQueue("decode", 2, drop_oldest=True, on_drop=dropped.append)
    for i in range(5):
        q.put(i, timeout=0.1)  # never blocks
    assert q.dropped == 3 and dropped == [0, 1, 2]
    assert [q.get(0.1), q.get(0.1)] == [3, 4]
    assert q.max_depth == 2


def test_live_queue_never_drops_the_end_of_stream_marker() -> None:
    q = FrameQueue("decode", 1, drop_oldest=True)
    q.put(1, 0.1)
    q.put_eos()
    q.put(2, 0.1)
    items = [q.get(0.1) for _ in range(len(q))]
    assert EOS in items and 2 in items and 1 not in items


def test_a_held_queue_keeps_frames_then_release_cuts_the_oldest_by_cause() -> None:
    gone = []
    q = FrameQueue("decode", 2, drop_oldest=True, on_drop=gone.append)
    q.hold(5, "startup")
    for i in range(7):
        q.put(i, 0.1)  # never blocks: beyond 5 the oldest go, as start-up drops
    assert len(q) == 5 and gone == [0, 1] and q.drops == {"startup": 2}
    assert q.release() == 3 and gone == [0, 1, 2, 3, 4]
    assert q.drops == {"startup": 2, "overload": 3} and q.dropped == 5
    q.put(7, 0.1)
    assert [q.get(0.1), q.get(0.1)] == [6, 7] and q.drops["overload"] == 4
    assert q.max_depth == 5


def test_a_queue_held_without_a_limit_waits_for_room_instead_of_dropping() -> None:
    q = FrameQueue("upload", 1, drop_oldest=True)
    q.hold(None, "startup")
    q.put("a", 0.1)
    with pytest.raises(StallError):
        q.put("b", 0.05)
    threading.Timer(0.1, q.get, args=(1.0,)).start()
    q.put("b", 2.0)  # waits until the consumer takes "a"
    assert q.dropped == 0 and q.get(0.1) == "b"
    q.release()
    q.put("c", 0.1)
    q.put("d", 0.1)
    assert q.drops == {"overload": 1} and q.get(0.1) == "d"


def test_a_ring_made_smaller_lets_its_extra_buffers_go_when_released() -> None:
    made = []
    ring = BufferRing("input", 2, lambda key: made.append(key) or object())
    ring.resize(4)
    bufs = [ring.acquire("k", 0.1) for _ in range(4)]
    ring.resize(2)
    for buf in bufs:
        ring.release("k", buf)
    assert [ring.acquire("k", 0.1) for _ in range(2)] and len(made) == 4
    with pytest.raises(StallError):
        ring.acquire("k", 0.05)


def test_offline_queue_blocks_then_reports_a_stall() -> None:
    q = FrameQueue("encode", 1)
    q.put("a", 0.1)
    started = time.monotonic()
    with pytest.raises(StallError, match="encode"):
        q.put("b", 0.2)
    assert time.monotonic() - started >= 0.19
    assert q.dropped == 0
    with pytest.raises(StallError):
        FrameQueue("empty", 1).get(0.05)


def test_abort_wakes_a_waiting_stage_at_once() -> None:
    q = FrameQueue("infer", 1)
    errors = []

    def consumer() -> None:
        try:
            q.get(30.0)
        except Aborted as exc:
            errors.append(exc)

    t = threading.Thread(target=consumer)
    t.start()
    time.sleep(0.05)
    started = time.monotonic()
    q.abort()
    t.join(5)
    assert errors and time.monotonic() - started < 1.0
    with pytest.raises(Aborted):
        q.put(1, 1.0)


def test_buffer_ring_reuses_buffers_and_waits_for_a_free_one() -> None:
    made = []
    ring = BufferRing("input", 2, lambda key: made.append(key) or {"key": key})
    a = ring.acquire(("yuv", 4, 4), 0.1)
    b = ring.acquire(("yuv", 4, 4), 0.1)
    with pytest.raises(StallError):
        ring.acquire(("yuv", 4, 4), 0.05)
    ring.release(("yuv", 4, 4), a)
    assert ring.acquire(("yuv", 4, 4), 0.1) is a
    ring.release(("yuv", 4, 4), b)
    ring.acquire(("rgb", 2, 2), 0.1)  # another layout: the free buffer is rebuilt
    assert made == [("yuv", 4, 4), ("yuv", 4, 4), ("rgb", 2, 2)]


@pytest.mark.parametrize(("pix_fmt", "colorspace", "color_range", "matrix", "full"), [
    ("yuv420p", 1, 1, "bt709", False),
    ("yuv420p", 5, 1, "bt601", False),
    ("yuvj420p", 2, 0, "bt601", True),
    ("yuv420p", 9, 2, "bt2020", True),
])
def test_spec_follows_the_stream_tags(pix_fmt, colorspace, color_range, matrix, full) -> None:
    spec = spec_for(colorspace, color_range, pix_fmt, 360)
    assert (spec.matrix, spec.full_range) == (matrix, full)
    assert spec.colorspace == colorspace and spec.color_range == color_range


def test_unspecified_matrix_is_guessed_from_the_height_like_players_do() -> None:
    assert spec_for(2, 0, "yuv420p", 1080).matrix == "bt709"
    assert spec_for(2, 0, "yuv420p", 480).matrix == "bt601"


@pytest.mark.parametrize("full_range", [False, True])
def test_float_round_trip_keeps_mean_colour(full_range: bool) -> None:
    # Planes of natural-looking content made by FFmpeg, to RGB and back: the mean shifts far less
    # than a level (STYLE.md: about 0.02), where PyAV's default rgb24 round trip shifts about 1.4.
    spec = ColourSpec("bt709", full_range, colorspace=1, color_range=2 if full_range else 1)
    frame = av.VideoFrame.from_ndarray(pattern(3, 642, 362), format="rgb24").reformat(
        format="yuv420p", dst_colorspace="ITU709", dst_color_range="JPEG" if full_range else "MPEG")
    planes = [torch.from_numpy(np.frombuffer(p, np.uint8, count=p.line_size * p.height)
                               .reshape(p.height, p.line_size)[:, :p.width].copy())[None] for p in frame.planes]
    rgb = yuv420_to_rgb(*planes, spec)
    assert rgb.shape == (1, 3, 362, 642) and rgb.dtype == torch.float32
    back = rgb_to_yuv420(rgb, spec)
    for a, b in zip(planes, back):
        assert a.shape == b.shape
        assert abs(a.double().mean() - b.double().mean()) < 0.05
        # only samples outside the RGB gamut (at the saturated square's edges) are clamped
        assert (a != b).double().mean() < 0.01


def test_rgb_matches_the_bt709_formula() -> None:
    spec = ColourSpec("bt709", False)
    y = torch.tensor([[[16, 235], [126, 63]]], dtype=torch.uint8)
    u = torch.tensor([[[128]]], dtype=torch.uint8)
    v = torch.tensor([[[240]]], dtype=torch.uint8)
    rgb = yuv420_to_rgb(y, u, v, spec)
    yn = (y.float() - 16) / 219
    cr = (240 - 128) / 224
    r = (yn + 2 * (1 - 0.2126) * cr).clamp(0, 1)
    g = (yn - 0.2126 * 2 * (1 - 0.2126) * cr / 0.7152).clamp(0, 1)
    assert torch.allclose(rgb[:, 0], r, atol=1e-5) and torch.allclose(rgb[:, 1], g, atol=1e-5)
    assert torch.allclose(rgb[:, 2], yn.clamp(0, 1), atol=1e-5)
