"""Paired training data: meta JSON data sets, crops cut per step, batches that hold every weather type.

Sampling is a pure function of (seed, step): resuming at step s draws exactly the batches an
uninterrupted run would have drawn, with nothing to save but the step. Each weather's pairs are visited
in a fresh permutation per pass, so every pair is seen once per epoch of that weather.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unweather.errors import UnweatherError
from unweather.media import read_rgb
from unweather.training.config import DataConfig

log = logging.getLogger(__name__)

CLEAN = "clean"

Pair = tuple[Path, Path]


def read_image(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3) (`unweather.media.read_rgb`)."""
    return read_rgb(path)


class ImageStore:
    """Reads images, decoding each file once when caching in memory (shared by all data sets)."""

    def __init__(self, cache: bool) -> None:
        self.cache = cache
        self._images: dict[Path, np.ndarray] = {}

    def get(self, path: Path) -> np.ndarray:
        """Return the image at `path` (uint8 RGB)."""
        if not self.cache:
            return read_image(path)
        image = self._images.get(path)
        if image is None:
            image = self._images[path] = read_image(path)
        return image

    def preload(self, paths: Sequence[Path], workers: int) -> None:
        """Decode `paths` into the cache (in parallel threads; OpenCV releases the GIL)."""
        if not self.cache:
            return
        todo = [p for p in dict.fromkeys(paths) if p not in self._images]
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                for path, image in zip(todo, pool.map(read_image, todo), strict=True):
                    self._images[path] = image
        else:
            for path in todo:
                self._images[path] = read_image(path)


def load_pairs(meta_dir: str | Path, split: str) -> dict[str, list[Pair]]:
    """Return the data sets of `meta_dir` for `split` ("train" or "valid"): name -> [(gt, degraded)]."""
    from unweather.training.evaluate import load_meta

    return load_meta(meta_dir, split)


def split_clean(datasets: dict[str, list[Pair]]) -> tuple[dict[str, list[Pair]], list[Path]]:
    """Separate a data set named `clean` (input = ground truth, as `unweather synth --clean-pairs` makes).

    Returns the weather data sets and the clean images (empty when there is no such data set).
    """
    weathers = {name: pairs for name, pairs in datasets.items() if name != CLEAN}
    clean = sorted({gt for gt, _ in datasets.get(CLEAN, [])})
    return weathers, clean


def select(datasets: dict[str, list[Pair]], weathers: Sequence[str], split: str) -> dict[str, list[Pair]]:
    """Return the data sets named `weathers`, in that order; a missing one is an error."""
    missing = [w for w in weathers if w not in datasets]
    if missing:
        raise UnweatherError(f"no {split} data set named {', '.join(missing)}; the meta directory has "
                             f"{', '.join(sorted(datasets))}")
    return {w: datasets[w] for w in weathers}


def _choose_cache(cfg: DataConfig, pairs: Sequence[Pair]) -> bool:
    if cfg.cache != "auto":
        return cfg.cache == "memory"
    paths = list(dict.fromkeys(p for pair in pairs for p in pair))
    if not paths:
        return True
    first = read_image(paths[0])
    estimate_mb = first.nbytes * len(paths) / 2**20
    return estimate_mb <= cfg.cache_limit_mb


