"""What a results file must say about where it was measured, and the one way results are written.

`machine_info()` describes the CPU, memory, GPU, library versions and git commit; `save_results`
writes a JSON results file that always carries that description, so a number never travels
without the machine that produced it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from unweather.fileio import write_text_atomic

# Distribution names whose versions every results file records, when installed.
LIBRARIES = ("unweather", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "av", "numpy",
             "opencv-python-headless", "onnx")


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    """Return the CPU's model name (from /proc/cpuinfo on Linux)."""
    from unweather.cpu import detect

    return detect().model


def library_versions() -> dict[str, str | None]:
    """Return the installed version of each library in `LIBRARIES` (None when missing)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    # tensorrt may be importable from a system install that pip does not list.
    if versions["tensorrt"] is None:
        try:
            import tensorrt

            versions["tensorrt"] = str(tensorrt.__version__)
        except ImportError:
            pass
    return versions


def git_state(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Return the commit checked out at `path` (default: this package's checkout) and a dirty flag.

    Only tracked files count as dirty; outside a git checkout both fields are None.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def gpu_info() -> list[dict[str, Any]]:
    """Describe every CUDA device torch sees (empty without CUDA): name, capability, memory, driver."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    driver = _nvidia_driver_version()
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({
            "index": index,
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 2),
            "multiprocessors": props.multi_processor_count,
            "driver": driver,
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        })
    return gpus


def _nvidia_driver_version() -> str | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def machine_info() -> dict[str, Any]:
    """Describe this machine and checkout: CPU, RAM, GPUs, versions, git commit, time and load.

    The CPU entry carries its model, kind ("AVX2", "AVX-512 bf16", "AMX", ...), the flags that decide
    which kernels run fast (`unweather.cpu.FLAGS`), whether bf16 and int8 run natively, and torch's
    kernel level: a CPU figure means little without them.
    """
    import psutil

    from unweather.cpu import detect

    threads: int | None = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        pass
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": {
            **detect().to_dict(),
            "cores": psutil.cpu_count(logical=False),
            "threads": psutil.cpu_count(logical=True),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": threads,
        },
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 2),
        "load_average": load_average(),
        "gpus": gpu_info(),
        "libraries": library_versions(),
        "git": git_state(),
    }


def _jsonable(value: Any) -> Any:
    """Make `value` strict JSON: NaN and infinities become None, tuples and paths plain types."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars
        return _jsonable(value.item())
    return value


def save_results(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write `payload` as a JSON results file at `path` and return the path.

    A payload without a "machine" entry gets `machine_info()`. The file is written to a temporary
    name and renamed, so an interrupted run never leaves half a results file; it gets the
    permissions of an ordinary new file (0o666 less the umask).
    """
    path = Path(path)
    data = dict(payload)
    if "machine" not in data:
        data["machine"] = machine_info()
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(path, text)
