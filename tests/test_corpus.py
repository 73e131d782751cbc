"""scripts/fetch_corpus.py on packages built here (nothing is downloaded); the form of scripts/corpus.tsv."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media import fake_deb

cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fetch_corpus.py"
MANIFEST = ROOT / "scripts" / "corpus.tsv"
HEADER = "package\tversion\tsource\tpath\tlicence\tsplit\ttags\tnote\n"

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")


def _module():
    spec = importlib.util.spec_from_file_location("fetch_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(ext: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, img)
    assert ok
    return data.tobytes()


@pytest.fixture
def no_network(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose apt-get and pip only leave a mark: nothing may be downloaded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mark = tmp_path / "downloaded"
    for tool in ("apt-get", "pip"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> '{mark}'\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}, mark


def _run(env: dict[str, str], *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=env, capture_output=True,
                          text=True, check=False, timeout=120)


@needs_dpkg
def test_fetch_extracts_listed_photos_records_them_and_is_idempotent(tmp_path, no_network):
    env, mark = no_network
    lake, sky = _image(".jpg", (40, 30), 1), _image(".png", (24, 36), 2)
    cache = fake_deb(tmp_path, "pics", "1:1.0-1", {
        "usr/share/pics/Lake.JPG": lake,
        "usr/share/pics/sub dir/Night Sky.png": sky,
        "usr/share/pics/Unlisted.jpg": _image(".jpg", (8, 8), 3),
    })
    manifest = tmp_path / "corpus.tsv"
    manifest.write_text(HEADER
                        + "pics\t1:1.0-1\tdeb\tusr/share/pics/Lake.JPG\tGPL-2+\ttrain\tday,water\ta lake\n"
                        + "pics\t1:1.0-1\tdeb\tusr/share/pics/sub dir/Night Sky.png\tCC0-1.0\tvalid\tnight"
                        + "\tstars\n")
    out = tmp_path / "out"
    result = _run(env, out, "--manifest", manifest, "--cache", cache)
    assert result.returncode == 0, result.stderr
    assert not mark.exists(), mark.read_text()
    lake_file = out / "train" / "pics__usr_share_pics_Lake.jpg"
    sky_file = out / "valid" / "pics__usr_share_pics_sub_dir_Night_Sky.png"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "corpus.json", "train/pics__usr_share_pics_Lake.jpg",
        "valid/pics__usr_share_pics_sub_dir_Night_Sky.png"]
    assert lake_file.read_bytes() == lake and sky_file.read_bytes() == sky

    index = json.loads((out / "corpus.json").read_text())
    photos = {p["path"]: p for p in index["photos"]}
    assert set(photos) == {"usr/share/pics/Lake.JPG", "usr/share/pics/sub dir/Night Sky.png"}
    first = photos["usr/share/pics/Lake.JPG"]
    assert first == {**first, "package": "pics", "version": "1:1.0-1", "licence": "GPL-2+", "split": "train",
                     "tags": ["day", "water"], "width": 40, "height": 30,
                     "file": "train/pics__usr_share_pics_Lake.jpg",
                     "sha256": hashlib.sha256(lake).hexdigest()}
    second = photos["usr/share/pics/sub dir/Night Sky.png"]
    assert (second["split"], second["tags"], second["width"], second["height"], second["licence"]) == \
        ("valid", ["night"], 24, 36, "CC0-1.0")
    assert second["sha256"] == hashlib.sha256(sky).hexdigest()

    # Again: everything is in place, so it only verifies; nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in (lake_file, sky_file, out / "corpus.json")}
    shutil.rmtree(cache)  # and the package is no longer needed
    again = _run(env, out, "--manifest", manifest, "--cache", tmp_path / "nowhere")
    assert again.returncode == 0, again.stderr
    assert "0 extracted, 2 verified" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert not mark.exists()

    # A damaged photo is noticed; with the package gone, that is one line of error, not a traceback.
    lake_file.write_bytes(b"damaged")
    broken = _run(env, out, "--manifest", manifest, "--cache", tmp_path / "nowhere")
    assert broken.returncode == 1
    assert len(broken.stderr.strip().splitlines()) >= 1 and "Traceback" not in broken.stderr
    assert broken.stderr.strip().splitlines()[-1].startswith("error: ")


@needs_dpkg
def test_split_selection_and_missing_path(tmp_path, no_network):
    env, _ = no_network
    cache = fake_deb(tmp_path, "pics", "2.0", {"usr/share/pics/a.png": _image(".png", (16, 16), 4),
                                               "usr/share/pics/b.jpg": _image(".jpg", (16, 16), 5)})
    manifest = tmp_path / "corpus.tsv"
    manifest.write_text(HEADER + "pics\t2.0\tdeb\tusr/share/pics/a.png\tMIT\ttrain\tday\ta\n"
                        + "pics\t2.0\tdeb\tusr/share/pics/b.jpg\tMIT\tlook\treal_weather\tb\n")
    out = tmp_path / "out"
    result = _run(env, out, "--manifest", manifest, "--cache", cache, "--split", "look")
    assert result.returncode == 0, result.stderr
    assert [p["file"] for p in json.loads((out / "corpus.json").read_text())["photos"]] == [
        "look/pics__usr_share_pics_b.jpg"]

    manifest.write_text(HEADER + "pics\t2.0\tdeb\tusr/share/pics/nothing.jpg\tMIT\ttrain\tday\tx\n")
    missing = _run(env, tmp_path / "other", "--manifest", manifest, "--cache", cache)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: usr/share/pics/nothing.jpg is not in pics_2.0_all.deb"


@needs_dpkg
def test_video_frame(tmp_path, no_network):
    env, _ = no_network
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write an MJPG AVI here")
    for value in (0, 60, 120, 180, 240):
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    cache = fake_deb(tmp_path, "clips", "1.0", {"usr/share/clips/clip.avi": clip.read_bytes()})
    manifest = tmp_path / "corpus.tsv"
    manifest.write_text(HEADER
                        + "clips\t1.0\tdeb\tusr/share/clips/clip.avi#frame=2\tMIT\ttrain\tnight\tframe\n")
    out = tmp_path / "out"
    result = _run(env, out, "--manifest", manifest, "--cache", cache)
    assert result.returncode == 0, result.stderr
    frame = cv2.imread(str(out / "train" / "clips__usr_share_clips_clip_frame0002.png"))
    assert frame.shape == (48, 64, 3) and abs(float(frame.mean()) - 120) < 6


def test_reserved_packages_are_refused_before_anything_is_fetched(tmp_path, no_network):
    env, mark = no_network
    module = _module()
    manifest = tmp_path / "corpus.tsv"
    out = tmp_path / "out"
    other_plasma = "usr/share/wallpapers/Other/contents/images/1.jpg"
    for package, path in ((min(module.FORBIDDEN_PACKAGES), "usr/share/a.jpg"),
                          ("plasma-workspace-wallpapers", other_plasma)):
        manifest.write_text(HEADER + "pics\t1.0\tdeb\tusr/share/pics/a.jpg\tMIT\ttrain\tday\tfine\n"
                            + f"{package}\t1.0\tdeb\t{path}\tMIT\ttrain\tday\treserved\n")
        result = _run(env, out, "--manifest", manifest, "--cache", tmp_path / "cache")
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and package in lines[0] and "reserved for held-out checks" in lines[0]
        assert not mark.exists() and not out.exists() and not (tmp_path / "cache").exists()


def test_repository_manifest_is_well_formed():
    module = _module()
    lines = MANIFEST.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == list(module.COLUMNS)
    assert all(len(line.split("\t")) == 8 for line in lines[1:])
    rows = module.read_manifest(MANIFEST)  # splits, tags, sources, real_weather <-> look, duplicates
    module.check_reserved(rows)
    assert all(row["tags"] and set(row["tags"]) <= module.TAGS for row in rows)
    assert all(row["split"] in module.SPLITS and row["source"] in module.SOURCES for row in rows)
    assert all(row["licence"] and row["note"] for row in rows)
    assert not any(row["package"] in module.FORBIDDEN_PACKAGES - {"plasma-workspace-wallpapers"}
                   for row in rows)
    plasma = {row["path"] for row in rows if row["package"] == "plasma-workspace-wallpapers"}
    assert plasma <= module.ALLOWED_RESERVED_FILES["plasma-workspace-wallpapers"]
    assert len(module.ALLOWED_RESERVED_FILES["plasma-workspace-wallpapers"]) == 8
    by_split = {split: {row["package"] for row in rows if row["split"] == split} for split in module.SPLITS}
    assert not by_split["train"] & by_split["valid"], "a validation package is also used for training"
    assert 2 <= len(by_split["valid"]) <= 3
    assert 40 <= sum(row["split"] == "valid" for row in rows) <= 80
    assert len({row["package"] for row in rows}) >= 8
    names = [module.output_name(row) for row in rows]
    assert len(names) == len(set(names))
    assert all(row["version"] and " " not in row["version"] for row in rows)