@dataclass
class Batch:
    """One training batch: uint8 (N, 3, H, W) inputs and targets, and the groups they form.

    `groups` lists (name, start, stop) slices of the batch in order: the weather types, then `clean`
    (ground truth as input) when clean pairs are mixed in.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    groups: list[tuple[str, int, int]]

    def to(self, device: torch.device | str) -> FloatBatch:
        """Move to `device` as uint8 (4x less traffic) and convert there to float in [0, 1]."""
        inputs = self.inputs.to(device, non_blocking=True).float().div_(255.0)
        targets = self.targets.to(device, non_blocking=True).float().div_(255.0)
        return FloatBatch(inputs, targets, list(self.groups))


@dataclass
class FloatBatch:
    """A batch on its device, float in [0, 1]."""

    inputs: torch.Tensor
    targets: torch.Tensor
    groups: list[tuple[str, int, int]]

    def group(self, name: str) -> slice:
        """Return the batch slice of group `name`."""
        for group, start, stop in self.groups:
            if group == name:
                return slice(start, stop)
        raise KeyError(name)

    def weather_groups(self) -> list[tuple[str, int, int]]:
        """Return the groups that hold degraded inputs (every group except `clean`)."""
        return [g for g in self.groups if g[0] != CLEAN]

    @property
    def weather_stop(self) -> int:
        """The end of the degraded samples (clean samples come after them)."""
        groups = self.weather_groups()
        return groups[-1][2] if groups else 0


def _crop(gt: np.ndarray, degraded: np.ndarray, size: int, rng: np.random.Generator,
          flip: bool) -> tuple[np.ndarray, np.ndarray]:
    if gt.shape != degraded.shape:
        raise UnweatherError(f"a pair has images of different sizes: {gt.shape} and {degraded.shape}")
    h, w = gt.shape[:2]
    if h < size or w < size:
        # Small images are reflected up to the crop size rather than resized: pixels stay as they are.
        pad = ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0))
        gt, degraded = np.pad(gt, pad, mode="symmetric"), np.pad(degraded, pad, mode="symmetric")
        h, w = gt.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    gt = gt[top:top + size, left:left + size]
    degraded = degraded[top:top + size, left:left + size]
    if flip and rng.random() < 0.5:
        gt, degraded = gt[:, ::-1], degraded[:, ::-1]
    return gt, degraded


def _recolour(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    scaled = gt[..., rng.permutation(3)].astype(np.float32) * rng.uniform(0.5, 1.0)
    return np.round(scaled).astype(np.uint8)


def _render(gt: np.ndarray, weather: str, rng: np.random.Generator) -> np.ndarray:
    from unweather.training.synth import add_weather, to_uint8

    return to_uint8(add_weather(gt.astype(np.float32) / 255.0, weather, rng))


def _render_styles(gt: np.ndarray, weather: str | None, rng: np.random.Generator,
                   cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    from unweather.training.render import CameraConfig, training_sample
    from unweather.training.synth import to_uint8

    if cfg.resynth_recolour:
        gt = _recolour(gt, rng)
    target, degraded = training_sample(gt.astype(np.float32) / 255.0, weather, rng, cfg.render_styles,
                                       CameraConfig(night=cfg.night, lights=cfg.lights) if cfg.camera else None)
    return to_uint8(target), to_uint8(degraded)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


class WeatherBatches:
    """Batches with `per_weather` samples of every weather type plus `clean` clean pairs, per step.

    Args:
        datasets: weather name -> training pairs, in the order the batch holds them.
        cfg: crop size, flips, batch composition and caching.
        seed: the run's seed; batch `s` depends only on (seed, s).
        per_weather: samples per weather per batch (default `cfg.batch_per_weather`).
        clean: clean pairs per batch (default `cfg.clean_per_batch`).
        clean_paths: the clean images; default: the ground truths of the training pairs.
    """

    def __init__(self, datasets: dict[str, list[Pair]], cfg: DataConfig, seed: int,
                 per_weather: int | None = None, clean: int | None = None,
                 clean_paths: Sequence[Path] | None = None) -> None:
        if not datasets:
            raise UnweatherError("training needs at least one data set")
        self.datasets = {name: list(pairs) for name, pairs in datasets.items()}
        self.names = list(self.datasets)
        self.cfg = cfg
        self.seed = int(seed)
        self.per_weather = cfg.batch_per_weather if per_weather is None else int(per_weather)
        self.clean = cfg.clean_per_batch if clean is None else int(clean)
        # Clean pairs reuse the training ground truths by default, so they add no new photos.
        self.clean_paths = sorted(clean_paths) if clean_paths else \
            sorted({gt for pairs in self.datasets.values() for gt, _ in pairs})
        all_pairs = [pair for pairs in self.datasets.values() for pair in pairs]
        if self.clean:
            all_pairs += [(p, p) for p in self.clean_paths]
        from unweather.training.synth import WEATHERS

        self.resynth = set(cfg.resynth)
        wrong = sorted(self.resynth - (set(WEATHERS) & set(self.names)))
        if wrong:
            raise UnweatherError(f"data.resynth {wrong}: only synthetic weather types being trained can be "
                                 f"rendered afresh ({', '.join(n for n in self.names if n in WEATHERS) or 'none'})")
        self.store = ImageStore(_choose_cache(cfg, all_pairs))
        self.store.preload([p for pair in all_pairs for p in pair], cfg.workers)
        self._pool = ThreadPoolExecutor(max(1, cfg.workers)) if not self.store.cache and cfg.workers > 1 \
            else None

    @property
    def batch_size(self) -> int:
        """Samples per batch."""
        return self.per_weather * len(self.names) + self.clean

    @property
    def steps_per_epoch(self) -> int:
        """Steps for the largest data set's pairs to be seen once."""
        largest = max(len(p) for p in self.datasets.values())
        return max(1, -(-largest // self.per_weather))

    def _index(self, k: int, n: int, position: int) -> int:
        epoch, offset = divmod(position, n)
        return int(np.random.default_rng([self.seed, 1, k, epoch]).permutation(n)[offset])

    def plan(self, step: int) -> list[tuple[str, Path, Path]]:
        """Return the (group, gt, degraded) samples of batch `step`, in batch order."""
        samples = []
        for k, name in enumerate(self.names):
            pairs = self.datasets[name]
            for j in range(self.per_weather):
                gt, degraded = pairs[self._index(k, len(pairs), step * self.per_weather + j)]
                samples.append((name, gt, degraded))
        for j in range(self.clean):
            path = self.clean_paths[self._index(len(self.names), len(self.clean_paths), step * self.clean + j)]
            samples.append((CLEAN, path, path))
        return samples

    def batch(self, step: int) -> Batch:
        """Return batch `step` (crops and flips drawn from (seed, step))."""
        samples = self.plan(step)
        rng = np.random.default_rng([self.seed, 2, step])
        paths = [p for _, gt, deg in samples for p in (gt, deg)]
        if self._pool is not None:
            images = list(self._pool.map(self.store.get, paths))
        else:
            images = [self.store.get(p) for p in paths]
        size = self.cfg.crop
        inputs = np.empty((len(samples), size, size, 3), np.uint8)
        targets = np.empty_like(inputs)
        for i in range(len(samples)):
            targets[i], inputs[i] = _crop(images[2 * i], images[2 * i + 1], size, rng, self.cfg.flip)
            group = samples[i][0]
            # Clean frames are recoloured alike, or dark and odd-coloured frames would all mean haze.
            if group in self.resynth or (group == CLEAN and self.resynth):
                sample_rng = np.random.default_rng([self.seed, 3, step, i])
                if self.cfg.render_styles:
                    targets[i], inputs[i] = _render_styles(targets[i], group if group in self.resynth else None,
                                                           sample_rng, self.cfg)
                    continue
                if self.cfg.resynth_recolour:
                    targets[i] = _recolour(targets[i], sample_rng)
                inputs[i] = _render(targets[i], group, sample_rng) if group in self.resynth else targets[i]
        groups, start = [], 0
        for name in [*self.names, CLEAN]:
            count = sum(1 for s in samples if s[0] == name)
            if count:
                groups.append((name, start, start + count))
                start += count
        return Batch(_nchw(inputs), _nchw(targets), groups)

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, Batch]]:
        """Yield (step, batch) for steps start..stop-1, preparing the next batch in the background."""
        if start >= stop:
            return
        with ThreadPoolExecutor(1) as ahead:
            pending = ahead.submit(self.batch, start)
            for step in range(start, stop):
                batch = pending.result()
                if step + 1 < stop:
                    pending = ahead.submit(self.batch, step + 1)
                yield step, batch

    def close(self) -> None:
        """Stop the reading threads."""
        if self._pool is not None:
            self._pool.shutdown()


