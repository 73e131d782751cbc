"""Copy the trained students into the package (unweather/weights/) and their run records into training_runs/.

    python3 scripts/ship_default_models.py [--models data/models] [--runs data/runs]

Each shipped file keeps the training metadata and gains `name`, `data` (the photos and synthesis
settings) and `training_run` (the record folder in this repository). `quality` is stored in float16
(loaded back as float32) so that both files stay under 10 MB together.
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
SHIPPED = {"fast": ("fast_recolour", None), "quality": ("quality_haze", torch.float16)}
RECORD_FILES = ("config.yaml", "metrics.jsonl", "train.log", "result.json", "last.json")
REPRODUCE = {"fast": "fast", "quality": "quality"}
RUNS = ("teacher_rain", "teacher_snow", "teacher_haze", "student_fast", "student_quality", "student_quality_more",
        "student_quality_polish", "direct_fast", "nomcr_fast", "fast_wide", "quality_wide", "fast_full",
        "fast_haze", "fast_resynth", "fast_recolour", "fast_balanced", "quality_haze")
LIMIT_BYTES = 10 * 2**20


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


def data_record(meta_dir: Path) -> dict:
    """The training data: synthesis settings and the photos of each split."""
    synth = json.loads((meta_dir / "synth.json").read_text()) if (meta_dir / "synth.json").is_file() else {}
    return {"made_by": "scripts/make_training_data.sh", "photos_list": "scripts/train_photos.tsv",
            "config": synth.get("config", {}), "counts": synth.get("counts", {}),
            "photos": {k: [Path(p).name for p in v] for k, v in synth.get("photos", {}).items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "data/models")
    parser.add_argument("--runs", type=Path, default=ROOT / "data/runs")
    parser.add_argument("--meta-dir", type=Path, default=ROOT / "data/synth")
    parser.add_argument("--weights", type=Path, default=ROOT / "unweather/weights")
    parser.add_argument("--records", type=Path, default=ROOT / "training_runs")
    args = parser.parse_args()

    copy_records(args.runs, args.records)
    data = json.dumps(data_record(args.meta_dir), sort_keys=True)
    total = 0
    for name, (run, dtype) in SHIPPED.items():
        src = args.models / f"{run}.safetensors"
        if not src.is_file():
            print(f"{name}: {src} not trained yet, skipped")
            continue
        meta = {k: v for k, v in read_metadata(src).items() if k not in ("format", "arch", "options")}
        # Teacher paths are machine-local; the record names the runs instead.
        meta["teachers"] = json.dumps({w: f"training_runs/teacher_{w}" for w in json.loads(meta.get("weathers", "[]"))})
        meta.update({"name": name, "data": data, "training_run": f"training_runs/{run}",
                     "reproduce": f"bash scripts/train_default_models.sh teachers {REPRODUCE[name]}", "commit": _commit(),
                     "stored_dtype": str(dtype or torch.float32).removeprefix("torch.")})
        # A direct run that continues an --init network finishes the two-stage chain the shipped runs start with.
        if meta.get("training") == "direct" and meta.get("init"):
            meta["training"] = "kc+ke, then l1"
        out = args.weights / f"{name}.safetensors"
        save(load_checkpoint(src), out, meta, dtype=dtype)
        total += out.stat().st_size
        print(f"{name}: {out} ({out.stat().st_size / 2**20:.2f} MiB) from {src}")
    if total > LIMIT_BYTES:
        raise SystemExit(f"the shipped weights take {total / 2**20:.1f} MiB, over the 10 MiB limit")
    if (args.meta_dir / "synth.json").is_file():
        args.records.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.meta_dir / "synth.json", args.records / "synth.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
