"""One fact, one place: suffixes, what a URL is, reading an image, PSNR and atomic writes have one
definition each, used by every area."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from media import make_images

from unweather import media
from unweather.errors import UnweatherError


def test_suffixes_and_urls_have_one_definition():
    import unweather.sources_file
    import unweather.stream.multi
    import unweather.stream.network
    import unweather.stream.sinks
    import unweather.stream.sources
    import unweather.training.synth
    from unweather.cluster import sources as cluster_sources

    assert unweather.stream.sinks.IMAGE_SUFFIXES is media.IMAGE_SUFFIXES
    assert unweather.stream.sources.IMAGE_SUFFIXES is media.IMAGE_SUFFIXES
    assert unweather.training.synth.IMAGE_SUFFIXES is media.IMAGE_SUFFIXES
    assert unweather.stream.sinks.VIDEO_SUFFIXES is media.VIDEO_OUTPUTS
    assert cluster_sources.VIDEO_EXTENSIONS is media.VIDEO_EXTENSIONS
    assert unweather.stream.sources.is_url is media.is_url is unweather.sources_file.is_url is cluster_sources.is_url
    # Every video the pipeline writes is also one it reads.
    assert set(media.VIDEO_OUTPUTS) <= set(media.VIDEO_EXTENSIONS)
    for text, url, network in [("rtsp://u:p@cam/1", True, True), ("HTTP://x/a.mp4", True, True),
                               ("file:///tmp/a.mp4", True, False), ("ftp://x/a", True, False),
                               ("/videos/a://b.mp4", False, False), ("clip.mp4", False, False)]:
        assert media.is_url(text) is url, text
        assert unweather.stream.network.is_network_url(text) is network, text


@pytest.mark.parametrize("name, live, ext", [("a.mp4", False, ".mp4"), ("a.MOV", False, ".mov"),
                                             ("a.mp4", True, ".mkv"), ("a.ts", True, ".ts"),
                                             ("a.webm", False, ".mkv"), ("a.avi", False, ".mkv"),
                                             ("a.mkv", False, ".mkv")])
def test_outputs_are_containers_the_pipeline_writes(name, live, ext):
    from unweather.sources_file import Source, output_path
    from unweather.stream.runner import default_output

    assert media.video_output_extension(name, live) == ext
    assert ext in media.VIDEO_OUTPUTS
    assert default_output(f"/v/{name}", live) == f"/v/a.unweather{ext}"
    if not live:
        assert output_path(Source("a", f"/v/{name}"), "/out") == f"/out/a{ext}"


def test_images_are_read_one_way(tmp_path):
    from unweather.training import data, synth

    (path,) = make_images(tmp_path, count=1, size=(20, 10))
    rgb = media.read_rgb(path)
    assert rgb.shape == (10, 20, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert np.array_equal(data.read_image(path), rgb)
    assert np.array_equal(synth.to_uint8(synth.read_image(path)), rgb)
    (tmp_path / "notes.png").write_text("not an image")
    for read in (media.read_rgb, data.read_image, synth.read_image):
        with pytest.raises(UnweatherError, match=r"^cannot read the image .*notes\.png\.$"):
            read(tmp_path / "notes.png")


def test_validation_psnr_is_evals_psnr():
    from unweather.training import metrics, trainer

    assert trainer.psnr is metrics.psnr
    # The restored image is clamped, as every engine clamps its output: values outside [0, 1] cost nothing.
    target = torch.full((1, 3, 8, 8), 0.5)
    out = target.clone()
    out[..., 0, 0] = 1.7
    clamped = out.clamp(0, 1)
    assert metrics.psnr(out, target) == pytest.approx(metrics.psnr(clamped, target))
    mse = float(((clamped - target) ** 2).mean())
    assert metrics.psnr(out, target) == pytest.approx(10 * np.log10(1 / mse))


def test_validation_scores_match_eval_on_the_same_pairs(tmp_path):
    """`validate` during training and `evaluate` (`unweather eval`) give one number for one network."""
    from unweather.training.evaluate import evaluate
    from unweather.training.trainer import validate

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    deg = np.clip(gt.astype(int) + rng.integers(-40, 40, gt.shape), 0, 255).astype(np.uint8)
    paths = []
    for i in range(2):
        for kind, image in (("gt", gt[i]), ("in", deg[i])):
            path = tmp_path / f"{kind}{i}.png"
            cv2.imwrite(str(path), image[..., ::-1])
        paths.append((tmp_path / f"gt{i}.png", tmp_path / f"in{i}.png"))

    class Overshoot(torch.nn.Module):
        pad_multiple = 1

        def forward(self, x):
            return x * 1.3 - 0.1  # leaves [0, 1]: both must clamp alike

    class Same(Overshoot):
        def forward(self, x):
            return x

    def load(g: Path, d: Path) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(media.read_rgb(p)).permute(2, 0, 1)[None].float() / 255 for p in (g, d))

    clean = [(g, g) for g, _ in paths]  # input = ground truth: a perfect restoration is infinitely good
    for net, pairs in ((Overshoot(), paths), (Same(), clean)):
        valid = type("Valid", (), {"pairs": {"rain": [load(g, d) for g, d in pairs]}})()
        ours = validate(net, valid, torch.device("cpu"))["rain"]
        theirs = evaluate(lambda x, net=net: net(x), {"rain": pairs})["rain"].psnr_rgb
        assert ours == pytest.approx(theirs, abs=1e-4)


def test_stats_files_are_written_atomically_and_leave_nothing_behind(tmp_path):
    from unweather.stream.multi import _write_json
    from unweather.stream.runner import write_stats
    from unweather.stream.stats import RunStats

    write_stats(RunStats(frames_out=3), str(tmp_path / "s.json"))
    assert json.loads((tmp_path / "s.json").read_text())["frames"] == 3
    assert os.listdir(tmp_path) == ["s.json"]
    target = tmp_path / "taken"
    target.mkdir()  # a folder where the file should go: the rename fails
    for write in (lambda p: write_stats(RunStats(), p), lambda p: _write_json({"a": 1}, p)):
        with pytest.raises(UnweatherError, match="cannot write the stats file"):
            write(str(target))
        assert sorted(os.listdir(tmp_path)) == ["s.json", "taken"]  # no temporary file left
    assert Path(target).is_dir()