@dataclass
class ValidSet:
    """Validation pairs per group (weathers, then `clean`), float (1, 3, H, W) tensors in memory."""

    pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]

    @classmethod
    def build(cls, datasets: dict[str, list[Pair]], cfg: DataConfig, clean: bool,
              clean_paths: Sequence[Path] | None = None) -> ValidSet:
        """Take up to `cfg.val_max_pairs` pairs of each data set, centre-cropped to `cfg.val_crop`.

        With `clean`, a `clean` group compares the network's output on clean images (`clean_paths`, by
        default the data sets' ground truths) with those images.
        """
        store = ImageStore(cache=False)
        out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

        def prepare(path: Path) -> torch.Tensor:
            image = store.get(path)
            if cfg.val_crop:
                h, w = image.shape[:2]
                ch, cw = min(h, cfg.val_crop), min(w, cfg.val_crop)
                top, left = (h - ch) // 2, (w - cw) // 2
                image = image[top:top + ch, left:left + cw]
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0

        limit = cfg.val_max_pairs
        for name, pairs in datasets.items():
            out[name] = [(prepare(gt), prepare(deg)) for gt, deg in evenly_spread(pairs, limit)]
        if clean:
            gts = sorted(clean_paths) if clean_paths else sorted({gt for pairs in datasets.values() for gt, _ in pairs})
            out[CLEAN] = [(t, t) for t in (prepare(gt) for gt in evenly_spread(gts, limit))]
        return cls(out)


