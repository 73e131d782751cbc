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


class _Cli:
    """`unweather run` in a subprocess with its stderr collected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "unweather.cli", "run", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None
        self._thread.join(10)
        return code


def _stats(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _make_clip(path: Path, frames: int, size: tuple[int, int] = (160, 96), rate: int = 25) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[..., 1] = (np.arange(size[0]) * 3 + i * 5) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def pipeline_faults(workdir: Path) -> dict[str, Any]:
    """Faults during `unweather run`: camera restarts, a camera gone for good, SIGINT/SIGTERM, SIGKILL."""
    net = ["--model", "identity", "--open-timeout", "2", "--read-timeout", "2", "--stall-timeout", "4"]
    faults: list[dict[str, Any]] = []

    # 1. The camera is killed and comes back three times during one recording.
    server = RtspServer(workdir, user="viewer", password="hunter2").start()
    out, stats = workdir / "restarts.mkv", workdir / "restarts.json"
    cli = _Cli(server.url("viewer:hunter2"), "-o", str(out), "--max-frames", "400", "--stats", str(stats),
               "--give-up-after", "60", *net)
    cli.wait_line("receiving")
    for _ in range(3):
        time.sleep(3.0)
        server.kill()
        time.sleep(2.0)
        server.start()
    code = cli.wait(120)
    server.kill()
    report = _stats(stats)
    in_file = _ffprobe_frames(out)
    faults.append({
        "fault": "camera killed and restarted 3 times during a live recording",
        "exit_code": code, "restarts": report.get("restarts"), "frames_in": report.get("frames_in"),
        "frames_out": report.get("frames_out"), "dropped_live": report.get("dropped"), "frames_in_file": in_file,
        "summary": f"exit {code}, {report.get('restarts')} reconnect attempts, one file with {in_file} frames of "
                   f"{report.get('frames_out')} written ({report.get('dropped')} dropped by live mode).",
        "stderr_has_secret": "hunter2" in "\n".join(cli.lines) or "hunter2" in json.dumps(report)})

    # 2. The camera never comes back: the run ends after --give-up-after with one line and a good file.
    server = RtspServer(workdir, user="viewer", password="hunter2").start()
    out, stats = workdir / "gone.mkv", workdir / "gone.json"
    cli = _Cli(server.url("viewer:hunter2"), "-o", str(out), "--stats", str(stats), "--give-up-after", "5", *net)
    cli.wait_line("receiving")
    time.sleep(2.0)
    server.kill()
    gone = time.monotonic()
    code = cli.wait(60)
    took = time.monotonic() - gone
    errors = [line for line in cli.lines if line.startswith("unweather: error:")]
    in_file = _ffprobe_frames(out)
    faults.append({
        "fault": "camera gone for good (--give-up-after 5)", "exit_code": code, "ended_after_s": round(took, 1),
        "error_lines": errors, "frames_in_file": in_file,
        "summary": f"run ended {took:.1f} s after the camera died (exit {code}) with "
                   f"{len(errors)} error line; the file plays with {in_file} frames.",
        "stderr_has_secret": "hunter2" in "\n".join(cli.lines)})

    # 3. SIGINT and SIGTERM during an offline file run.
    clip = workdir / "clip.mp4"
    _make_clip(clip, 3000)
    for sig in (signal.SIGINT, signal.SIGTERM):
        out, stats = workdir / f"file-{sig.name}.mp4", workdir / f"file-{sig.name}.json"
        cli = _Cli(str(clip), "-o", str(out), "--model", "identity", "--stats", str(stats))
        cli.wait_line("encoding")
        time.sleep(1.5)
        cli.proc.send_signal(sig)
        code = cli.wait(60)
        report = _stats(stats)
        in_file = _ffprobe_frames(out)
        faults.append({
            "fault": f"{sig.name} during a file run", "exit_code": code, "frames_out": report.get("frames_out"),
            "frames_in_file": in_file,
            "summary": f"exit {code}; the output plays and holds {in_file} frames, the run wrote "
                       f"{report.get('frames_out')} ({(report.get('frames_out') or 0) - (in_file or 0)} lost)."})

    # 4. SIGKILL during a live recording.
    server = RtspServer(workdir).start()
    out = workdir / "killed.mkv"
    cli = _Cli(server.url(), "-o", str(out), *net)
    cli.wait_line("receiving")
    time.sleep(6.0)
    cli.proc.send_signal(signal.SIGKILL)
    cli.wait(10)
    server.kill()
    in_file = _ffprobe_frames(out)
    size = out.stat().st_size if out.exists() else 0
    faults.append({
        "fault": "SIGKILL 6 s into a live recording", "frames_in_file": in_file, "file_bytes": size,
        "summary": (f"the file plays with {in_file} frames up to the last fragment." if in_file else
                    f"the file is not playable ({size} bytes on disk): the live writer buffers its output.")})
    return {"faults": faults}


class _LatencySeries:
    """Stands in for the pipeline's latency window and also keeps (time, latency) for every frame."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.series: list[tuple[float, float]] = []

    def add(self, seconds: float) -> None:
        self.inner.add(seconds)
        self.series.append((time.monotonic(), seconds))

    def percentiles(self) -> dict[str, float | None]:
        return self.inner.percentiles()


