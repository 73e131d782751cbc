"""Copy the trained students into the package (unweather/weights/) and their run records into training_runs/.

    python3 scripts/ship_default_models.py [--models data/models] [--runs data/runs] [--only fast,video]

Each shipped file keeps the training metadata and gains `name`, `data` (the photos and the corpus
settings) and `training_run` (the record folder in this repository). `quality` and the video students are
stored in float16 (loaded back as float32) so that the files stay under 16 MiB together. A run that has not
finished yet (its network is not in --models) ships its best validated checkpoint so far, and the file
says at which step: the run resumes next session with the same command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import torch

from unweather.models import load_checkpoint, read_metadata, save

ROOT = Path(__file__).resolve().parents[1]
# The runs shipped: at this scale the contrastive terms cost PSNR (README "Default models"), so `fast` is the
# two-stage student_small without MCR and `quality` ends its KE without it; both then finish with plain L1
# on larger crops, and last with the haze head on freshly rendered, recoloured haze.
# Since the photo corpus: the students start from the earlier shipped ones (two-stage, from the teachers),
# made grid-free and trained on the corpus with weather in two renderer styles and a third of each batch
# clean; the video student adds a temporal fusion over `fast`'s frame network.
SHIPPED = {"fast": ("fast_corpus", None), "quality": ("quality_soup", torch.float16),
           "video": ("video_steady", torch.float16), "video_quality": ("video_quality", torch.float16)}
RECORD_FILES = ("config.yaml", "config.json", "metrics.jsonl", "train.log", "result.json", "last.json")
REPRODUCE = {"fast": "fast_corpus", "quality": "quality_soup", "video": "video_steady",
             "video_quality": "video_quality"}
RUNS = ("teacher_rain", "teacher_snow", "teacher_haze", "student_fast", "student_quality", "student_quality_more",
        "student_quality_polish", "direct_fast", "nomcr_fast", "fast_wide", "quality_wide", "fast_full",
        "fast_haze", "fast_resynth", "fast_recolour", "fast_balanced", "quality_haze", "fast_corpus",
        "quality_corpus", "fast_night", "video_corpus", "video_refit", "video_memory", "video_long", "video_reset",
        "video_reset_long", "fast_clean", "fast_lights", "video_steady", "video_quality", "video_quality_steady",
        "teacher_rain_corpus", "teacher_snow_corpus", "teacher_haze_corpus", "fast_kd", "quality_kd", "video_calm",
        "quality_kd_polish", "fast_prior", "fast_prior_lr", "fast_prior_on", "quality_more", "fast_more")
# video_quality holds quality's frame network again (about 6 MiB in float16).
LIMIT_BYTES = 16 * 2**20


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def copy_records(runs: Path, dest: Path) -> None:
    """Copy each run's small text records (config, metrics, log, result) into `dest/<run>/`."""
    for run in RUNS:
        src = runs / run
        if not src.is_dir():
            continue
        out = dest / run
        out.mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            if (src / name).is_file():
                text = (src / name).read_text()
                # Absolute paths of this machine say nothing to a reader: keep them relative.
                text = text.replace(str(ROOT) + "/", "")
                (out / name).write_text(text)


def corpus_record(meta_dir: Path) -> dict:
    """The corpus the runs trained on: how it is made and the photos of each split."""
    prepared = json.loads((meta_dir / "prepare.json").read_text()) if (meta_dir / "prepare.json").is_file() else {}
    key = prepared.get("key", {})
    photos: dict[str, list[str]] = {}
    for _, stem, split in key.get("photos", []):
        photos.setdefault(split, []).append(stem)
    return {"made_by": "python3 scripts/fetch_corpus.py data/corpus && python -m unweather.training.corpus "
                       "data/corpus data/corpus_meta", "photos_list": "scripts/corpus.tsv",
            "config": key.get("config", {}), "photos": photos}


