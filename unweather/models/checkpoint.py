"""Loading and saving networks: released PyTorch checkpoints, plain state_dicts, our safetensors.

Our own format is a safetensors file whose metadata names the architecture (`arch`) and its
options (`options`, JSON), so loading needs nothing else. Pickled checkpoints are read with
`torch.load(weights_only=True)`; one that needs arbitrary unpickling is refused unless the caller
opts in, because loading a pickle runs code.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from unweather import __version__
from unweather.errors import UnweatherError
from unweather.fileio import atomic_path
from unweather.models.padding import PadCrop
from unweather.models.registry import build, names

logger = logging.getLogger(__name__)

# Wrappers that prefix state_dict keys: DataParallel/DistributedDataParallel and torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
# Keys of a training checkpoint that may hold the network's weights, in order of preference.
_WEIGHT_KEYS = ("state_dict", "model", "params_ema", "params")
_RESERVED_METADATA = ("format", "arch", "options")
_MAX_LISTED = 8


def load_checkpoint(
    path: str | os.PathLike[str], trusted: bool = False, arch: str | None = None, **options: object
) -> nn.Module:
    """Load a network from a checkpoint file, ready for inference (eval mode, float32, CPU).

    Accepted: our safetensors files (architecture and options from their metadata); a training
    checkpoint, i.e. a dict with 'state_dict' (or 'model') beside other entries such as 'epoch'
    and 'optimizer'; a plain state_dict. Key prefixes `module.` and `_orig_mod.` are removed.

    Args:
        path: the checkpoint file.
        trusted: allow a pickle that needs arbitrary unpickling (this runs code from the file).
        arch: the registered architecture, when the file does not name it. Without it, a
            state_dict whose keys are exactly those of a registered model (MSBDN with any number
            of residual blocks included) is recognised.
        **options: architecture options, overriding those in the file's metadata.

    Raises:
        UnweatherError: the file is missing, not a checkpoint, needs trust, names no known
            architecture, or its keys or shapes do not match (missing and unexpected keys named).
    """
    path = Path(path)
    if not path.is_file():
        raise UnweatherError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        state_dict, metadata = _read_safetensors(path)
        file_arch = metadata.get("arch")
        if arch is not None and file_arch is not None and arch != file_arch:
            raise UnweatherError(f"{path} holds a {file_arch!r} network, not {arch!r}")
        arch = arch or file_arch
        options = {**_parse_options(metadata.get("options"), path), **options}
    else:
        state_dict = _state_dict_from(_torch_load(path, trusted), path)
    state_dict = strip_prefixes(state_dict)
    if arch is None:
        arch, inferred = _infer_arch(state_dict, path)
        options = {**inferred, **options}
    elif arch not in names():
        raise UnweatherError(f"unknown architecture {arch!r}; known models: {', '.join(names())}")
    return _build_loaded(arch, options, state_dict, path)


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write `model` as our safetensors checkpoint, with its architecture and options as metadata.

    The file is written to a temporary name and renamed, so readers never see half a file.

    Args:
        model: a network from `unweather.models.build` (wrappers such as `PadCrop`,
            DataParallel and torch.compile are looked through).
        path: the output file.
        metadata: extra string entries (data, training run, ...); `format`, `arch` and `options`
            are reserved.
        dtype: store floating-point tensors in this type (e.g. torch.float16 to halve the size);
            `load_checkpoint` gives float32 back.
    """
    net = unwrap(model)
    arch = getattr(net, "arch", None)
    if arch is None:
        raise UnweatherError(
            "cannot save a network without a registered architecture; build it with unweather.models.build"
        )
    extra = dict(metadata or {})
    clashes = sorted(set(extra) & set(_RESERVED_METADATA))
    if clashes:
        raise ValueError(f"metadata keys {clashes} are reserved")
    header = {
        "format": "unweather",
        "arch": str(arch),
        "options": json.dumps(getattr(net, "arch_options", {}), sort_keys=True),
        "unweather_version": __version__,
    }
    header.update({str(k): str(v) for k, v in extra.items()})
    tensors = {}
    for key, value in net.state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous().clone()

    from safetensors.torch import save_file

    # Through a temporary file and a rename; the file gets the usual permissions (0o666 less the umask).
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the metadata of a safetensors checkpoint (empty when it has none)."""
    path = Path(path)
    if not path.is_file():
        raise UnweatherError(f"checkpoint not found: {path}")
    if not _is_safetensors(path):
        raise UnweatherError(f"{path} is not a safetensors file")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def unwrap(model: nn.Module) -> nn.Module:
    """Return the network inside `PadCrop`, DataParallel-style and torch.compile wrappers."""
    while True:
        if isinstance(model, PadCrop):
            model = model.net
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the key prefixes that wrappers add (`module.`, `_orig_mod.`, in any nesting)."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    stripped = True
        cleaned[key] = value
    return cleaned


def _is_safetensors(path: Path) -> bool:
    # safetensors: an 8-byte little-endian header length, then a JSON object.
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size <= 100_000_000 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (not iterable)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnweatherError(f"{path} is not a readable safetensors file ({exc})") from exc
    return tensors, metadata


def _parse_options(text: str | None, path: Path) -> dict[str, object]:
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnweatherError(f"{path}: the 'options' metadata is not valid JSON ({exc})") from exc
    if not isinstance(options, dict):
        raise UnweatherError(f"{path}: the 'options' metadata is not a JSON object")
    return options


def _torch_load(path: Path, trusted: bool) -> object:
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it has not tried; the outcome is reported below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise UnweatherError(f"{path} is not a PyTorch checkpoint ({_first_line(exc)})") from exc
        if not trusted:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            what = f" (it pickles {found.group(1)})" if found else ""
            raise UnweatherError(
                f"{path} needs arbitrary unpickling{what}, and loading a pickle runs code from the file; "
                "if you trust its source, pass trusted=True (--trust-checkpoint on the command line), "
                "or convert it once with `unweather convert --trust-checkpoint`"
            ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError) as exc:
        raise UnweatherError(f"{path} is not a PyTorch checkpoint ({_first_line(exc)})") from exc
    logger.warning("loading %s with full unpickling (trusted)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ImportError, AttributeError) as exc:
        raise UnweatherError(f"{path} could not be unpickled ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _state_dict_from(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in _WEIGHT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                return dict(inner)
        if obj and _all_tensors(obj):
            return dict(obj)
        found = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED])
        raise UnweatherError(
            f"{path} holds no network weights: expected a state_dict or a dict with 'state_dict' "
            f"(found keys {found})"
        )
    raise UnweatherError(f"{path} holds a {type(obj).__name__}, not network weights")


def _all_tensors(mapping: Mapping[object, object]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _meta_model(arch: str, options: Mapping[str, object]) -> nn.Module:
    with torch.device("meta"):
        return build(arch, **options)


def _infer_arch(state_dict: Mapping[str, torch.Tensor], path: Path) -> tuple[str, dict[str, object]]:
    keys = set(state_dict)
    candidates: list[tuple[str, dict[str, object]]] = []
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"dehaze\.res(\d+)\.", k))}
    if "conv_input.conv2d.weight" in keys:
        candidates.append(("msbdn", {"res_blocks": max(blocks) + 1 if blocks else 0}))
    candidates += [(name, {}) for name in names() if name != "identity"]
    same_keys = []
    for name, options in candidates:
        try:
            expected = _meta_model(name, options).state_dict()
        except (TypeError, ValueError):
            continue
        if set(expected) != keys:
            continue
        if all(expected[k].shape == state_dict[k].shape for k in keys):
            logger.debug("%s: recognised a %s network %s", path, name, options)
            return name, options
        same_keys.append(name)
    if same_keys:
        raise UnweatherError(
            f"{path} has the keys of {same_keys[0]!r} with other sizes; name it with arch= and its options "
            f"(--arch {same_keys[0]} --options JSON on the command line)"
        )
    raise UnweatherError(
        f"cannot tell which network {path} holds; name it with arch= (--arch on the command line), "
        f"one of: {', '.join(names())}"
    )


def _describe_keys(kind: str, keys: list[str]) -> str:
    listed = ", ".join(keys[:_MAX_LISTED])
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)} {kind} ({listed}{more})"


def _build_loaded(
    arch: str, options: dict[str, object], state_dict: dict[str, torch.Tensor], path: Path
) -> nn.Module:
    try:
        model = _meta_model(arch, options)
    except TypeError as exc:
        raise UnweatherError(f"{path}: bad options {options} for {arch!r} ({exc})") from exc
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    problems = []
    if missing:
        problems.append(_describe_keys("missing keys", missing))
    if unexpected:
        problems.append(_describe_keys("unexpected keys", unexpected))
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if shapes:
        problems.append(_describe_keys("shape mismatches", shapes))
    if problems:
        raise UnweatherError(f"{path} does not fit {arch!r}: " + "; ".join(problems))
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    # Built on the meta device, the network takes the loaded tensors as they are: no second copy.
    model.load_state_dict(weights, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = build(arch, **options)
        model.load_state_dict(weights, strict=True)
    model.arch = arch
    model.arch_options = dict(options)
    return model.eval()
