"""The video student, its state alignment and its clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unweather import motion
from unweather.models import build, load_checkpoint, save
from unweather.models.video import VideoStudent
from unweather.training import video as V

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2.0)


@pytest.mark.parametrize("dx,dy", [(5.0, 2.0), (1.5, 0.5), (0.7, -3.3), (0.0, 0.0)])
def test_global_motion_is_found_to_a_tenth_of_a_pixel(dx, dy):
    import cv2

    big = _texture(400, 700)
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(big, m, (700, 400), flags=cv2.INTER_CUBIC)
    a, b = big[20:380, 20:660], moved[20:380, 20:660]
    est = motion.estimate(motion.reduced_grey(a), motion.reduced_grey(b), 640)
    assert abs(est.dx - dx) < 0.1 and abs(est.dy - dy) < 0.1
    assert not est.is_cut()


def test_warped_state_lines_up_with_the_moved_scene():
    import cv2

    big = _texture(400, 700, seed=1)
    m = np.float32([[1, 0, 3.0], [0, 1, -2.0]])
    moved = cv2.warpAffine(big, m, (700, 400), flags=cv2.INTER_CUBIC)
    a, b = big[20:380, 20:660], moved[20:380, 20:660]
    bg = torch.from_numpy(a).permute(2, 0, 1)[None]
    weight = torch.ones(1, 1, 360, 640)
    new_bg, new_weight = motion.warp_state(bg, weight, 3.0, -2.0)
    target = torch.from_numpy(b).permute(2, 0, 1)[None]
    inner = (..., slice(8, -8), slice(8, -8))
    assert (new_bg - target)[inner].abs().mean() < 0.1 * (bg - target)[inner].abs().mean()
    # What came into view has no history: the left columns and the bottom rows.
    assert float(new_weight[..., :, :2].max()) < 0.5 and float(new_weight[..., -1:, :].max()) < 0.5
    assert float(new_weight[inner].min()) > 0.99


def _grid_sample_warp(bg: torch.Tensor, weight: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor):
    """The translation done the general way: an affine grid, bicubic (border) and bilinear (zeros) sampling."""
    import torch.nn.functional as F

    n, _, h, w = bg.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = -2.0 * dx / w, -2.0 * dy / h
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return (F.grid_sample(bg, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 1),
            F.grid_sample(weight, grid, mode="bilinear", padding_mode="zeros", align_corners=False))


@pytest.mark.parametrize("dx,dy", [(1.3, 0.2), (-2.7, 3.5), (0.0, -0.4), (5.0, 0.0), (0.5, -1.25),
                                   (70.0, 3.0), (-90.5, -2.2), (10.0, -400.0)])
def test_state_warp_matches_bicubic_and_bilinear_grid_sampling(dx, dy):
    gen = torch.Generator().manual_seed(3)
    bg, weight = torch.rand(2, 6, 40, 64, generator=gen), torch.rand(2, 1, 40, 64, generator=gen)
    want = _grid_sample_warp(bg, weight, torch.tensor([dx, dx]), torch.tensor([dy, dy]))
    got = motion.warp_state(bg, weight, dx, dy)
    for a, b in zip(got, want):
        assert a.shape == b.shape and float((a - b).abs().max()) < 1e-4


@pytest.mark.parametrize("dx,dy", [(1.3, 0.2), (-0.37, 2.01), (64.5, -3.0)])
def test_training_and_stream_move_the_state_alike(dx, dy):
    # Training moves a state that carries gradients (a depthwise convolution); a stream moves a plain one
    # (OpenCV, plane by plane, separably): the two must agree, or the video student runs on states it never
    # trained on.
    gen = torch.Generator().manual_seed(5)
    bg, weight = torch.rand(1, 6, 48, 80, generator=gen), torch.rand(1, 1, 48, 80, generator=gen)
    plain = motion.warp_state(bg, weight, dx, dy)
    tracked = motion.warp_state(bg.clone().requires_grad_(True), weight.clone().requires_grad_(True), dx, dy)
    assert tracked[0].requires_grad and not plain[0].requires_grad
    for a, b in zip(plain, tracked):
        assert float((a - b.detach()).abs().max()) < 1e-5


def test_state_warp_moves_each_clip_of_a_batch_by_its_own_motion():
    gen = torch.Generator().manual_seed(4)
    bg, weight = torch.rand(3, 6, 32, 48, generator=gen), torch.rand(3, 1, 32, 48, generator=gen)
    dx, dy = torch.tensor([0.5, -1.25, 0.0]), torch.tensor([2.0, 0.1, 0.0])
    for a, b in zip(motion.warp_state(bg, weight, dx, dy), _grid_sample_warp(bg, weight, dx, dy)):
        assert float((a - b).abs().max()) < 1e-4


def test_a_cut_from_day_to_night_is_a_cut_and_a_still_scene_is_not():
    a, b = _texture(360, 640, seed=2), 0.15 * _texture(360, 640, seed=3)
    cut = motion.estimate(motion.reduced_grey(a), motion.reduced_grey(b), 640)
    same = motion.estimate(motion.reduced_grey(a), motion.reduced_grey(a), 640)
    assert cut.change > same.change
    assert cut.is_cut() and not same.is_cut()


def test_video_student_with_no_history_is_its_frame_estimate_and_keeps_state_shapes():
    model = build("video_small").eval()
    x = torch.rand(2, 3, 32, 48)
    bg, weight = VideoStudent.initial_state(x)
    with torch.no_grad():
        y, bg2, w2 = model(x, bg, weight)
        f = model.frame(x)
    assert y.shape == x.shape and bg2.shape == (2, model.state_channels, 32, 48) and w2.shape == (2, 1, 32, 48)
    # With no history the memory starts from the frame student's estimate, moved at most one step towards
    # the input, and the output lies between the frame student's output and the input.
    step = model.fusion.config.memory_step
    assert float((bg2[:, 3:] - f).abs().max()) <= step + 1e-5
    assert float((bg2[:, 3:] - x).abs().max()) <= float((f - x).abs().max()) + 1e-5
    lo, hi = torch.minimum(f, x) - 1e-5, torch.maximum(f, x) + 1e-5
    assert bool(((y >= lo) & (y <= hi)).all())
    assert float(w2.min()) > 0 and float(w2.max()) <= model.fusion.config.max_weight


def test_the_folded_first_convolutions_see_the_maps_differences():
    # The fusion's first convolutions take the maps and their differences; it folds the differences into
    # the weights. The same trust maps must come from the differences written out.
    import torch.nn.functional as F

    torch.manual_seed(3)
    fusion = build("video_small").fusion.eval()
    with torch.no_grad():
        for conv in (fusion.context[0], fusion.detail[-1], fusion.context[-1]):
            conv.weight.normal_()
    x, f, bg, xm = (torch.rand(1, 3, 32, 48) for _ in range(4))
    weight = torch.full((1, 1, 32, 48), 16.0)
    e = weight / fusion.config.max_weight
    s = [F.avg_pool2d(t, 4) for t in (x, f, bg, xm, e)]
    small = torch.cat([*s[:4], s[0] - s[1], s[0] - s[2], s[1] - s[2], s[0] - s[3], s[1] - s[3], s[2] - s[3], s[4]], 1)
    full = torch.cat([x - f, x - bg, x - xm, f - xm, e], 1)
    with torch.no_grad():
        logits = F.interpolate(fusion.context(small), scale_factor=4.0, mode="bilinear") + fusion.detail(full)
        p = torch.softmax(logits[:, 0:3], dim=1)
        lam, omega = torch.sigmoid(logits[:, 3:4]), 0.125 + 0.875 * torch.sigmoid(logits[:, 4:5])
        g = p[:, 0:1] * x + p[:, 1:2] * f + p[:, 2:3] * xm
        expected = (lam * weight * bg + omega * g) / (lam * weight + omega)
        y, _, _ = fusion(x, f, torch.cat([bg, xm], 1), weight)
    assert float((y - expected).abs().max()) < 1e-5
    assert float((expected - g).abs().max()) > 1e-2  # the history and the trust maps matter here


def test_history_of_a_still_scene_pulls_the_output_towards_it():
    model = build("video_small").eval()
    clean = torch.rand(1, 3, 32, 32)
    noisy = (clean + 0.3 * torch.randn_like(clean)).clamp(0, 1)
    bg, weight = torch.cat([clean, clean], 1), torch.full((1, 1, 32, 32), 8.0)
    with torch.no_grad():
        with_history, _, _ = model(noisy, bg, weight)
        without, _, _ = model(noisy, *VideoStudent.initial_state(noisy))
    assert (with_history - clean).abs().mean() < 0.5 * (without - clean).abs().mean()


def test_video_checkpoint_round_trip(tmp_path):
    model = build("video_small", frame_options={"upsample": "bilinear"}).eval()
    path = tmp_path / "v.safetensors"
    save(model, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, VideoStudent) and loaded.frame.config.upsample == "bilinear"
    x = torch.rand(1, 3, 32, 32)
    state = VideoStudent.initial_state(x)
    with torch.no_grad():
        for a, b in zip(model(x, *state), loaded(x, *state)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", V.MOTIONS)
def test_clips_follow_their_camera_path(kind):
    rng = np.random.default_rng(0)
    photo = (_texture(200, 300, seed=4) * 255).astype(np.uint8)
    spec = V.ClipSpec(kind, "snow", "particles", "medium", 2.0 if kind == "pan" else 0.02)
    gt = V.clean_clip(photo, spec, 5, (64, 96), rng)
    x = V.weather_clip(gt, spec, rng)
    assert gt.shape == x.shape == (5, 64, 96, 3)
    step = np.abs(gt[1:] - gt[:-1]).mean()
    if kind == "still":
        assert step == 0.0
    else:
        assert step > 0.0
    # Snow is new in every frame: the inputs differ from each other where the clean frames do not.
    assert np.abs(x[1:] - x[:-1]).mean() > step


def test_a_short_training_run_resumes_and_writes_a_loadable_network(tmp_path):
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        cv2.imwrite(str(photos / f"p{i}.png"), (_texture(96, 128, seed=10 + i) * 255).astype(np.uint8))
    frame = build("student_small")
    init = tmp_path / "frame.safetensors"
    save(frame, init)
    cfg = V.VideoTrainConfig(images=[str(photos)], init=str(init), run_dir=str(tmp_path / "run"),
                             out=str(tmp_path / "video.safetensors"), steps=4, batch=1, frames=3, crop=32,
                             save_every=2, val_images=str(photos), val_every=2)
    V.train_video(cfg, log=lambda *_: None)
    assert (tmp_path / "run" / "best.safetensors").is_file()
    net = load_checkpoint(cfg.out)
    assert isinstance(net, VideoStudent)
    # The frame student stayed frozen.
    for key, value in frame.state_dict().items():
        assert torch.equal(net.frame.state_dict()[key], value)
    longer = V.VideoTrainConfig(**{**cfg.__dict__, "steps": 6})
    with pytest.raises(Exception, match="steps"):
        V.train_video(longer, resume=True, log=lambda *_: None)
    lines: list[str] = []
    V.train_video(cfg, resume=True, log=lines.append)
    assert any("resumed" in line and "step 4" in line for line in lines)


def test_every_parameter_of_the_fusion_gets_a_gradient():
    model = build("video_small")
    x = torch.rand(2, 3, 32, 32)
    bg, weight = torch.rand(2, 6, 32, 32), torch.full((2, 1, 32, 32), 4.0)
    y, new_bg, new_weight = model(x, bg, weight)
    ((y - x.flip(-1)).abs().mean() + new_weight.mean() * 1e-3 + new_bg[:, 3:].mean()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_the_input_memory_keeps_what_stays_and_barely_follows_what_flashes():
    model = build("video_small").eval()
    scene = 0.5 * torch.rand(1, 3, 32, 32)
    step = model.fusion.config.memory_step
    with torch.no_grad():
        _, state, weight = model(scene, *model.initial_state(scene))
        for _ in range(int(2 / step)):  # a still scene: the memory reaches the input and stays
            _, state, weight = model(scene, state, weight)
        assert float((state[:, 3:] - scene).abs().max()) < 1e-5
        flash = scene.clone()
        flash[..., 10:12, 10:12] = 1.0
        _, state, _ = model(flash, state, weight)
    moved = (state[:, 3:] - scene).abs()
    assert float(moved.max()) <= step + 1e-6
    assert float(moved[..., 10:12, 10:12].min()) > 0 and float(moved[..., 16:, 16:].max()) < 1e-5


def test_a_fusion_trained_over_one_frame_network_is_built_around_another(tmp_path):
    torch.manual_seed(5)
    small = build("video_small")
    with torch.no_grad():
        for p in small.fusion.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save(small, tmp_path / "video.safetensors")
    save(build("student_base"), tmp_path / "quality.safetensors")
    cfg = V.VideoTrainConfig(images=[tmp_path], init=str(tmp_path / "video.safetensors"),
                             frame=str(tmp_path / "quality.safetensors"), arch="video_base",
                             run_dir=str(tmp_path / "run"), out=str(tmp_path / "out.safetensors"))
    model = V.build_video(cfg).eval()
    frame = load_checkpoint(tmp_path / "quality.safetensors")
    assert model.arch == "video_base" and model.frame.arch == "student_base"
    for got, want in zip(model.fusion.state_dict().values(), small.fusion.state_dict().values()):
        assert torch.equal(got, want)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        y, _, _ = model(x, *model.initial_state(x))
        # The new frame network's estimate, fused as the old fusion does it.
        assert torch.allclose(y, small.fusion(x, frame(x), *model.initial_state(x))[0], atol=1e-5)
    # Saved and loaded again, it is the same network.
    save(model, tmp_path / "out.safetensors")
    again = load_checkpoint(tmp_path / "out.safetensors")
    with torch.no_grad():
        assert torch.allclose(again(x, *model.initial_state(x))[0], y, atol=1e-3)
