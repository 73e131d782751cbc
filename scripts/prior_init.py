"""A student with the haze head's dark channel prior switched on: `python3 scripts/prior_init.py IN WEIGHT OUT`.

Copies IN (a student with a haze head) to OUT with the `haze_prior` option and the prior's global weight set
to the constant WEIGHT, the start of a run that learns where the prior is wrong.
"""

from __future__ import annotations

import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    src, weight, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    with safe_open(src, "pt") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(src)
    options = json.loads(meta.get("options", "{}"))
    if not options.get("haze_head"):
        print(f"{src} has no haze head", file=sys.stderr)
        return 1
    options["haze_prior"] = True
    meta["options"] = json.dumps(options, sort_keys=True)
    dtype = tensors["haze.offset.weight"].dtype
    tensors["haze.prior.weight"] = torch.zeros_like(tensors["haze.offset.weight"])
    tensors["haze.prior.bias"] = torch.full((1,), weight, dtype=dtype)
    save_file(tensors, out, metadata=meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
