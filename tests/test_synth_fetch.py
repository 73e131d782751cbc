"""scripts/fetch_train_photos.sh on a small package built here (no download: DEB_CACHE)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from media import fake_deb

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_train_photos.sh"


def _run(out: Path, tsv: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEB_CACHE": str(cache)}
    return subprocess.run(["bash", str(SCRIPT), str(out), str(tsv)], env=env, capture_output=True, text=True,
                          check=False)


def test_fetch_copies_only_listed_photos_with_unique_names(tmp_path):
    cache = fake_deb(tmp_path, "pics", "1.0-1", {
        "usr/share/backgrounds/pics/nature/Lake.jpg": b"lake",
        "usr/share/backgrounds/pics/nature/Unlisted.jpg": b"not for training",
        "usr/share/wallpapers/Hill/contents/images/2560x1600.jpg": b"hill",
        "usr/share/wallpapers/Dale/contents/images/2560x1600.jpg": b"dale",
    })
    tsv = tmp_path / "photos.tsv"
    tsv.write_text("package\tpath_in_package\twhat\n"
                   "pics\tusr/share/backgrounds/pics/nature/Lake.jpg\ta lake\n"
                   "pics\tusr/share/wallpapers/Hill/contents/images/2560x1600.jpg\ta hill\n"
                   "pics\tusr/share/wallpapers/Dale/contents/images/2560x1600.jpg\ta dale\n")
    out = tmp_path / "photos"
    result = _run(out, tsv, cache)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "pics.copyright", "pics__Dale.jpg", "pics__Hill.jpg", "pics__Lake.jpg"]
    assert (out / "pics__Hill.jpg").read_bytes() == b"hill" and (out / "pics__Dale.jpg").read_bytes() == b"dale"

    tsv.write_text("package\tpath_in_package\twhat\npics\tusr/share/nothing/here.jpg\tmissing\n")
    result = _run(tmp_path / "again", tsv, cache)
    assert result.returncode == 1 and "usr/share/nothing/here.jpg is not in package pics" in result.stderr


def test_repository_copy_of_the_photo_list_is_well_formed():
    rows = [line.split("\t") for line in (SCRIPT.parent / "train_photos.tsv").read_text().splitlines()]
    assert rows[0][:2] == ["package", "path_in_package"]
    assert len(rows) > 10 and all(len(r) == 3 and r[1].startswith("usr/share/") for r in rows[1:])
    names = [f"{r[0]}__{r[1].split('/contents/')[0].rsplit('/', 1)[1]}" for r in rows[1:]]
    assert len(set(names)) == len(names)
