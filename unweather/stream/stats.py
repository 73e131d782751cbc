"""What a run measured: frames, drops, FPS, per-stage time, end-to-end latency percentiles, queue depths."""

from __future__ import annotations

import threading
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

STAGES = ("decode", "upload", "infer", "download", "encode")
_DROP_CAUSES = {"startup": "while starting", "overload": "falling behind the source"}
# A live run that drops this share of its frames for falling behind is told what would keep up.
_BEHIND_SHARE = 0.05
# Latency percentiles are taken over the most recent frames, so week-long runs keep memory flat.
LATENCY_WINDOW = 100_000


class LatencyWindow:
    """The last `LATENCY_WINDOW` per-frame latencies (seconds), kept in a fixed array."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self.size = size
        self.count = 0
        self._values = array("d", bytes(8 * size))
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values[self.count % self.size] = seconds
            self.count += 1

    def percentiles(self) -> dict[str, float | None]:
        """p50, p95, p99, mean and max in milliseconds (None without frames)."""
        import numpy as np

        with self._lock:
            n = min(self.count, self.size)
            values = np.frombuffer(self._values, dtype=np.float64)[:n].copy()
        if n == 0:
            return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
        p50, p95, p99 = np.percentile(values, [50, 95, 99]) * 1000.0
        return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
                "mean": round(float(values.mean() * 1000.0), 3), "max": round(float(values.max() * 1000.0), 3)}


@dataclass
class RunStats:
    """The statistics of one run (see `to_dict`).

    Attributes:
        input, output: what was read and written (URLs redacted).
        mode: "live" or "offline".
        model, engine: the model used (the default's name when none was given) and the engine's description.
        frames_in: frames decoded; frames_out: frames written; dropped: frames dropped (live mode).
        drops: `dropped` by cause: `startup` (more frames came while the run, or a reconnection, was
            starting than it holds meanwhile) and `overload` (the machine fell behind the source).
        frames_expected: frames the input's container announces for what was asked to be read (None
            when unknown or not read to its end).
        input_truncated: the input ended well before `frames_expected` (a cut-short or damaged file).
        corrupt_packets: input packets that were corrupt or could not be decoded (skipped).
        elapsed_s: from the first frame decoded to the output closed.
        fps: frames_out / elapsed_s.
        stage_s: busy seconds per stage (waiting on queues excluded).
        latency_ms: end-to-end latency per frame (decode, or packet arrival when live, to written).
        queues: per queue: capacity, max and mean depth, frames dropped.
        reconnections: reconnections of a network source.
        resets: a video network's state emptied, by cause: `cut` (a new scene), `reconnection`, `gap`
            (3 or more frame intervals without a frame: dropped or missing frames) and `size`.
        warmup_frames: frames restored only to warm a video network's state, not written (an archive
            chunk's lead-in on Ray).
        width, height: input frame size; batch: frames per inference call.
        interrupted: the run was stopped before its input ended.
        error: the error that ended the run, if any.
        nodes, workers: where the input was restored: the host name and process id here; on Ray the
            node and worker ids (several when its chunks ran in several places).
    """

    input: str = ""
    output: str = ""
    mode: str = "offline"
    model: str = ""
    engine: str = ""
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    frames_expected: int | None = None
    input_truncated: bool = False
    corrupt_packets: int = 0
    elapsed_s: float = 0.0
    fps: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    queues: dict[str, dict[str, float]] = field(default_factory=dict)
    reconnections: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    warmup_frames: int = 0
    width: int | None = None
    height: int | None = None
    batch: int = 1
    interrupted: bool = False
    error: str | None = None
    nodes: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field; `frames` is `frames_out`."""
        data = asdict(self)
        data["frames"] = self.frames_out
        return data

    def summary(self) -> str:
        """A few lines for people."""
        lat = self.latency_ms
        head = (f"{self.frames_out} frames written ({self.frames_in} read, {self.dropped} dropped) in "
                f"{self.elapsed_s:.2f} s: {self.fps:.1f} FPS, {self.mode} mode, {self.engine}")
        lines = [head]
        if any(self.drops.values()):
            lines.append("dropped: " + ", ".join(f"{n} {_DROP_CAUSES.get(cause, cause)}"
                                                 for cause, n in self.drops.items() if n))
        lines += self.hints()
        if lat.get("p50") is not None:
            lines.append(f"latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms")
        busy = ", ".join(f"{k} {v:.2f} s" for k, v in self.stage_s.items())
        lines.append(f"stage time: {busy}")
        if self.reconnections:
            lines.append(f"source reconnected {self.reconnections} time(s)")
        if self.resets:
            lines.append("video state reset: " + ", ".join(f"{n} {cause}" for cause, n in sorted(self.resets.items())))
        lines += [f"warning: {w}" for w in self.warnings()]
        return "\n".join(lines)

    def hints(self) -> list[str]:
        """What to change when restoring could not keep up with a live source (5 % or more dropped for it)."""
        behind = self.drops.get("overload", 0)
        if not self.frames_in or behind < _BEHIND_SHARE * self.frames_in:
            return []
        faster = "; --model fast keeps up more often" if self.model not in ("fast", "identity") else ""
        return [f"hint: restoring ran slower than the source ({100 * behind / self.frames_in:.0f} % of the frames "
                f"dropped){faster}"]

    def warnings(self) -> list[str]:
        """What went wrong with the input although the output was written: at most one sentence."""
        name = self.input or "the input"
        corrupt = (f"{self.corrupt_packets} corrupt or undecodable packet{'s' * (self.corrupt_packets > 1)} "
                   "skipped") if self.corrupt_packets else ""
        if self.input_truncated:
            read = (f"{self.frames_in} of the {self.frames_expected} frames its container announces were read"
                    if self.frames_expected else f"{self.frames_in} frames were read")
            return [f"{name} ended early: {read}{', ' + corrupt if corrupt else ''} "
                    "(the file is cut short or damaged)."]
        return [f"{name}: {corrupt}."] if corrupt else []