def evenly_spread(items: Sequence, limit: int) -> list:
    """At most `limit` items evenly spread over `items` (all of them when `limit` is 0).

    Deterministic, so every validation, and any benchmark that compares with it, sees the same pairs.
    """
    if not limit or len(items) <= limit:
        return list(items)
    return [items[int(i * len(items) / limit)] for i in range(limit)]


def parse_teacher_specs(specs: Sequence[str]) -> list[tuple[str | None, Path]]:
    """Split `--teachers` items, each `WEATHER=PATH` or a bare `PATH`, into (weather or None, path)."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name and not Path(spec).exists():
            out.append((name, Path(path)))
        else:
            out.append((None, Path(spec)))
    return out


def teacher_weathers(metadata: dict[str, str]) -> list[str]:
    """Return the weather types a checkpoint's metadata says it was trained on."""
    raw = metadata.get("weathers", "")
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.split(",")
    if isinstance(value, str):
        value = [value]
    return [str(v).strip() for v in value if str(v).strip()]


def pair_teachers(specs: Sequence[str], datasets: Sequence[str],
                  metadata: dict[Path, dict[str, str]]) -> list[tuple[str, Path]]:
    """Pair each teacher with its data set, explicitly and checked; return [(weather, path)].

    A spec `rain=T.safetensors` names its data set; a bare path is paired by the `weathers` its
    metadata records. Both must agree when both are present. Every data set of the meta directory must
    get exactly one teacher, and no teacher may name a data set that is not there.

    Args:
        specs: the `--teachers` items.
        datasets: the training data sets found in the meta directory.
        metadata: each teacher file's metadata (`unweather.models.read_metadata`).
    """
    pairs: list[tuple[str, Path]] = []
    for named, path in parse_teacher_specs(specs):
        recorded = teacher_weathers(metadata.get(path, {}))
        if named is None:
            if len(recorded) != 1:
                raise UnweatherError(
                    f"teacher {path} does not record one weather type in its metadata "
                    f"({', '.join(recorded) or 'none'}); name it explicitly as WEATHER={path}")
            named = recorded[0]
        elif recorded and named not in recorded:
            raise UnweatherError(f"teacher {path} was trained on {', '.join(recorded)}, but it is paired "
                                 f"with data set {named!r}")
        pairs.append((named, path))
    names = [w for w, _ in pairs]
    twice = sorted({w for w in names if names.count(w) > 1})
    if twice:
        raise UnweatherError(f"more than one teacher for data set {', '.join(twice)}")
    unknown = [w for w in names if w not in datasets]
    if unknown:
        raise UnweatherError(f"teacher for {', '.join(unknown)} has no data set in the meta directory "
                             f"(it has {', '.join(sorted(datasets))})")
    untaught = [d for d in datasets if d not in names]
    if untaught:
        raise UnweatherError(f"data set {', '.join(untaught)} has no teacher; pass one per data set "
                             f"(e.g. {untaught[0]}=TEACHER.safetensors)")
    return pairs
