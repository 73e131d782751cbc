"""Live camera fleets on Ray: one restartable actor per camera, and a supervisor that never waits.

Each camera is a named actor (`unweather-cam-NAME`) created with `max_restarts=-1` and
`max_task_retries=-1`. Its constructor builds the engine and starts the camera's loop in a thread, so
when the actor's process or node dies, Ray's restart runs the loop again (on another node when its own
is gone). Every (re)start records into a new segment `NAME-00001.ts`, `NAME-00002.ts`, ... in the
camera's folder; segments are written in place in MPEG-TS, which stays playable up to the last packet
when its writer is killed, so nothing already recorded is lost. The folder must be on storage every
node sees.

The supervisor (`Fleet`) asks every camera for its status with a timeout and reads the state of the
ones that do not answer from Ray's control store: a camera Ray cannot place (no node has the GPU/CPU
share it asks for) is reported as pending, never waited for.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import threading
import time
from typing import Any

from unweather.cluster.chunks import count_video_packets
from unweather.cluster.ray_archive import Runner, default_runner, open_engine, worker_config
from unweather.cluster.ray_connect import require_ray
from unweather.engine.base import Engine
from unweather.errors import UnweatherError
from unweather.fileio import write_text_atomic
from unweather.redact import redact
from unweather.sources_file import Source, apply_options

log = logging.getLogger(__name__)

ACTOR_PREFIX = "unweather-cam-"


@dataclasses.dataclass
class FleetOptions:
    """How cameras are placed and supervised.

    Attributes:
        gpus_per_camera: GPU share of each camera's actor (0.25: four cameras per GPU); None: 0.25 when
            the cluster has GPUs, else 0.
        cpus_per_camera: CPUs each camera reserves; None: 0 with a GPU share (the actor waits on the
            GPU; ray-project/ray#44687), else 1.
        segment_ext: container of the recorded segments (".ts" survives a killed writer).
        retry_seconds: pause before a camera whose stream ended or failed starts its next segment.
        call_timeout: seconds any call to Ray may wait.
        report_seconds: how often `Fleet.run` logs each camera's FPS, drops and restarts.
    """

    gpus_per_camera: float | None = None
    cpus_per_camera: float | None = None
    segment_ext: str = ".ts"
    retry_seconds: float = 2.0
    call_timeout: float = 10.0
    report_seconds: float = 10.0


class CountingEngine(Engine):
    """Wraps an engine to count the frames it restores, for live FPS while a stream runs.

    A video network's steps are counted too; its state stays with each segment's pipeline (one
    `VideoSession` per run of the camera's stream), never with this engine, so cameras never share one.
    """

    def __init__(self, inner: Engine, window: float = 5.0) -> None:
        super().__init__(inner.device, inner.precision, inner.multiple)
        self.inner = inner
        self.backend = inner.backend
        self.stateful = bool(getattr(inner, "stateful", False))
        self.state_channels = int(getattr(inner, "state_channels", 0))
        self.model = getattr(inner, "model", "")
        # The inner engine tiles its calls itself; shown here so a run sees the setting.
        self.tile, self.tile_overlap = getattr(inner, "tile", None), getattr(inner, "tile_overlap", 0)
        self.frames = 0
        self.window = window
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def __call__(self, frames):
        out = self.inner(frames)
        self._count(int(frames.shape[0]))
        return out

    def step(self, frames, state):
        out = self.inner.step(frames, state)
        self._count(int(frames.shape[0]))
        return out

    def _count(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames += n
            self._recent.append((now, n))
            while self._recent and self._recent[0][0] < now - self.window:
                self._recent.popleft()

    def infer(self, frames):
        return self.inner.infer(frames)

    def fps(self) -> float:
        """Frames per second over the last `window` seconds."""
        now = time.monotonic()
        with self._lock:
            n = sum(count for t, count in self._recent if t >= now - self.window)
        return n / self.window

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def segment_paths(folder: str, name: str, ext: str = ".ts") -> list[str]:
    """The camera's recorded segments in order."""
    pattern = re.compile(rf"^{re.escape(name)}-(\d{{5}}){re.escape(ext)}$")
    if not os.path.isdir(folder):
        return []
    found = sorted((int(m.group(1)), n) for n in os.listdir(folder) if (m := pattern.match(n)))
    return [os.path.join(folder, n) for _, n in found]


class CameraWorker:
    """The body of a camera's actor: the loop that records segments, and its live status."""

    def __init__(self, source: Source, config: Any, folder: str, runner: Runner | None = None,
                 segment_ext: str = ".ts", retry_seconds: float = 2.0) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self.where = {"node": ctx.get_node_id(), "worker": ctx.get_worker_id(), "pid": os.getpid(),
                      "host": os.uname().nodename, "gpus": ",".join(str(g) for g in ray.get_gpu_ids())}
        self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.source = source
        self.config = config
        self.folder = folder
        self.ext = segment_ext
        self.retry_seconds = retry_seconds
        self.runner = runner or default_runner()
        self.engine = CountingEngine(open_engine(config))
        self.state = "starting"
        self.segment = ""
        self.dropped = 0
        self.error = ""
        self.started = time.time()
        self._stop = threading.Event()
        os.makedirs(folder, exist_ok=True)
        previous = segment_paths(folder, source.name, segment_ext)
        if previous:
            # A writer killed before its first flush leaves a segment with nothing playable in it.
            self._drop_if_empty(previous[-1])
        self._thread = threading.Thread(target=self._loop, name=f"camera-{source.name}", daemon=True)
        self._thread.start()

    def _next_segment(self) -> str:
        existing = segment_paths(self.folder, self.source.name, self.ext)
        number = int(os.path.basename(existing[-1])[len(self.source.name) + 1:][:5]) + 1 if existing else 1
        return os.path.join(self.folder, f"{self.source.name}-{number:05d}{self.ext}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.segment = self._next_segment()
            self.state = "running"
            try:
                stats = self.runner(self.source.input, self.segment, self.config, engine=self.engine,
                                    stop_event=self._stop)
                stats = stats.to_dict() if hasattr(stats, "to_dict") else (stats or {})
                self.dropped += int(stats.get("dropped", 0) or 0)
                self.error = ""
            except Exception as exc:  # noqa: BLE001 - a camera that fails is retried, never given up
                self.error = f"{type(exc).__name__}: {redact(str(exc))}"
                log.warning("camera %s: %s", self.source.name, self.error)
            self._drop_if_empty(self.segment)
            if self._stop.is_set():
                break
            self.state = "retrying"
            self._stop.wait(self.retry_seconds)
        self.state = "stopped"

    @staticmethod
    def _drop_if_empty(path: str) -> None:
        # A stream that never delivered a frame leaves a header-only file that players reject.
        try:
            if os.path.exists(path) and count_video_packets(path) == 0:
                os.remove(path)
        except Exception:  # noqa: BLE001 - an unreadable stub is as empty as it gets
            if os.path.exists(path):
                os.remove(path)

    def status(self) -> dict:
        """Live status: state, frames, FPS over the last seconds, drops, segment, where it runs (node and
        worker, also as the one-entry lists `nodes` and `workers` that every input's stats have)."""
        return {"name": self.source.name, "state": self.state, "frames": self.engine.frames,
                "fps": round(self.engine.fps(), 2), "dropped": self.dropped,
                "segment": self.segment, "segments": len(segment_paths(self.folder, self.source.name, self.ext)),
                "error": self.error, "restarted": self.restarted, "uptime": time.time() - self.started,
                **self.where, "nodes": [self.where["node"]], "workers": [self.where["worker"]]}

    def stop(self, timeout: float = 10.0) -> dict:
        """Stop the loop (the current segment is finished) and return the last status."""
        self._stop.set()
        self._thread.join(timeout)
        return self.status()


def _actor_info(actor) -> dict:
    # Ray's state API needs the dashboard; the control store answers without it (pinned to Ray 2.60).
    try:
        from ray._private import state

        return state.actors(actor._actor_id.hex()) or {}
    except (AttributeError, ImportError, KeyError):
        return {}


class Fleet:
    """Start one actor per camera, watch them, and stop them.

    Args:
        sources: the cameras (names must be unique; they name the actors).
        output_dir: each camera records into `output_dir/NAME/` unless its source sets an output folder.
        config: the `RunConfig` every camera starts from (each source's options override it).
        options: placement and supervision.
        runner: the pipeline (default `unweather.stream.run`).
    """

    def __init__(self, sources: list[Source], output_dir: str, config: Any = None,
                 options: FleetOptions | None = None, runner: Runner | None = None) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise UnweatherError("camera names must be unique")
        self.sources = list(sources)
        self.output_dir = output_dir
        self.config = config
        self.options = options or FleetOptions()
        self.runner = runner
        self.actors: dict[str, Any] = {}

    def folder(self, source: Source) -> str:
        """Where a camera's segments go."""
        if source.output:
            return source.output.rstrip("/" + os.sep) if source.output.endswith(("/", os.sep)) \
                else os.path.dirname(source.output) or "."
        return os.path.join(self.output_dir, source.name)

    def _shares(self) -> tuple[float, float]:
        ray = require_ray()
        gpus = self.options.gpus_per_camera
        if gpus is None:
            gpus = 0.25 if ray.cluster_resources().get("GPU", 0) else 0.0
        cpus = self.options.cpus_per_camera
        if cpus is None:
            cpus = 0.0 if gpus else 1.0
        return gpus, cpus

    def start(self, sources: list[Source] | None = None) -> None:
        """Create the cameras' actors (all of `self.sources`, or `sources` added to the fleet)."""
        ray = require_ray()
        config = self.config
        if config is None:
            from unweather.stream import RunConfig

            config = RunConfig()
        gpus, cpus = self._shares()
        if sources is not None:
            self.sources += [s for s in sources if s.name not in {x.name for x in self.sources}]
        worker = ray.remote(CameraWorker)
        for source in sources if sources is not None else self.sources:
            name = ACTOR_PREFIX + source.name
            try:
                ray.get_actor(name)
            except ValueError:
                pass
            else:
                raise UnweatherError(f"camera {source.name} is already running on this cluster")
            self.actors[source.name] = worker.options(
                name=name, max_restarts=-1, max_task_retries=-1, num_gpus=gpus, num_cpus=cpus,
                max_concurrency=2,
            ).remote(source, worker_config(apply_options(config, source.options)), self.folder(source),
                     self.runner, self.options.segment_ext, self.options.retry_seconds)
            log.info("camera %s: asked for %g GPU, %g CPU", source.name, gpus, cpus)

    def poll(self) -> dict[str, dict]:
        """Every camera's status; those that do not answer within the call timeout get Ray's view.

        States: running/retrying/starting (answered), pending (Ray cannot place it: no capacity),
        restarting (its process or node died; Ray is bringing it back), dead, unknown.
        """
        ray = require_ray()
        refs = {name: actor.status.remote() for name, actor in self.actors.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.options.call_timeout)
        ready = set(ready)
        report = {}
        for name, ref in refs.items():
            info = _actor_info(self.actors[name])
            restarts = int(info.get("NumRestarts", 0) or 0)
            if ref in ready:
                try:
                    report[name] = {**ray.get(ref, timeout=self.options.call_timeout), "restarts": restarts}
                    continue
                except ray.exceptions.RayError as exc:
                    error = str(exc).splitlines()[0]
            else:
                ray.cancel(ref)
                error = ""
            gcs_state = str(info.get("State", ""))
            state = {"PENDING_CREATION": "pending", "DEPENDENCIES_UNREADY": "pending",
                     "RESTARTING": "restarting", "DEAD": "dead", "ALIVE": "unresponsive"}.get(gcs_state, "unknown")
            if state == "pending":
                gpus, cpus = self._shares()
                error = f"no node has {gpus:g} GPU and {cpus:g} CPU free"
            report[name] = {"name": name, "state": state, "restarts": restarts, "error": error}
        return report

    def pending(self) -> list[str]:
        """Cameras that Ray cannot place right now."""
        return [name for name, s in self.poll().items() if s["state"] == "pending"]

    def stop(self) -> dict[str, dict]:
        """Stop every camera (its segment is finished), then remove the actors; returns last statuses."""
        ray = require_ray()
        timeout = self.options.call_timeout
        refs = {name: actor.stop.remote(timeout) for name, actor in self.actors.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout + 5)
        final = {}
        for name, ref in refs.items():
            if ref in ready:
                try:
                    final[name] = ray.get(ref, timeout=timeout)
                except ray.exceptions.RayError as exc:
                    final[name] = {"name": name, "state": "dead", "error": str(exc).splitlines()[0]}
            else:
                final[name] = {"name": name, "state": "pending", "error": "did not answer"}
            ray.kill(self.actors[name], no_restart=True)
        self.actors.clear()
        return final

    def supervise(self, duration: float | None = None, stop_event: threading.Event | None = None,
                  status_path: str | None = None) -> None:
        """Log each camera's state, FPS, drops and restarts every `report_seconds` until stopped.

        Also writes them to `status_path` (JSON, replaced atomically) when given. Ctrl-C stops.
        """
        stop_event = stop_event or threading.Event()
        began = time.monotonic()
        try:
            while not stop_event.is_set():
                report = self.poll()
                for name, s in sorted(report.items()):
                    log.info("%-20s %-12s fps %6.1f frames %8d drops %5d restarts %3d %s", name, s["state"],
                             s.get("fps", 0.0), s.get("frames", 0), s.get("dropped", 0), s["restarts"],
                             s.get("error", ""))
                if status_path:
                    _write_json(status_path, {"time": time.time(), "cameras": report})
                left = None if duration is None else duration - (time.monotonic() - began)
                if left is not None and left <= 0:
                    break
                stop_event.wait(self.options.report_seconds if left is None
                                else min(left, self.options.report_seconds))
        except KeyboardInterrupt:
            log.info("stopping the cameras")

    def run(self, duration: float | None = None, stop_event: threading.Event | None = None,
            status_path: str | None = None) -> dict:
        """Start the fleet, supervise it until `duration` or `stop_event`, then stop it."""
        began = time.monotonic()
        self.start()
        try:
            self.supervise(duration, stop_event, status_path)
        finally:
            final = self.stop()
        return {"cameras": final, "seconds": time.monotonic() - began}


def _write_json(path: str, data: dict) -> None:
    import json

    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")
