"""`unweather eval` and `load_meta` on a tiny synthetic meta folder."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from unweather.cli import main
from unweather.errors import UnweatherError
from unweather.training import synth
from unweather.training.evaluate import evaluate, load_meta, markdown_table


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    photos = []
    for i in range(3):
        rng = np.random.default_rng(i)
        img = np.clip(0.4 + 0.2 * rng.standard_normal((60, 70, 3)), 0, 1).astype(np.float32)
        photos.append(root / f"p{i}.png")
        synth.write_image(photos[-1], img)
    synth.synthesize(photos, root / "synth", crops=2, size=24, seed=1, valid_fraction=0.34, clean_pairs=1)
    return root / "synth"


def test_load_meta_names_data_sets_and_resolves_paths(meta_dir, tmp_path):
    data = load_meta(meta_dir, "valid")
    assert list(data) == ["clean", "haze", "rain", "snow"]
    assert all(len(pairs) == 2 for name, pairs in data.items() if name != "clean")
    gt, degraded = data["rain"][0]
    assert gt.is_file() and degraded.is_file() and gt.parent.name == "gt"
    # the release's layout: files directly in the folder, names such as CSD_meta_train.json
    (tmp_path / "CSD_meta_train.json").write_text(json.dumps([["a/gt.png", "a/in.png"]]))
    assert load_meta(tmp_path, "train", check=False) == {"CSD": [(tmp_path / "a/gt.png", tmp_path / "a/in.png")]}
    with pytest.raises(UnweatherError, match="missing, e.g."):
        load_meta(tmp_path, "train")


def test_eval_identity_scores_the_degraded_input(meta_dir, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["eval", "--model", "identity", "--meta-dir", str(meta_dir), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| data set | pairs | input PSNR RGB | PSNR RGB |" in table and "PSNR Y" in table and "SSIM Y" in table
    scores = json.loads(out.read_text())
    assert scores["model"] == "identity" and scores["split"] == "valid"
    for name, s in scores["datasets"].items():
        for metric in ("psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y"):
            assert s[metric] == s[f"input_{metric}"], (name, metric)
        if name == "clean":
            assert s["psnr_rgb"] == "inf" and s["ssim_rgb"] == pytest.approx(1.0)
        else:
            assert 5 < s["psnr_rgb"] < 60 and s["psnr_rgb"] != pytest.approx(s["psnr_y"], abs=1e-3)


def test_outputs_are_scored_against_their_own_ground_truth(meta_dir):
    data = {name: pairs for name, pairs in load_meta(meta_dir, "valid").items() if name != "clean"}
    truth = {}
    for pairs in data.values():
        for gt, degraded in pairs:
            truth[degraded.read_bytes()] = gt

    def load(path) -> torch.Tensor:
        return torch.from_numpy(synth.read_image(path)).permute(2, 0, 1)[None]

    def oracle(x: torch.Tensor) -> torch.Tensor:
        # find the pair by the input's pixels: a perfect restorer
        for degraded_bytes, gt in truth.items():
            if torch.equal(load_from_bytes(degraded_bytes), x):
                return load(gt)
        raise AssertionError("input not found")

    def load_from_bytes(data: bytes) -> torch.Tensor:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
        return torch.from_numpy(img.copy()).permute(2, 0, 1)[None]

    perfect = evaluate(oracle, data)
    noisy = evaluate(lambda x: x + 0.05 * torch.randn_like(x), data)
    for name, s in perfect.items():
        assert s.psnr_rgb > 100 and s.psnr_y > 100 and s.ssim_rgb == pytest.approx(1.0)
        assert noisy[name].psnr_rgb < s.input_psnr_rgb
    clamped = evaluate(lambda x: x + 2.0, {"rain": data["rain"][:1]})["rain"]
    white = evaluate(lambda x: torch.ones_like(x), {"rain": data["rain"][:1]})["rain"]
    assert clamped.psnr_rgb == pytest.approx(white.psnr_rgb)  # outputs are clamped to [0, 1]
    assert "| rain | 2 |" in markdown_table(perfect)


def test_eval_bad_meta_dir_and_missing_images_are_one_line_errors(meta_dir, tmp_path, capsys):
    assert main(["eval", "--model", "identity", "--meta-dir", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "valid").mkdir()
    assert main(["eval", "--model", "identity", "--meta-dir", str(tmp_path)]) == 1
    assert "no *_meta_valid.json" in capsys.readouterr().err
    (tmp_path / "valid" / "x_meta_valid.json").write_text('{"not": "a list"}')
    assert main(["eval", "--model", "identity", "--meta-dir", str(tmp_path)]) == 1
    assert "not a non-empty list" in capsys.readouterr().err
    (tmp_path / "valid" / "x_meta_valid.json").write_text(json.dumps([["gt/1.png", "in/1.png"]]))
    assert main(["eval", "--model", "identity", "--meta-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("unweather: error: 2 images") and "gt/1.png" in err and "\n" not in err
