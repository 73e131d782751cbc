"""Many inputs on one machine: one pipeline per input, all sharing one engine that batches across streams.

Each input runs the usual `Pipeline` (decode -> upload -> infer -> download -> encode, in its own
threads, with its own queues: live streams still drop their oldest frame). Their infer stages call
an `EngineClient` instead of the engine; the client hands the frames to a `SharedEngine`, whose one
thread takes every request waiting at that moment, concatenates those of the same frame size (up to
`max_batch` frames) into one call, and gives each stream back its own slice. It never waits for a
batch to fill: when the engine keeps up, calls hold one stream's frames, as in a single run; when it
falls behind, the requests that piled up during the last call go together in the next. Live streams'
requests are served before offline ones.

A video network's steps batch the same way: each stream's pipeline keeps its own `VideoSession` (its
state, aligned with its own camera) and sends the frame with its state; the shared call concatenates
frames and states and hands each stream back its output and next state.

Inputs are files, folders of videos, URLs or a sources file (see `unweather.sources_file`; nothing
here imports Ray). One input that fails is reported by name and the others go on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unweather.errors import UnweatherError
from unweather.fileio import write_text_atomic
from unweather.media import is_image_file, is_url, is_video_file, video_output_extension
from unweather.redact import redact
from unweather.sources_file import Source, apply_options, is_sources_file, resolve_inputs
from unweather.stream.config import RunConfig

if TYPE_CHECKING:
    import torch

    from unweather.engine.base import Engine

logger = logging.getLogger(__name__)

# Settings that decide which engine a stream needs: streams that agree on them share one.
ENGINE_FIELDS = ("model", "backend", "precision", "device", "trust_checkpoint")


# -- the shared engine --------------------------------------------------------------------------------


class _Request:
    """Frames of one stream waiting for the engine, and where their result goes."""

    __slots__ = ("done", "error", "finished", "frames", "live", "ready", "result", "seq", "state")

    def __init__(self, frames: torch.Tensor, live: bool, seq: int, ready: torch.cuda.Event | None,
                 state: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.frames = frames
        self.state = state  # a video network's (background, weight), or None for a frame network
        self.live = live
        self.seq = seq
        self.ready = ready  # a CUDA event recorded after the frames were written, or None
        self.done: torch.cuda.Event | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()


class SharedEngine:
    """One engine serving the infer stages of several pipelines from one thread.

    Args:
        engine: the engine to share (an `unweather.engine.Engine` or anything callable the same way).
        max_batch: most frames in one call; requests bigger than this go alone. None: 8, or the
            batch limit of a TensorRT engine's profile.
        timeout: seconds a client waits for its result before its stream fails.
        progress: a tqdm bar to advance by the frames restored, or None.
    """

    def __init__(self, engine: Engine, max_batch: int | None = None, timeout: float = 600.0,
                 progress: Any = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise UnweatherError(f"the shared engine's batch must be at least 1, not {max_batch}.")
        self.engine = engine
        self.max_batch = max_batch if max_batch is not None else default_max_batch(engine)
        self.timeout = timeout
        self.calls = 0
        self.frames = 0
        self.requests = 0
        self.busy_s = 0.0
        self.batch_sizes: Counter[int] = Counter()
        self.streams_per_call: Counter[int] = Counter()
        self.clients: list[EngineClient] = []
        self._pending: list[_Request] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._closing = False
        self._aborted: str | None = None
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._progress = progress

    @property
    def device(self) -> torch.device:
        """Where the engine's input and output tensors live."""
        return self.engine.device

    def client(self, name: str, live: bool = False) -> EngineClient:
        """An engine-like handle for one stream (`live`: its requests go first)."""
        client = EngineClient(self, name, live)
        self.clients.append(client)
        return client

    def start(self) -> None:
        """Start the serving thread (idempotent)."""
        if self._thread is not None:
            return
        import torch

        if torch.device(self.engine.device).type == "cuda":
            self._stream = torch.cuda.Stream(torch.device(self.engine.device))
        self._thread = threading.Thread(target=self._serve, name="unweather-shared-engine", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Serve what is waiting, then stop the thread (the engine itself stays open)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def abort(self, reason: str = "the run was stopped") -> None:
        """Fail every waiting and later request at once with `reason`."""
        with self._cond:
            self._aborted = reason
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for req in pending:
            req.error = UnweatherError(reason)
            req.finished.set()

    def submit(self, frames: torch.Tensor, live: bool, state: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> Any:
        """Restore `frames` (N, 3, H, W) with the others waiting; blocks until they are done.

        With `state`, a video network's step: returns (output, next state), as `Engine.step`.
        """
        import torch

        ready = None
        if frames.is_cuda:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(frames.device))
        with self._cond:
            if self._aborted is not None:
                raise UnweatherError(self._aborted)
            if self._thread is None or self._closing:
                raise UnweatherError("the shared engine is not running.")
            req = _Request(frames, live, self._seq, ready, state)
            self._seq += 1
            self._pending.append(req)
            self._cond.notify_all()
        if not req.finished.wait(self.timeout):
            raise UnweatherError(f"the shared engine gave no result within {self.timeout:.0f} s.")
        if req.error is not None:
            raise req.error
        if req.done is not None:
            stream = torch.cuda.current_stream(frames.device)
            stream.wait_event(req.done)
            for tensor in _tensors(req.result):
                tensor.record_stream(stream)
        return req.result

    def stats(self) -> dict[str, Any]:
        """Calls, frames, batch sizes (frames per call) and streams per call, as a JSON-ready dict."""
        with self._cond:
            return {
                "engine": _describe(self.engine),
                "max_batch": self.max_batch,
                "streams": len(self.clients),
                "calls": self.calls,
                "frames": self.frames,
                "requests": self.requests,
                "mean_batch": round(self.frames / self.calls, 3) if self.calls else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "streams_per_call": {str(k): v for k, v in sorted(self.streams_per_call.items())},
                "busy_s": round(self.busy_s, 4),
            }

    # -- the serving thread ---------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                picked = self._pick()
            self._run(picked)

    def _pick(self) -> list[_Request]:
        """The next call's requests: the first waiting (live first, then oldest) and those of its
        frame size that fit in `max_batch`. Called with the lock held."""
        order = sorted(self._pending, key=lambda r: (not r.live, r.seq))
        first = order[0]
        key = _batch_key(first)
        picked, total = [first], first.frames.shape[0]
        for req in order[1:]:
            n = req.frames.shape[0]
            if total + n <= self.max_batch and _batch_key(req) == key:
                picked.append(req)
                total += n
        taken = {id(r) for r in picked}
        self._pending = [r for r in self._pending if id(r) not in taken]
        picked.sort(key=lambda r: r.seq)
        return picked

    def _run(self, picked: list[_Request]) -> None:
        t0 = time.perf_counter()
        try:
            outs = self._call(picked)
        except Exception as exc:  # the error goes back to the streams that asked
            if len(picked) == 1:
                outs = [exc]
            else:
                # Alone, each request fails or succeeds on its own (one bad stream spares the others).
                logger.debug("a shared call of %d requests failed; retrying them one by one", len(picked),
                             exc_info=exc)
                outs = []
                for req in picked:
                    try:
                        outs += self._call([req])
                    except Exception as single:  # noqa: BLE001 - reported to that stream only
                        outs.append(single)
        elapsed = time.perf_counter() - t0
        frames = sum(r.frames.shape[0] for r in picked)
        with self._cond:
            self.calls += 1
            self.frames += frames
            self.requests += len(picked)
            self.busy_s += elapsed
            self.batch_sizes[frames] += 1
            self.streams_per_call[len(picked)] += 1
        for req, out in zip(picked, outs):
            if isinstance(out, BaseException):
                req.error = out
            else:
                req.result = out
            req.frames = req.state = None
            req.finished.set()
        if self._progress is not None:
            self._progress.update(frames)

    def _call(self, picked: list[_Request]) -> list[Any]:
        import torch

        with torch.inference_mode():
            if self._stream is None:
                return self._infer(picked)
            with torch.cuda.stream(self._stream):
                for req in picked:
                    self._stream.wait_event(req.ready)
                    for tensor in _tensors((req.frames, req.state)):
                        tensor.record_stream(self._stream)
                outs = self._infer(picked)
                done = torch.cuda.Event()
                done.record(self._stream)
            for req in picked:
                req.done = done
            return outs

    def _infer(self, picked: list[_Request]) -> list[Any]:
        import torch

        if picked[0].state is not None:
            return self._step(picked)
        inputs = [r.frames for r in picked]
        if len(inputs) == 1:
            return [self.engine(inputs[0])]  # exactly what a stream alone would get
        out = self.engine(torch.cat(inputs))
        return list(torch.split(out, [x.shape[0] for x in inputs]))

    def _step(self, picked: list[_Request]) -> list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
        import torch

        if len(picked) == 1:
            return [self.engine.step(picked[0].frames, picked[0].state)]
        sizes = [r.frames.shape[0] for r in picked]
        frames = torch.cat([r.frames for r in picked])
        state = (torch.cat([r.state[0] for r in picked]), torch.cat([r.state[1] for r in picked]))
        out, (bg, weight) = self.engine.step(frames, state)
        return [(o, (b, w)) for o, b, w in zip(*(torch.split(t, sizes) for t in (out, bg, weight)))]


class EngineClient:
    """What one stream's pipeline sees as its engine: calls go through the `SharedEngine`."""

    def __init__(self, shared: SharedEngine, name: str, live: bool) -> None:
        self.shared = shared
        self.name = name
        self.live = live
        self.frames = 0
        self.calls = 0

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.shared.submit(frames, self.live)
        self.frames += frames.shape[0]
        self.calls += 1
        return out

    def step(self, frames: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """A video network's step (see `Engine.step`), batched with other streams' steps."""
        out = self.shared.submit(frames, self.live, state)
        self.frames += frames.shape[0]
        self.calls += 1
        return out

    @property
    def device(self) -> torch.device:
        return self.shared.engine.device

    def describe(self) -> str:
        """The shared engine's description, and that it is shared."""
        return f"{_describe(self.shared.engine)}, shared by {len(self.shared.clients)} streams"

    def close(self) -> None:
        """Nothing to release: the engine belongs to the shared server."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared.engine, name)


def default_max_batch(engine: Engine) -> int:
    """8 frames per call, or fewer when a TensorRT engine's profile allows fewer."""
    profile = getattr(engine, "profile", None)
    try:
        return max(1, min(8, int(profile[2][0]))) if profile else 8
    except (TypeError, IndexError, ValueError):
        return 8


def _batch_key(req: _Request) -> tuple:
    frames = req.frames
    return (tuple(frames.shape[1:]), frames.dtype, frames.device, req.state is not None)


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in nested tuples and lists (None and other values skipped)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _describe(engine: Engine | EngineClient) -> str:
    describe = getattr(engine, "describe", None)
    return describe() if callable(describe) else type(engine).__name__


# -- planning: inputs -> streams ------------------------------------------------------------------------


@dataclass
class StreamPlan:
    """One input of a many-input run: its name, input, output and settings."""

    name: str
    input: str
    output: str
    config: RunConfig
    live: bool


def wants_many(inputs: Sequence[str]) -> bool:
    """Whether `unweather run INPUTS` is a many-input run: several inputs, a sources file, or a folder
    holding videos (a folder of images stays one input)."""
    if len(inputs) != 1:
        return True
    item = inputs[0]
    return is_sources_file(item) or (os.path.isdir(item) and _folder_kind(item) == "videos")


def _folder_kind(folder: str) -> str:
    try:
        names = os.listdir(folder)
    except OSError:
        return "other"
    if any(is_video_file(n) for n in names):
        return "videos"
    if any(is_image_file(n) for n in names):
        return "images"
    return "other"


def plan_streams(inputs: Sequence[str], output: str | None, config: RunConfig) -> list[StreamPlan]:
    """Resolve inputs (files, folders, URLs, sources files) into streams with distinct outputs.

    Args:
        inputs: what to restore; a folder of images is one input, a folder of videos one per video.
        output: the folder for every output (NAME.EXT, the input's extension); with a single
            resulting input it may name a file; None: beside each input (URLs: the current folder).
        config: the settings every input starts from (a sources file's options override them).

    Raises:
        UnweatherError: a bad sources file or option, an output that is not a folder, or two inputs
            (or an input and an output) that would share a file.
    """
    from unweather.stream.runner import is_live

    sources: list[Source] = []
    for item in inputs:
        if not is_url(item) and os.path.isdir(item) and _folder_kind(item) == "images":
            name = os.path.basename(os.path.normpath(item)) or "images"
            sources.append(Source(name=name, input=item))
        elif is_url(item) or os.path.exists(item):
            sources += resolve_inputs([item])
        else:
            # Reported by name when its stream runs, like any other input that cannot be read.
            sources.append(Source(name=os.path.splitext(os.path.basename(item))[0] or "input", input=item))
    if not sources:
        raise UnweatherError("no inputs to restore.")
    _unique_names(sources)  # unique across items too: names name the outputs
    folder = None
    single_file = None
    if output is not None:
        if is_url(output):
            if len(sources) != 1:
                raise UnweatherError("several inputs cannot publish to one URL: give a folder as -o DIR/.")
            single_file = output
        elif output.endswith(("/", os.sep)) or os.path.isdir(output) or not os.path.splitext(output)[1]:
            folder = output
        elif len(sources) == 1:
            single_file = output
        else:
            raise UnweatherError(f"with {len(sources)} inputs, -o must be a folder: end it with '/' "
                                 f"(e.g. -o {os.path.splitext(output)[0]}/).")
    plans = []
    for source in sources:
        cfg = apply_options(config, dict(source.options))
        # One progress bar and one stats file for the whole run, unless a source asks for its own file.
        cfg = dataclasses.replace(cfg, progress=False,
                                  stats_path=source.options.get("stats_path") if source.options else None)
        cfg.validate()
        live = is_live(source.input, cfg)
        out = single_file or _output_for(source, folder, live)
        plans.append(StreamPlan(source.name, source.input, out, cfg, live))
    _check_outputs(plans)
    return plans


def _unique_names(sources: list) -> None:
    seen: Counter[str] = Counter()
    for i, source in enumerate(sources):
        seen[source.name] += 1
        if seen[source.name] > 1:
            sources[i] = dataclasses.replace(source, name=f"{source.name}-{seen[source.name]}")


def _output_for(source: Source, folder: str | None, live: bool) -> str:
    """Where one source writes: its own output, else FOLDER/NAME.EXT, else beside its input.

    EXT is the input's when it is an image, or a video container the pipeline writes; other videos
    (.webm, .avi, ...) are written as .mkv, and live ones too instead of .mp4 (playable if killed).
    """
    from unweather.stream.runner import default_output

    if source.output and not source.output.endswith(("/", os.sep)):
        return source.output
    folder = source.output or folder
    if folder is None:
        if is_url(source.input):
            return time.strftime(f"{source.name}-%Y%m%d-%H%M%S.mkv")
        return default_output(source.input, live)
    if not is_url(source.input) and os.path.isdir(source.input):
        return os.path.join(folder, source.name) + os.sep
    if is_image_file(source.input):
        return os.path.join(folder, source.name + os.path.splitext(source.input)[1].lower())
    return os.path.join(folder, source.name + video_output_extension(source.input, live))


def _check_outputs(plans: list[StreamPlan]) -> None:
    def key(path: str) -> str:
        return path if is_url(path) else os.path.normcase(os.path.abspath(path.rstrip("/" + os.sep) or path))

    owners: dict[str, str] = {}
    for plan in plans:
        k = key(plan.output)
        if k in owners:
            raise UnweatherError(f"inputs {owners[k]} and {plan.name} would both write {redact(plan.output)}: "
                                 "give them distinct names or outputs.")
        owners[k] = plan.name
    inputs = {key(p.input): p.name for p in plans}
    for plan in plans:
        other = inputs.get(key(plan.output))
        if other is not None:
            raise UnweatherError(f"the output of {plan.name} ({redact(plan.output)}) is the input of {other}: "
                                 "choose another output.")


# -- running ----------------------------------------------------------------------------------------------


@dataclass
class MultiStats:
    """What a many-input run did: each stream's statistics, the totals and the shared engines' calls.

    Attributes:
        streams: per stream: name, input, output, status ("done", "stopped" or "failed"), error, and
            the `RunStats` fields when the pipeline ran.
        elapsed_s: wall time of the whole run.
        engines: `SharedEngine.stats()` of each engine.
    """

    streams: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    engines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The streams that failed."""
        return [s for s in self.streams if s["status"] == "failed"]

    def total(self) -> dict[str, Any]:
        """Sums over the streams, and FPS over the run's wall time."""
        frames_out = sum(s.get("frames_out", 0) for s in self.streams)
        return {
            "streams": len(self.streams),
            "done": sum(s["status"] == "done" for s in self.streams),
            "stopped": sum(s["status"] == "stopped" for s in self.streams),
            "failed": len(self.failed),
            "frames_in": sum(s.get("frames_in", 0) for s in self.streams),
            "frames_out": frames_out,
            "dropped": sum(s.get("dropped", 0) for s in self.streams),
            "elapsed_s": round(self.elapsed_s, 4),
            "fps": round(frames_out / self.elapsed_s, 3) if self.elapsed_s > 0 else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: streams, total, engines."""
        return {"streams": self.streams, "total": self.total(), "engines": self.engines}

    def summary(self) -> str:
        """One line per stream, then the total and the engines' batching."""
        lines = []
        for s in self.streams:
            if s["status"] == "failed":
                lines.append(f"{s['name']}: failed: {s['error']}")
                continue
            lat = s.get("latency_ms") or {}
            p = f", latency p50 {lat['p50']:.1f} ms p95 {lat['p95']:.1f} ms" if lat.get("p50") is not None else ""
            lines.append(f"{s['name']}: {s['frames_out']} frames ({s['dropped']} dropped) in {s['elapsed_s']:.2f} s, "
                         f"{s['fps']:.1f} FPS, {s['mode']}{p}{' (stopped)' if s['status'] == 'stopped' else ''}"
                         f" -> {s['output']}")
        t = self.total()
        lines.append(f"total: {t['frames_out']} frames from {t['streams']} inputs in {t['elapsed_s']:.2f} s: "
                     f"{t['fps']:.1f} FPS; {t['done']} done, {t['stopped']} stopped, {t['failed']} failed")
        for e in self.engines:
            lines.append(f"engine {e['engine']}: {e['calls']} calls for {e['frames']} frames from {e['streams']} "
                         f"streams (mean batch {e['mean_batch']:.2f}, at most {e['max_batch']})")
        return "\n".join(lines)


def run_many(inputs: Sequence[str], output: str | None = None, config: RunConfig | None = None,
             stop_event: threading.Event | None = None, engine: Engine | None = None,
             max_batch: int | None = None) -> MultiStats:
    """Restore several inputs at once on this machine, the streams sharing one engine.

    Args:
        inputs: files, folders (of videos: one input each; of images: one input), URLs, sources files.
        output: the folder for the outputs (see `plan_streams`); None: beside each input.
        config: the settings every input starts from; its `stats_path` receives `MultiStats.to_dict()`.
        stop_event: set it to stop reading every input; what was read is finished, outputs stay playable.
        engine: an open engine for every stream (the caller closes it); None opens one per distinct
            engine setting among the inputs, and closes them at the end.
        max_batch: most frames per shared inference call (None: see `default_max_batch`).

    Returns:
        The statistics; streams that failed are listed there with their error (the others went on).

    Raises:
        UnweatherError: inputs or outputs that cannot be planned (before anything runs).
        KeyboardInterrupt: raised by the caller's signal handler to stop at once; every stream is
            stopped, its output closed, and the interrupt passed on.
    """
    from unweather.stream.runner import is_video_input, model_name

    config = config or RunConfig()
    config.validate()
    plans = plan_streams(inputs, output, config)
    stop_event = stop_event or threading.Event()
    for plan in plans:
        folder = os.path.dirname(plan.output) if not is_url(plan.output) else ""
        if folder:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise UnweatherError(f"cannot create the output folder {folder}: {exc.strerror or exc}.") from None
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    shared: dict[tuple, SharedEngine] = {}
    owned: list[Engine] = []
    progress = _progress(config, len(plans))
    threads: list[threading.Thread] = []
    try:
        clients = {}
        for plan in plans:
            video = is_video_input(plan.input)
            # The default model depends on the input (videos: the video student), so it is part of the key.
            key = ((model_name(plan.config, video), *(getattr(plan.config, f) for f in ENGINE_FIELDS[1:]))
                   if engine is None else ())
            if key not in shared:
                try:
                    inner = engine if engine is not None else _open_engine(plan.config, video)
                except UnweatherError as exc:
                    results[plan.name] = _failed(plan, str(exc))
                    continue
                if engine is None:
                    owned.append(inner)
                shared[key] = SharedEngine(inner, max_batch, timeout=max(plan.config.stall_timeout, 60.0),
                                           progress=progress)
                shared[key].start()
            clients[plan.name] = shared[key].client(plan.name, plan.live)
        for plan in plans:
            if plan.name in clients:
                thread = threading.Thread(target=_run_stream, args=(plan, clients[plan.name], stop_event, results),
                                          name=f"unweather-stream-{plan.name}", daemon=True)
                threads.append(thread)
                thread.start()
        for thread in threads:
            thread.join()
    except BaseException:
        # A second Ctrl-C: every engine call fails now, so each pipeline closes its output at once.
        stop_event.set()
        for server in shared.values():
            server.abort("stopped at once by a second interrupt")
        for thread in threads:
            thread.join(30.0)
        raise
    finally:
        for server in shared.values():
            server.close()
        for inner in owned:
            inner.close()
        if progress is not None:
            progress.close()
    stats = MultiStats(streams=[results[p.name] for p in plans], elapsed_s=time.monotonic() - started,
                       engines=[s.stats() for s in shared.values()])
    if config.stats_path:
        _write_json(stats.to_dict(), config.stats_path)
    return stats


def _open_engine(config: RunConfig, video: bool) -> Engine:
    from unweather.stream.runner import open_engine

    return open_engine(config, video)


def _run_stream(plan: StreamPlan, client: EngineClient, stop_event: threading.Event,
                results: dict[str, dict[str, Any]]) -> None:
    from unweather.stream.runner import run

    try:
        stats = run(plan.input, plan.output, plan.config, engine=client, stop_event=stop_event)
    except UnweatherError as exc:
        partial = getattr(exc, "stats", None)
        results[plan.name] = _failed(plan, str(exc), partial.to_dict() if partial is not None else None)
        logger.error("%s: %s", plan.name, redact(str(exc)))
        return
    except Exception as exc:  # one input's unexpected failure must not end the others
        logger.debug("%s failed", plan.name, exc_info=exc)
        results[plan.name] = _failed(plan, f"{type(exc).__name__}: {exc}")
        logger.error("%s: %s: %s", plan.name, type(exc).__name__, redact(str(exc)))
        return
    entry = stats.to_dict()
    entry.update(name=plan.name, status="stopped" if stats.interrupted else "done", error=None)
    results[plan.name] = entry


def _failed(plan: StreamPlan, error: str, partial: dict[str, Any] | None = None) -> dict[str, Any]:
    from unweather.stream.runner import here

    entry = dict(partial or {})
    node, worker = here()
    entry.update(name=plan.name, input=redact(plan.input), output=redact(plan.output), status="failed",
                 error=redact(error), nodes=entry.get("nodes") or [node], workers=entry.get("workers") or [worker])
    return entry


def _progress(config: RunConfig, streams: int) -> Any:
    if not config.progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit="frame", file=sys.stderr, dynamic_ncols=True, leave=False, desc=f"{streams} inputs")


def _write_json(data: dict[str, Any], path: str) -> None:
    try:
        write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
    except OSError as exc:
        raise UnweatherError(f"cannot write the stats file {path}: {exc.strerror or exc}.") from None
