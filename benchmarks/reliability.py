"""Inject faults into real servers on loopback and measure what unweather loses; print a RELIABILITY section.

Four parts, each against real processes:

* source: a GStreamer RTSP camera (tests/rtsp_server.py) is killed, stopped, frozen (SIGSTOP) and
  finally not brought back, under one `NetworkSource`; a TCP server that never answers is opened.
  Reported: restarts, time to recover, frames lost while connected, time to give up.
* pipeline: `unweather run` (a subprocess) on a live RTSP camera that is killed and brought back,
  frozen, and lost for good; SIGINT and SIGTERM during a file run; SIGKILL during a live recording;
  a disk that fills during a run (a 400 kB tmpfs when root may mount one, else a file size limit).
  Each output is checked with ffprobe.
* bad inputs: missing, garbage, truncated, zero-frame, unknown codec, no images, huge images (refused
  with one line), a folder with damaged and non-image files and an odd frame size (processed).
* soak: at least 20,000 frames through the live pipeline (identity model, small frames) from the
  RTSP camera; RSS, latency percentiles and load average per window; frames lost by cause.

    python benchmarks/reliability.py [--soak-frames 20000] [--skip-soak] [--out benchmarks/results]
    python benchmarks/reliability.py --render benchmarks/results/reliability-*.json   # the README section

Needs /usr/bin/python3 with GStreamer's RTSP server (scripts/install-system.sh) and ffprobe.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback servers live with the tests
sys.path.insert(0, str(ROOT))

# After the path is set: this script runs from a checkout, not an installed package.
from netservers import RtspServer, SilentTcpServer, gst_rtsp_missing  # noqa: E402

from unweather.errors import UnweatherError  # noqa: E402
from unweather.machine import save_results  # noqa: E402
from unweather.stream.network import NetworkOptions, NetworkSource  # noqa: E402

logger = logging.getLogger("reliability")

SECRET = "hunter2"  # the camera password: it must appear in no message or stats file


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
    source = NetworkSource(server.url(f"viewer:{SECRET}"), options)
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
    credentials_leaked = SECRET in json.dumps(events) + str(give_up["message"])
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


class _Cli:
    """`unweather run` in a subprocess with its stderr collected line by line."""

    def __init__(self, *args: str, preexec: Callable[[], None] | None = None) -> None:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.started = time.monotonic()
        # preexec only sets a resource limit on the child (no locks taken), safe beside our threads.
        self.proc = subprocess.Popen([sys.executable, "-m", "unweather.cli", "run", *args],
                                     env={**os.environ, "PYTHONPATH": path}, preexec_fn=preexec,  # noqa: PLW1509
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("unweather: error:")]

    @property
    def traceback(self) -> bool:
        return any("Traceback" in line for line in self.lines)

    def wait_line(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None (and the process killed) when it did not end within `timeout` seconds."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None
        self.ended = time.monotonic()
        self._thread.join(10)
        return code


def _stats(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fault(fault: str, result: str, lost: int | str | None, **raw: Any) -> dict[str, Any]:
    """One row of the faults table: what was done, what happened, frames lost; `raw` keeps the measurements."""
    return {"fault": fault, "result": result, "frames_lost": lost, **raw}


def _written_not_in_file(report: dict[str, Any], in_file: int | None) -> int | None:
    """Frames the run says it wrote that the file does not hold (None when either is unknown)."""
    if in_file is None or report.get("frames_out") is None:
        return None
    return report["frames_out"] - in_file


def _camera_recording(workdir: Path, name: str, net: list[str], fault: str, times: int, down_s: float,
                      max_frames: int) -> dict[str, Any]:
    """Record a password-protected camera with `unweather run` while it is killed or frozen `times` times."""
    server = RtspServer(workdir, user="viewer", password=SECRET).start()
    out, stats = workdir / f"{name}.mkv", workdir / f"{name}.json"
    cli = _Cli(server.url(f"viewer:{SECRET}"), "-o", str(out), "--max-frames", str(max_frames), "--stats",
               str(stats), "--give-up-after", "60", *net)
    try:
        cli.wait_line("receiving")
        for _ in range(times):
            time.sleep(3.0)
            if fault == "kill":
                server.kill()
                time.sleep(down_s)
                server.start()
            else:
                server.pause()
                time.sleep(down_s)
                server.resume()
        code = cli.wait(120)
    finally:
        server.kill()
    report = _stats(stats)
    in_file = _ffprobe_frames(out)
    what = "killed and restarted" if fault == "kill" else "frozen (SIGSTOP)"
    return _fault(
        f"camera {what} {times}x, {down_s:.0f} s each, during `unweather run`",
        f"run went on ({report.get('reconnections')} reconnects), exit {code}; one file, {in_file} frames, plays",
        _written_not_in_file(report, in_file),
        exit_code=code, restarts=report.get("reconnections"), frames_in=report.get("frames_in"),
        frames_out=report.get("frames_out"), dropped_live=report.get("dropped"), frames_in_file=in_file,
        secret_in_output=SECRET in "\n".join(cli.lines) + json.dumps(report))


def _full_disk(workdir: Path, clip: Path, clip_frames: int) -> list[dict[str, Any]]:
    """A disk that fills during a run: a tiny tmpfs when this process may mount one, else a file size limit."""
    rows = []
    mount = workdir / "tiny"
    mount.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True, check=False
    ).returncode == 0
    disk = "a 400 kB tmpfs" if mounted else "a 400 kB file size limit (RLIMIT_FSIZE)"
    try:
        for what, name in [("video", "out.mkv"), ("image folder", "frames/")] if mounted else [("video", "out.mkv")]:
            out, stats = mount / name, workdir / f"full-{what.replace(' ', '-')}.json"
            cli = _Cli(str(clip), "-o", str(out), "--model", "identity", "--crf", "0", "--quiet", "--stats",
                       str(stats), preexec=None if mounted else _limit_file_size)
            code = cli.wait(120)
            took = (cli.ended or time.monotonic()) - cli.started
            report = _stats(stats)
            message = cli.errors[0].removeprefix("unweather: error: ").replace(f"{mount}/", "") if cli.errors else ""
            rows.append(_fault(
                f"disk full during a run ({what} output on {disk})",
                f"exit {code} after {took:.1f} s, {report.get('frames_in')} of {clip_frames} frames read; "
                f"{len(cli.errors)} error line: `{message}`",
                "n/a", exit_code=code, seconds=round(took, 2), frames_in=report.get("frames_in"),
                frames_out=report.get("frames_out"), error_lines=cli.errors, traceback=cli.traceback,
                real_tmpfs=mounted, clip_frames=clip_frames))
            if out.is_dir():  # an empty disk again for the next case
                shutil.rmtree(out, ignore_errors=True)
            else:
                out.unlink(missing_ok=True)
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], capture_output=True, check=False)
    return rows


def _limit_file_size() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))


def bad_inputs(workdir: Path) -> dict[str, Any]:
    """Every kind of bad input through `unweather run`: exit code, error lines, traceback, seconds."""
    from media import make_images, make_video, png_header_only

    folder = workdir / "bad"
    folder.mkdir()
    cases: dict[str, Path] = {"missing file": folder / "nope.mp4"}
    cases["garbage bytes"] = folder / "garbage.mp4"
    cases["garbage bytes"].write_bytes(os.urandom(4096))
    full = make_video(folder / "full.mp4", frames=10, size=(64, 48)).read_bytes()
    cases["truncated MP4"] = folder / "cut.mp4"
    cases["truncated MP4"].write_bytes(full[: len(full) // 2])
    cases["zero-frame video"] = make_video(folder / "zero.mkv", frames=0, audio=True)
    good = make_video(folder / "good.mkv", frames=3, size=(32, 24), audio=False).read_bytes()
    cases["unsupported codec"] = folder / "unknown.mkv"
    cases["unsupported codec"].write_bytes(good.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ"))
    cases["folder without images"] = folder / "texts"
    cases["folder without images"].mkdir()
    (cases["folder without images"] / "readme.txt").write_text("hello")
    cases["12000x12000 image"] = png_header_only(folder / "huge.png", 12_000, 12_000)
    cases["100000x100000 image"] = png_header_only(folder / "giant.png", 100_000, 100_000)
    results = []
    for name, path in cases.items():
        cli = _Cli(str(path), "-o", str(folder / "out.mkv"), "--model", "identity", "--quiet")
        code = cli.wait(120)
        results.append({"input": name, "exit_code": code, "error_lines": cli.errors, "traceback": cli.traceback,
                        "seconds": round((cli.ended or time.monotonic()) - cli.started, 2),
                        "output_left": (folder / "out.mkv").exists()})
    # Inputs a user wants processed anyway: damaged and non-image files in a folder, an odd frame size.
    mixed = folder / "mixed"
    make_images(mixed, count=3, size=(41, 29))
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    odd = make_video(folder / "odd.mkv", frames=5, size=(33, 17), audio=False, codec="ffv1", options={})
    skipped = []
    for name, path, out in (("folder with a damaged image and a text file", mixed, folder / "mixed_out/"),
                            ("33x17 video", odd, folder / "odd_out.mp4")):
        cli = _Cli(str(path), "-o", str(out), "--model", "identity", "--quiet")
        code = cli.wait(120)
        produced = (len(list(out.iterdir())) if out.is_dir() else _ffprobe_frames(out)) if out.exists() else 0
        notes = [line.replace(f"{folder}/", "") for line in cli.lines if "skipping" in line or " is odd" in line]
        skipped.append({"input": name, "exit_code": code, "warnings": notes, "traceback": cli.traceback,
                        "outputs": produced})
    return {"refused": results, "processed": skipped}


def pipeline_faults(workdir: Path) -> dict[str, Any]:
    """Faults during `unweather run`: camera restarts and freezes, a camera gone for good, signals, full disk."""
    net = ["--model", "identity", "--open-timeout", "2", "--read-timeout", "2", "--stall-timeout", "4"]
    faults = [_camera_recording(workdir, "restarts", net, "kill", 3, 2.0, 400),
              _camera_recording(workdir, "frozen", net, "stall", 2, 6.0, 400)]

    # The camera never comes back: the run ends after --give-up-after with one line and a good file.
    server = RtspServer(workdir, user="viewer", password=SECRET).start()
    out, stats = workdir / "gone.mkv", workdir / "gone.json"
    cli = _Cli(server.url(f"viewer:{SECRET}"), "-o", str(out), "--stats", str(stats), "--give-up-after", "5", *net)
    cli.wait_line("receiving")
    time.sleep(2.0)
    server.kill()
    gone = time.monotonic()
    code = cli.wait(60)
    took = time.monotonic() - gone
    report = _stats(stats)
    in_file = _ffprobe_frames(out)
    faults.append(_fault(
        "camera gone for good (`--give-up-after 5`)",
        f"run ended {took:.1f} s after the camera died, exit {code}, {len(cli.errors)} error line; "
        f"the file plays ({in_file} frames)",
        _written_not_in_file(report, in_file), exit_code=code, ended_after_s=round(took, 1),
        error_lines=cli.errors, frames_in_file=in_file, frames_out=report.get("frames_out"),
        secret_in_output=SECRET in "\n".join(cli.lines) + json.dumps(report)))

    # SIGINT and SIGTERM during an offline file run.
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
        faults.append(_fault(
            f"{sig.name} during a file run",
            f"exit {code}; the MP4 is finished and plays: {in_file} frames, the run wrote {report.get('frames_out')}",
            _written_not_in_file(report, in_file), exit_code=code, frames_out=report.get("frames_out"),
            frames_in_file=in_file))

    # SIGKILL during a live recording: what was received in the last fragment (keyframe interval) may be lost.
    server = RtspServer(workdir).start()
    out = workdir / "killed.mkv"
    cli = _Cli(server.url(), "-o", str(out), *net)
    cli.wait_line("receiving")
    received_at = time.monotonic()
    time.sleep(6.0)
    cli.proc.send_signal(signal.SIGKILL)
    recorded_s = time.monotonic() - received_at
    cli.wait(10)
    server.kill()
    in_file = _ffprobe_frames(out)
    size = out.stat().st_size if out.exists() else 0
    sent = round(recorded_s * 25)
    faults.append(_fault(
        f"SIGKILL {recorded_s:.0f} s into a live recording",
        f"the file plays with {in_file} frames of about {sent} received" if in_file else
        f"the file is not playable ({size} bytes on disk)",
        f"about {sent - (in_file or 0)} (the last fragment)", frames_in_file=in_file, file_bytes=size,
        frames_received_about=sent))

    faults += _full_disk(workdir, clip, 3000)
    return {"faults": faults}


def _make_clip(path: Path, frames: int, size: tuple[int, int] = (160, 96), rate: int = 25) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[..., 1] = (np.arange(size[0]) * 3 + i * 5) % 256
            img[..., 2] = (np.arange(size[1])[:, None] * 7 + i * 3) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _resident(n: int, dtype: str) -> Any:
    """An array of `n` values whose pages are all written now, so filling it later does not grow the RSS."""
    import numpy as np

    return np.full(n, -1, dtype=dtype)


class _LatencySeries:
    """Stands in for the pipeline's latency window and also keeps (time, latency) for every frame.

    Kept in arrays allocated up front: a list growing by one entry per frame would itself look like a leak.
    """

    def __init__(self, inner: Any, capacity: int) -> None:
        self.inner = inner
        self.times = _resident(capacity, "float64")
        self.values = _resident(capacity, "float64")
        self.count = 0

    def add(self, seconds: float) -> None:
        self.inner.add(seconds)
        if self.count < len(self.times):
            self.times[self.count] = time.monotonic()
            self.values[self.count] = seconds
            self.count += 1

    def percentiles(self) -> dict[str, float | None]:
        return self.inner.percentiles()


class _PtsSeries:
    """Wraps a source's `frames()` to keep every received frame's pts: gaps are frames the network lost."""

    def __init__(self, source: Any, capacity: int) -> None:
        self.pts = _resident(capacity, "int64")
        self.count = 0
        self._frames = source.frames
        source.frames = self.frames

    def frames(self) -> Any:
        for item in self._frames():
            if self.count < len(self.pts):
                self.pts[self.count] = item.pts
                self.count += 1
            yield item

    def lost(self, fps: float) -> int:
        """Frames missing between received ones (pts steps over 1.5 frame intervals)."""
        import numpy as np

        if self.count < 2:
            return 0
        interval = 90_000 / fps
        steps = np.diff(self.pts[: self.count])
        gaps = steps[steps > 1.5 * interval]
        return int(np.round(gaps / interval).sum() - len(gaps))


def _training_jobs() -> int:
    """Other processes training models on this machine (they share its CPU with the soak)."""
    import psutil

    count = 0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "unweather.cli train" in cmd:
            count += 1
    return count


def soak(workdir: Path, frames: int, fps: int, size: str = "160x96", model: str = "identity",
         windows: int = 10) -> dict[str, Any]:
    """`frames` frames from a live RTSP camera through the live pipeline; RSS, load and latency per window."""
    import numpy as np
    import psutil

    from unweather.machine import load_average
    from unweather.stream.config import RunConfig
    from unweather.stream.pipeline import Pipeline
    from unweather.stream.runner import open_engine, open_sink
    from unweather.stream.sources import open_source

    process = psutil.Process()
    rss_before = process.memory_info().rss
    load_start = load_average()
    server = RtspServer(workdir, fps=fps, size=size, user="viewer", password=SECRET).start()
    config = RunConfig(model=model, mode="live", max_frames=frames, progress=False, open_timeout=5.0,
                       read_timeout=5.0, give_up_after=60.0, stats_path=None)
    stop = threading.Event()
    source = open_source(server.url(f"viewer:{SECRET}"), config, True, False, stop)
    pts = _PtsSeries(source, frames + 100)
    out = workdir / "soak.mkv"
    sink = open_sink(str(out), source, config, True, gpu=False)
    engine = open_engine(config)
    pipeline = Pipeline(source, sink, engine, config, True, stop)
    recorder = _LatencySeries(pipeline.latency, frames + 100)
    pipeline.latency = recorder
    samples: list[tuple[float, int, float]] = []  # (time, rss, 1-minute load): one a second, a few kB in all
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            samples.append((time.monotonic(), process.memory_info().rss, os.getloadavg()[0]))

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
    times, latencies = recorder.times[: recorder.count], recorder.values[: recorder.count] * 1000.0
    mb = 1024 * 1024
    rows = []
    for chunk in np.array_split(np.arange(recorder.count), windows):
        if not len(chunk):
            continue
        t0, t1 = times[chunk[0]], times[chunk[-1]]
        lat = latencies[chunk]
        inside = [s for s in samples if t0 <= s[0] <= t1] or [min(samples, key=lambda s: abs(s[0] - t1))]
        rows.append({"frames": len(chunk), "seconds": round(t1 - t0, 1),
                     "p50_ms": round(float(np.percentile(lat, 50)), 2),
                     "p95_ms": round(float(np.percentile(lat, 95)), 2),
                     "p99_ms": round(float(np.percentile(lat, 99)), 2),
                     "rss_mb": round(inside[-1][1] / mb, 1),
                     "load_1min": round(float(np.mean([s[2] for s in inside])), 2)})
    in_file = _ffprobe_frames(out)
    # "Start" is the end of the first window: buffers, encoder and caches are allocated by then.
    rss_start, rss_end = rows[0]["rss_mb"], rows[-1]["rss_mb"]
    first, last = rows[0], rows[-1]
    return {
        "frames": stats.frames_in, "frames_out": stats.frames_out, "frames_in_file": in_file,
        "dropped_live": stats.dropped, "lost_by_network": pts.lost(fps),
        "written_not_in_file": None if in_file is None else stats.frames_out - in_file,
        "restarts": stats.reconnections, "size": size, "model": model, "camera_fps": fps,
        "seconds": round(seconds, 1), "fps": round(stats.frames_out / seconds, 1),
        "rss_before_mb": round(rss_before / mb, 1), "rss_start_mb": rss_start, "rss_end_mb": rss_end,
        "rss_max_mb": round(max(s[1] for s in samples) / mb, 1) if samples else None,
        "rss_drift_mb": round(rss_end - rss_start, 1),
        "latency_windows": rows, "latency_ms": stats.latency_ms,
        "latency_first": f"{first['p50_ms']:.1f}/{first['p99_ms']:.1f}",
        "latency_last": f"{last['p50_ms']:.1f}/{last['p99_ms']:.1f}",
        "load_start": load_start, "load_end": load_average(), "training_jobs": _training_jobs(),
    }


def describe_fault(item: dict[str, Any]) -> tuple[str, str]:
    """What happened and the frames lost (written by the run but missing from its file), from a fault's record."""
    fault, code = item["fault"], item.get("exit_code")
    in_file, written = item.get("frames_in_file"), item.get("frames_out")
    lost = "-" if in_file is None or written is None else str(written - in_file)
    if in_file:
        kept = f"one file, {in_file} frames, plays"
    else:
        kept = f"no frame had been written ({written or 0}), so no file is left"
    if fault.startswith("camera gone"):
        return (f"run ended {item['ended_after_s']} s after the camera died, exit {code}, "
                f"{len(item['error_lines'])} error line; {kept}"), lost
    if fault.startswith("camera"):
        return (f"run went on ({item['restarts']} reconnects; {item['dropped_live']} frames dropped by live mode), "
                f"exit {code}; {kept}"), lost
    if fault.startswith(("SIGINT", "SIGTERM")):
        return f"exit {code}; the run wrote {written} frames; {kept}", lost
    if fault.startswith("SIGKILL"):
        sent = item.get("frames_received_about")
        if in_file:
            missing = max(0, sent - in_file)
            return (f"{kept} (the camera sent about {sent} while recording)",
                    f"{missing} (in the pipeline or the last fragment)" if missing else "0")
        return f"not playable: {item['file_bytes']} bytes, no frame had reached the file", "-"
    if fault.startswith("disk full"):
        message = re.sub(r"\S*/tiny/", "", item["error_lines"][0]).removeprefix("unweather: error: ") \
            if item.get("error_lines") else ""
        return (f"exit {code} after {item['seconds']:.1f} s, {item['frames_in']} of {item.get('clip_frames', 3000)} "
                f"frames read; {len(item.get('error_lines', []))} error line: `{message}`"), "-"
    return str(item.get("result", "")), lost


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def reliability_text(results: dict[str, Any], command: str) -> str:
    """The README's "## Reliability" section, from the measured results."""
    machine = results.get("machine", {})
    cpu = machine.get("cpu") or {}
    commit = str((machine.get("git") or {}).get("commit"))[:8]
    soak_ = results.get("soak") or {}
    load = soak_.get("load_start") or machine.get("load_average")
    lines = ["## Reliability", "",
             ("Faults injected into real processes on loopback (a GStreamer RTSP camera that wants a password, "
              "`unweather run` in a subprocess), every output checked with ffprobe. Made by:"), "",
             "```bash", command, "```", "",
             (f"Commit {commit}, {cpu.get('model', 'CPU')} with {cpu.get('threads', '?')} threads, "
              + (f"shared with {soak_.get('training_jobs')} training job(s) and other benchmarks (load average "
                 f"{load}): times are this loaded machine's"
                 if soak_.get("training_jobs") else f"no training running (load average {load} at the soak's start)")
              + "; the soak's load per window is in its table."), "",
             "| Fault injected | What happened | Frames lost (written, not in the file) |", "|---|---|---|"]
    src = results.get("source")
    if src:
        faults = src["faults"]
        recovered = sum(f["recovered"] for f in faults)
        worst = max((f["recovery_s"] or 0.0) for f in faults) if faults else 0.0
        kinds = ", ".join(f"{n}x {k}" for k, n in
                          sorted({k: sum(f["fault"] == k for f in faults) for k in {f["fault"] for f in faults}}
                                 .items()))
        lines.append(f"| camera faults under one network source: {kinds} | {recovered}/{len(faults)} recovered "
                     f"with backoff, at most {worst:.1f} s after the camera was back; {src['restarts_total']} "
                     f"reconnects | {src['frames_lost_while_connected']} of {src['frames_received']} while "
                     "connected |")
        give_up = src["give_up"]
        lines.append(f"| camera gone for good (give up after {give_up['configured_s']:.0f} s) | ended after "
                     f"{give_up['measured_s']} s: `{_cell(give_up['message'])}` | - |")
        silent = src["silent_server"]
        lines.append(f"| server that accepts and never answers | no hang: gave up after {silent['measured_s']} s "
                     f"(configured {silent['configured_s']:.0f} s) | - |")
    for item in (results.get("pipeline") or {}).get("faults", []):
        result, lost = describe_fault(item)
        lines.append(f"| {_cell(item['fault'])} | {_cell(result)} | {lost} |")
    bad = results.get("bad_inputs")
    if bad:
        refused = bad["refused"]
        clean = [r for r in refused if r["exit_code"] == 1 and len(r["error_lines"]) == 1 and not r["traceback"]]
        slowest = max(r["seconds"] for r in refused)
        lines.append(f"| bad inputs: {', '.join(r['input'] for r in refused)} | {len(clean)}/{len(refused)} "
                     f"refused with exit 1, one error line and no traceback, each within {slowest:.1f} s | - |")
        for item in bad["processed"]:
            warned = "; ".join(f"`{_cell(w)}`" for w in item["warnings"]) or "none"
            lines.append(f"| {item['input']} | processed: exit {item['exit_code']}, {item['outputs']} outputs"
                         f"{', a traceback' if item['traceback'] else ''}; warnings: {warned} | - |")
    leaked = SECRET in json.dumps({k: v for k, v in results.items() if k != "machine"})
    lines.append("| password in every camera URL | " + ("LEAKED into a message or stats file" if leaked else
                 "in no log line, error or stats file") + " | - |")
    if soak_:
        rows = soak_["latency_windows"]
        lines += ["", (f"Soak: {soak_['frames']:,} frames of {soak_['size']} from a {soak_['camera_fps']} fps RTSP "
                  f"camera through the live pipeline ({soak_['model']} model) in {soak_['seconds']:.0f} s. "
                  f"RSS {soak_['rss_start_mb']:.0f} MB after the first window, {soak_['rss_end_mb']:.0f} MB at "
                  f"the end ({soak_['rss_drift_mb']:+.1f} MB); {soak_['dropped_live']} frames dropped by live "
                  f"mode (oldest first, when the machine fell behind the camera), {soak_['lost_by_network']} "
                  f"missing from the camera's timestamps (never received), {soak_['written_not_in_file']} written "
                  "but missing from the file."), "",
                  "| Window | " + " | ".join(str(i + 1) for i in range(len(rows))) + " |",
                  "|---|" + "---|" * len(rows)]
        for key, label in (("p50_ms", "latency p50 (ms)"), ("p99_ms", "latency p99 (ms)"),
                           ("rss_mb", "RSS (MB)"), ("load_1min", "load (1 min)")):
            lines.append(f"| {label} | " + " | ".join(f"{r[key]:.1f}" for r in rows) + " |")
    lines += ["", ("Limits: a disk that fills during an offline MP4 leaves no playable file (MP4 writes its index at "
              "the end; Matroska and `--live` fragmented MP4 keep what reached the disk). More than 10 reconnects in "
              "a minute hold further attempts back until the minute is over (or the give-up time). SIGINT/SIGTERM "
              "finish every frame already read (a few queues' worth), which takes as long as the model needs for "
              "them; a second signal stops at once.")]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--soak-frames", type=int, default=20_000)
    parser.add_argument("--soak-fps", type=int, default=120)
    parser.add_argument("--soak-size", default="160x96")
    parser.add_argument("--soak-model", default="identity")
    parser.add_argument("--skip-source", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-bad-inputs", action="store_true")
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--render", type=Path, metavar="RESULTS.json",
                        help="only print the README section of a saved results file")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        print(reliability_text(saved, saved.get("command", "python benchmarks/reliability.py")), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    missing = gst_rtsp_missing()
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 1
    command = "python " + " ".join(["benchmarks/reliability.py", *sys.argv[1:]])
    results: dict[str, Any] = {"benchmark": "reliability", "command": command}
    with tempfile.TemporaryDirectory(prefix="unweather-reliability-") as tmp:
        workdir = Path(tmp)
        if not args.skip_source:
            results["source"] = source_faults(workdir)
        if not args.skip_pipeline:
            results["pipeline"] = pipeline_faults(workdir)
        if not args.skip_bad_inputs:
            results["bad_inputs"] = bad_inputs(workdir)
        if not args.skip_soak:
            results["soak"] = soak(workdir, args.soak_frames, args.soak_fps, args.soak_size, args.soak_model)
    from unweather.machine import machine_info

    results["machine"] = machine_info()
    results["readme_section"] = reliability_text(results, command)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = save_results(args.out / f"reliability-{stamp}.json", results)
    print(json.dumps({k: v for k, v in results.items() if k not in ("machine", "readme_section")}, indent=2))
    print()
    print(results["readme_section"])
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
