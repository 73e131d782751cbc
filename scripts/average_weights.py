"""Average networks of one architecture, weight by weight (a "model soup"): `python3 scripts/average_weights.py
OUT.safetensors IN.safetensors [IN.safetensors ...]`.

Checkpoints of one run, or of runs from one start, lie in one basin: their mean keeps what each got right
(Wortsman et al., "Model soups", ICML 2022). OUT takes the first input's metadata, float32 weights, and
records its sources under `averaged_from`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def main() -> int:
    if len(sys.argv) < 4:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    out, sources = Path(sys.argv[1]), sys.argv[2:]
    tensors = [load_file(path) for path in sources]
    keys = set(tensors[0])
    for path, t in zip(sources[1:], tensors[1:]):
        if set(t) != keys or any(t[k].shape != tensors[0][k].shape for k in keys):
            print(f"{path} is not the same network as {sources[0]}", file=sys.stderr)
            return 1
    with safe_open(sources[0], "pt") as f:
        meta = dict(f.metadata() or {})
    meta["averaged_from"] = json.dumps(sources)
    mean = {k: sum(t[k].float() for t in tensors) / len(tensors) for k in sorted(keys)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in mean.items()}, str(out), metadata=meta)
    print(f"wrote {out}: the mean of {len(sources)} networks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