def best_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The best validated checkpoint of an unfinished run, and its step."""
    record = run_dir / "last.json"
    if record.is_file():
        best = json.loads(record.read_text()).get("best") or []
        if best:
            top = max(best, key=lambda b: b["psnr"])
            return ROOT / top["path"] if not Path(top["path"]).is_absolute() else Path(top["path"]), int(top["step"])
    if (run_dir / "best.safetensors").is_file():  # a video run
        meta = read_metadata(run_dir / "best.safetensors")
        return run_dir / "best.safetensors", int(meta.get("step", 0))
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "data/models")
    parser.add_argument("--runs", type=Path, default=ROOT / "data/runs")
    parser.add_argument("--meta-dir", type=Path, default=ROOT / "data/synth")
    parser.add_argument("--weights", type=Path, default=ROOT / "unweather/weights")
    parser.add_argument("--records", type=Path, default=ROOT / "training_runs")
    parser.add_argument("--corpus-meta", type=Path, default=ROOT / "data/corpus_meta")
    parser.add_argument("--only", default=",".join(SHIPPED), help="comma-separated names to ship")
    args = parser.parse_args()

    copy_records(args.runs, args.records)
    data = json.dumps(corpus_record(args.corpus_meta), sort_keys=True)
    total = 0
    only = set(args.only.split(","))
    for name, (run, dtype) in SHIPPED.items():
        src = args.models / f"{run}.safetensors"
        partial = None
        if not src.is_file():
            found = best_checkpoint(args.runs / run)
            if found is None:
                print(f"{name}: {src} not trained yet, skipped")
                continue
            src, partial = found
        if name not in only:
            out = args.weights / f"{name}.safetensors"
            total += out.stat().st_size if out.is_file() else 0
            continue
        meta = {k: v for k, v in read_metadata(src).items() if k not in ("format", "arch", "options")}
        if name.startswith("video"):
            meta.setdefault("weathers", json.dumps(["haze", "rain", "snow"]))  # its frame network's
        meta["teachers"] = json.dumps({w: f"training_runs/teacher_{w}" for w in json.loads(meta.get("weathers", "[]"))})
        meta.update({"name": name, "data": data, "training_run": f"training_runs/{run}",
                     "reproduce": f"bash scripts/train_default_models.sh {REPRODUCE[name]}",
                     "commit": _commit(),
                     "stored_dtype": str(dtype or torch.float32).removeprefix("torch.")})
        if "averaged_from" in meta:  # a mean of networks (scripts/average_weights.py): the runs behind it
            runs = sorted({Path(p).parts[2] for p in json.loads(meta["averaged_from"]) if p.startswith("data/runs/")})
            meta["training_run"] = ", ".join(f"training_runs/{r}" for r in runs)
            for key in ("val_psnr", "steps", "stage"):  # the first member's, not the mean's
                meta.pop(key, None)
        if partial is not None:
            meta["partial"] = f"best validated checkpoint at step {partial}; the run continues (--resume)"
        # A direct run that continues an --init network finishes the two-stage chain the shipped runs start with.
        if meta.get("training") == "direct" and meta.get("init"):
            meta["training"] = "kc+ke, then l1"
        # Paths of this machine say nothing to a reader: the record names the runs instead.
        meta.pop("init", None)
        out = args.weights / f"{name}.safetensors"
        save(load_checkpoint(src), out, meta, dtype=dtype)
        total += out.stat().st_size
        print(f"{name}: {out} ({out.stat().st_size / 2**20:.2f} MiB) from {src.relative_to(ROOT)}")
    if total > LIMIT_BYTES:
        raise SystemExit(f"the shipped weights take {total / 2**20:.1f} MiB, "
                         f"over the {LIMIT_BYTES / 2**20:.0f} MiB limit")
    if (args.meta_dir / "synth.json").is_file():
        args.records.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.meta_dir / "synth.json", args.records / "synth.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
