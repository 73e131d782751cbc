"""Honest timing helpers: synchronised clocks, percentile summaries and a background resource sampler."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from typing import Any

import torch

logger = logging.getLogger(__name__)


def synchronize(device: torch.device) -> None:
    """Wait for every queued kernel on `device` (a no-op on the CPU), so a clock reading is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0..100) of `values`, linearly interpolated between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float]:
    """Median, p95, p99, mean, min, max and standard deviation of `values`."""
    return {
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def spread(values: list[float]) -> float:
    """(max - min) / median of repetitions: 0.05 means the repetitions agree within 5 %."""
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med else 0.0


_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def _busy_seconds(times: Any) -> float:
    # guest time is already counted in user on Linux, so it is left out here.
    return sum(float(getattr(times, name, 0.0)) for name in _BUSY_FIELDS)


class CpuShare:
    """How much of the machine's CPU this process and all other processes used over an interval.

    A benchmark on a shared machine must say how loaded it was: `start()` then `stop()` give the
    busy share of all logical CPUs, split between this process (every thread) and the others.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._start: tuple[float, float, float] | None = None

    def _snapshot(self) -> tuple[float, float, float]:
        own = self._process.cpu_times()
        return time.perf_counter(), _busy_seconds(self._psutil.cpu_times()), own.user + own.system

    def start(self) -> CpuShare:
        """Begin the interval (again)."""
        self._start = self._snapshot()
        return self

    def stop(self) -> dict[str, float]:
        """Busy percentages of all CPUs since `start()`: "busy_pct", "own_pct" and "others_pct"."""
        if self._start is None:
            raise RuntimeError("CpuShare.stop() before start()")
        t1, busy1, own1 = self._snapshot()
        t0, busy0, own0 = self._start
        capacity = max(t1 - t0, 1e-9) * (self._psutil.cpu_count(logical=True) or 1)
        # The kernel counts in clock ticks: over a short interval the counts may exceed the capacity a little.
        busy = min(capacity, max(0.0, busy1 - busy0))
        own = min(busy, max(0.0, own1 - own0))
        return {"busy_pct": round(100.0 * busy / capacity, 1), "own_pct": round(100.0 * own / capacity, 1),
                "others_pct": round(100.0 * max(0.0, busy - own) / capacity, 1)}


class _Nvml:
    """Utilisation and power of one GPU through NVML (nvidia-ml-py), when it is installed."""

    def __init__(self, device: torch.device) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        try:
            self._handle = self._find_handle(device)
        except pynvml.NVMLError:
            pynvml.nvmlShutdown()
            raise

    def _find_handle(self, device: torch.device) -> Any:
        nvml = self._nvml
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        # torch numbers devices after CUDA_VISIBLE_DEVICES; NVML does not, so match by identity first.
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            try:
                return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            except nvml.NVMLError:
                pass
        return nvml.nvmlDeviceGetHandleByIndex(index)

    def sample(self) -> tuple[float | None, float | None, float | None]:
        """Return (GPU utilisation %, power W, device memory used in bytes); an unsupported reading is None."""
        nvml = self._nvml
        try:
            util: float | None = float(nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        except nvml.NVMLError:
            util = None
        try:
            power: float | None = nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except nvml.NVMLError:
            power = None
        try:
            used: float | None = float(nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except nvml.NVMLError:
            used = None
        return util, power, used

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class ResourceSampler:
    """Samples host RSS, and GPU utilisation and power where NVML is available, in a background thread.

    Use as a context manager around what is measured; `result()` then gives the peaks and means,
    and the share of the CPUs that this process and other processes used meanwhile. GPU memory
    comes from `torch.cuda.max_memory_allocated`, reset on entry (torch's allocator only), and
    from NVML (the whole device, which sees TensorRT and ONNX Runtime allocations too).
    """

    def __init__(self, device: torch.device, interval_s: float = 0.05) -> None:
        self.device = device
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss: list[int] = []
        self._util: list[float] = []
        self._power: list[float] = []
        self._gpu_used: list[float] = []
        self._cpu: CpuShare | None = None
        self._cpu_share: dict[str, float] | None = None
        self._nvml: _Nvml | None = None
        self.nvml_error: str | None = None

    def __enter__(self) -> ResourceSampler:  # noqa: PYI034 (Self needs Python 3.11)
        import psutil

        self._process = psutil.Process()
        self._rss_before = self._process.memory_info().rss
        self._cpu = CpuShare().start()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._gpu_before = torch.cuda.memory_allocated(self.device)
            try:
                import pynvml
            except ImportError:
                self.nvml_error = "nvidia-ml-py is not installed"
            else:
                try:
                    self._nvml = _Nvml(self.device)
                except (pynvml.NVMLError, RuntimeError) as exc:  # only the GPU readings are lost
                    self.nvml_error = f"NVML unavailable: {exc}"
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            self._rss.append(self._process.memory_info().rss)
            if self._nvml is not None:
                util, power, used = self._nvml.sample()
                if util is not None:
                    self._util.append(util)
                if power is not None:
                    self._power.append(power)
                if used is not None:
                    self._gpu_used.append(used)
            if self._stop.wait(self.interval_s):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._rss.append(self._process.memory_info().rss)
        if self._cpu is not None:
            self._cpu_share = self._cpu.stop()
        if self._nvml is not None:
            self._nvml.close()
        if self.device.type == "cuda":
            self._gpu_peak = torch.cuda.max_memory_allocated(self.device)

    @property
    def sampled(self) -> bool:
        """True once the sampler has run (a combination skipped before measuring has no readings)."""
        return bool(self._rss)

    def result(self) -> dict[str, Any]:
        """Peak and starting host RSS (MB), CPU shares (%), GPU memory peaks (MB) and NVML readings."""
        mb = 2.0**20
        out: dict[str, Any] = {
            "rss_before_mb": round(self._rss_before / mb, 1),
            "rss_peak_mb": round(max(self._rss) / mb, 1),
            "samples": len(self._rss),
        }
        if self._cpu_share is not None:
            out["cpu"] = self._cpu_share
        if self.device.type == "cuda":
            out["gpu_before_mb"] = round(self._gpu_before / mb, 1)
            out["gpu_peak_mb"] = round(self._gpu_peak / mb, 1)
            if self._util:
                out["gpu_util_mean"] = round(statistics.fmean(self._util), 1)
                out["gpu_util_max"] = max(self._util)
            if self._gpu_used:
                out["gpu_device_used_peak_mb"] = round(max(self._gpu_used) / mb, 1)
            if self._power:
                out["power_mean_w"] = round(statistics.fmean(self._power), 1)
                out["power_max_w"] = round(max(self._power), 1)
            if self.nvml_error:
                out["nvml"] = self.nvml_error
        return out