def soak(workdir: Path, frames: int, fps: int, size: str = "160x96") -> dict[str, Any]:
    """`frames` frames from a live RTSP camera through the live pipeline (identity); RSS and latency over time."""
    import numpy as np
    import psutil

    from unweather.stream.config import RunConfig
    from unweather.stream.pipeline import Pipeline
    from unweather.stream.runner import open_engine, open_sink
    from unweather.stream.sources import open_source

    process = psutil.Process()
    rss_before = process.memory_info().rss
    server = RtspServer(workdir, fps=fps, size=size, user="viewer", password="hunter2").start()
    config = RunConfig(model="identity", mode="live", max_frames=frames, progress=False, open_timeout=5.0,
                       read_timeout=5.0, give_up_after=60.0)
    stop = threading.Event()
    source = open_source(server.url("viewer:hunter2"), config, True, False, stop)
    out = workdir / "soak.mkv"
    sink = open_sink(str(out), source, config, True, gpu=False)
    engine = open_engine(config)
    pipeline = Pipeline(source, sink, engine, config, True, stop)
    recorder = _LatencySeries(pipeline.latency)
    pipeline.latency = recorder
    rss: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            rss.append((time.monotonic(), process.memory_info().rss))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    try:
        stats = pipeline.run()
    finally:
        done.set()
        sampler.join(5)
        source.close()
        engine.close()
        server.kill()
    seconds = time.monotonic() - start
    series = recorder.series
    # RSS "start" is taken once the first 5 % of frames are through (buffers, encoder and caches allocated).
    warm_t = series[max(0, len(series) // 20 - 1)][0] if series else start
    warm = [r for t, r in rss if t >= warm_t] or [r for _, r in rss]
    windows = []
    for chunk in np.array_split(np.array([lat for _, lat in series]) * 1000.0, 10):
        if len(chunk):
            windows.append({"frames": len(chunk), "p50_ms": round(float(np.percentile(chunk, 50)), 2),
                            "p99_ms": round(float(np.percentile(chunk, 99)), 2)})
    mb = 1024 * 1024
    result = {
        "frames": stats.frames_in, "frames_out": stats.frames_out, "dropped": stats.dropped,
        "restarts": stats.restarts, "size": size, "camera_fps": fps, "seconds": round(seconds, 1),
        "rss_before_mb": round(rss_before / mb, 1),
        "rss_start_mb": round(warm[0] / mb, 1) if warm else None,
        "rss_end_mb": round(warm[-1] / mb, 1) if warm else None,
        "rss_max_mb": round(max(warm) / mb, 1) if warm else None,
        "latency_windows": windows,
        "latency_ms": stats.latency_ms,
        "frames_in_file": _ffprobe_frames(out),
    }
    result["rss_drift_mb"] = round(result["rss_end_mb"] - result["rss_start_mb"], 1) if warm else None
    if windows:
        result["latency_first"] = f"{windows[0]['p50_ms']:.1f}/{windows[0]['p99_ms']:.1f}"
        result["latency_last"] = f"{windows[-1]['p50_ms']:.1f}/{windows[-1]['p99_ms']:.1f}"
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
