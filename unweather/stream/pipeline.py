"""The real-time pipeline: decode -> upload+convert -> infer -> download+convert -> encode, one thread each.

Stages are joined by bounded `FrameQueue`s and pass an end-of-stream marker (`EOS`) when their
input ends. A stage that fails records the error (the first one is reported, once), aborts the
queues before it, so upstream stages stop, and still passes `EOS` on, so every frame already past
it is written and the output is closed playable. Offline runs never drop a frame and batch; live
runs use batch 1 and drop the oldest waiting frame when inference falls behind.

A live run does not drop while it starts: from a connection's first frame (the run's, and again
after each reconnection) until that frame is written, the decode queue keeps up to
`_STARTUP_HOLD_S` seconds of frames, since opening the encoder, the engine's first call and an RTSP
source's probing burst all come at once then. The backlog is then worked off; when it grows again
instead (the machine cannot keep up) or takes longer than `_CATCH_UP_S`, it is cut to the newest
frames and dropping resumes. The statistics count drops by cause: `startup` and `overload`.

A video network (`Engine.stateful`) runs through one `VideoSession` per pipeline, frame by frame in
order (batches too): its state follows the camera's motion and is emptied on a cut (the session), on
a reconnection of a network source and on a gap in timestamps (here: more than `_GAP_INTERVALS` frame
intervals without a frame, e.g. frames a live source or the live queues dropped). A seek (`--start`)
starts a new pipeline, hence an empty state. The statistics count resets by cause. A `WarmUp` makes
the first frames of an input warm the state without being written (an archive chunk's lead-in).

On a GPU, decoded planes are copied into a ring of pinned host buffers, uploaded on their own CUDA
stream, converted to float RGB there, restored on an inference stream, converted back to YUV and
downloaded on a third stream; stages hand each other CUDA events, never a device-wide sync. On a
CPU the structure is the same with plain buffers.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch

from unweather.engine.session import VideoSession
from unweather.errors import UnweatherError
from unweather.redact import redact
from unweather.stream.colour import (
    ColourSpec,
    float_to_rgb8,
    rgb8_to_float,
    rgb_output_spec,
    rgb_to_yuv420,
    spec_for,
    yuv420_to_rgb,
)
from unweather.stream.config import RunConfig, WarmUp
from unweather.stream.queues import EOS, OVERLOAD, STARTUP, Aborted, BufferRing, FrameQueue
from unweather.stream.sinks import Sink
from unweather.stream.sources import Source, SourceFrame
from unweather.stream.stats import STAGES, LatencyWindow, RunStats
from unweather.stream.temporal import TemporalFilter, video_model_refusal

if TYPE_CHECKING:
    from unweather.engine.base import Engine
    from unweather.stream.multi import EngineClient

logger = logging.getLogger(__name__)

_YUV_FORMATS = ("yuv420p", "yuvj420p")
_RGB_FORMATS = ("rgb24", "bgr24", "rgba", "bgra", "argb", "abgr", "rgb0", "bgr0", "0rgb", "0bgr", "gbrp",
                "rgb48le", "rgb48be", "gbrp10le", "gbrp12le", "gbrp16le", "gbrap")

# Live start-up (module docstring): frames a starting connection may wait in, in seconds of video; a backlog
# that grows by this much above its lowest means the machine falls behind; and the longest catch-up.
_STARTUP_HOLD_S = 2.0
_FALLING_BEHIND_S = 0.25
_CATCH_UP_S = 3.0
# A video network's history is void after this many frame intervals without a frame (3 or more frames missing).
_GAP_INTERVALS = 3.5


class State(enum.Enum):
    """Where a pipeline is in its life."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"  # input ended or stop asked: queued frames are being finished
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class _Frame:
    """One frame in flight: id, timestamps, and the host buffer holding its decoded planes."""

    id: int
    pts: int
    time_base: Fraction
    arrival: float
    name: str | None
    key: tuple
    host: dict[str, torch.Tensor] | None
    connection: int = 0  # the source's reconnection count when the frame came
    warm: bool = False  # a warm-up frame: restored, not written


@dataclass
class _Batch:
    frames: list[_Frame]
    tensor: torch.Tensor
    ready: Any  # a CUDA event recorded after `tensor` was written, or None on the CPU


@dataclass
class _Out:
    frame: _Frame
    key: tuple
    host: dict[str, torch.Tensor]


def _plane_names(key: tuple) -> tuple[str, ...]:
    return ("rgb",) if key[0] == "rgb" else ("y", "u", "v")


def one_cpu_thread() -> bool:
    """Make torch's CPU kernels called from this thread use one OpenMP thread; other threads keep theirs.

    The colour conversions take a few ms in one thread, but with torch's default team (one thread per
    core) they fight the inference stage's team for the same cores, and OpenMP's spinning barriers
    make both many times slower (measured on 2 busy cores: 640x360 both ways 3 ms alone in one
    thread, 18 ms in two; inference slowed too). `torch.set_num_threads` would change every
    thread's count, so the calling thread's own OpenMP setting is changed instead.

    Returns:
        Whether the setting was changed (False where torch does not use OpenMP from this process).
    """
    torch.get_num_threads()  # torch sets a thread's OpenMP team size on its first use: let it happen now
    set_threads = _omp_set_num_threads()
    if set_threads is None:
        return False
    set_threads(1)
    return True


@functools.cache
def _omp_set_num_threads() -> Any:
    """`omp_set_num_threads` of the OpenMP runtime torch uses (the one in its wheel first), or None."""
    import ctypes
    import glob

    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    candidates = sorted(glob.glob(os.path.join(lib, "lib*omp*.so*")))
    for path in [*candidates, None]:
        try:
            return ctypes.CDLL(path).omp_set_num_threads
        except (AttributeError, OSError):
            continue
    return None


class Pipeline:
    """One run of `source` through `engine` into `sink`; call `run()` once.

    Args:
        source, sink: opened input and output.
        engine: the restoring engine (its device decides the GPU or CPU path).
        config: the run's settings.
        live: live mode (drop oldest, batch 1) rather than offline.
        stop_event: set from anywhere to stop reading; queued frames are still finished.
        mask: `config.mask` as loaded by `unweather.stream.mask.load_mask` (None: no mask).
        announce: logged as "writing ANNOUNCE" when the first frame is written (an output name the
            user did not give), so that nothing is announced for a run that fails before.
        warmup: leading frames that only warm a video network's state (None: none).

    Raises:
        UnweatherError: `config.temporal` or tiles with a video network (it carries its own history, whole frames).
    """

    def __init__(self, source: Source, sink: Sink, engine: Engine | EngineClient, config: RunConfig, live: bool,
                 stop_event: threading.Event, mask: Any = None, announce: str | None = None,
                 warmup: WarmUp | None = None) -> None:
        self.session = VideoSession(engine)
        if config.temporal and self.session.stateful:
            raise UnweatherError(video_model_refusal(getattr(engine, "model", "") or "this model",
                                                     default=config.model is None))
        if self.session.stateful and getattr(engine, "tile", None):
            raise UnweatherError("--tile applies to frame models: a video model runs whole frames with its state "
                                 "(choose a frame model with --model fast or quality to restore in tiles).")
        self.warmup = warmup or WarmUp()
        self.source = source
        self.announce = announce
        self.mask = mask
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self.sink = sink
        self.engine = engine
        self.config = config
        self.temporal = TemporalFilter(config.temporal)
        self.live = live
        self.stop_event = stop_event
        self.device = torch.device(engine.device)
        self.cuda = self.device.type == "cuda"
        self.batch = 1 if live else config.batch
        self.state = State.NEW
        self.wait = config.stall_timeout
        if source.live and hasattr(config, "give_up_after"):
            # A reconnecting source may be silent for this long without the run being stalled.
            self.wait = max(self.wait, config.give_up_after + 2 * config.open_timeout + 60.0)
        cap = max(config.queue_size, 2 * self.batch)
        if live:
            self.q_dec = FrameQueue("decode", 2, drop_oldest=True, on_drop=self._release_frame)
            self.q_up = FrameQueue("upload", 1, drop_oldest=True)
            # Behind inference, a frame waits for at most one other in each queue: when the encoder is
            # the slowest stage, latency stays a few frames' encoding time, and drops happen upstream.
            self.q_inf = FrameQueue("infer", 1)
            self.q_enc = FrameQueue("encode", 2)
        else:
            self.q_dec = FrameQueue("decode", cap)
            self.q_up = FrameQueue("upload", 2)
            self.q_inf = FrameQueue("infer", 2)
            self.q_enc = FrameQueue("encode", cap)
        self.in_ring = BufferRing("input", self.q_dec.capacity + self.batch + 2, self._make_host)
        self.out_ring = BufferRing("output", self.q_enc.capacity + self.batch + 1, self._make_host)
        if self.cuda:
            self.s_up = torch.cuda.Stream(self.device)
            self.s_inf = torch.cuda.Stream(self.device)
            self.s_down = torch.cuda.Stream(self.device)
        self.spec: ColourSpec | None = None
        self.out_spec: ColourSpec | None = None
        self.kind: str | None = None
        self.rotation = 0
        self.frames_in = 0
        self.frames_out = 0
        self.warmed = 0  # warm-up frames restored (not written)
        self._lead = 0  # warm-up frames decoded so far
        self._next_id = 0
        self._continuity = _Continuity(source)
        self.interrupted = False
        self.stopped_early = False
        self.busy = dict.fromkeys(STAGES, 0.0)
        self.latency = LatencyWindow()
        self.error: UnweatherError | None = None
        self._error_lock = threading.Lock()
        self._startup = _Startup() if live else None
        self._last_written = -1  # the id of the last frame written (set by the encode stage)
        self._started = 0.0
        self._bar: Any = None

    # -- buffers -----------------------------------------------------------------------------
    def _make_host(self, key: tuple) -> dict[str, torch.Tensor]:
        kind, h, w = key
        pin = self.cuda
        if kind == "rgb":
            return {"rgb": torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=pin)}
        ch, cw = (h + 1) // 2, (w + 1) // 2
        return {"y": torch.empty((h, w), dtype=torch.uint8, pin_memory=pin),
                "u": torch.empty((ch, cw), dtype=torch.uint8, pin_memory=pin),
                "v": torch.empty((ch, cw), dtype=torch.uint8, pin_memory=pin)}

    def _release_frame(self, item: Any) -> None:
        if isinstance(item, _Frame) and item.host is not None:
            self.in_ring.release(item.key, item.host)
            item.host = None

    # -- stage 1: decode ---------------------------------------------------------------------
    def _decode(self) -> None:
        frames = self.source.frames()
        limit = self.config.max_frames
        # A file cuts --duration itself (with its audio); other sources stop here once the frames span it.
        span = self.config.duration if getattr(self.source, "duration", None) is None else None
        first_time = None
        while True:
            if self.stop_event.is_set():
                self.interrupted = True
                break
            t0 = time.perf_counter()
            try:
                sf = next(frames)
            except StopIteration:
                break
            if self._lead < self.warmup.total:
                self._lead += 1
                if self._lead > self.warmup.skip:
                    item = self._to_host(sf)
                    item.warm = True
                    self.busy["decode"] += time.perf_counter() - t0
                    self.q_dec.put(item, self.wait)
                continue
            if span is not None:
                t = float(sf.pts * sf.time_base)
                first_time = t if first_time is None else first_time
                if t - first_time >= span:
                    self.stopped_early = True
                    break
            item = self._to_host(sf)
            self.busy["decode"] += time.perf_counter() - t0
            if self._startup is not None:
                self._pace_startup(item)
            self.q_dec.put(item, self.wait)
            self.frames_in += 1
            if limit is not None and self.frames_in >= limit:
                self.stopped_early = True
                break
        if self.stop_event.is_set():
            self.interrupted = True
        frames.close()
        if self.frames_in == 0 and not self.interrupted:
            raise UnweatherError(f"{redact(self.source.description)} has no video frames.")

    def _pace_startup(self, item: _Frame) -> None:
        """Live mode, before `item` is queued: hold the decode queue while a connection starts, release it after."""
        st = self._startup
        connection = self.source.reconnections
        if connection != st.connection:
            st.connection = connection
            self._hold(item)
            return
        if st.first_id is None:
            return
        depth = len(self.q_dec)
        if st.caught_up_by is None:
            if self._last_written < st.first_id:
                return
            # The connection's first frame is written: from here the backlog should shrink.
            st.caught_up_by = time.monotonic() + _CATCH_UP_S
            st.lowest = depth
        if depth == 0 and len(self.q_up) == 0:
            # Caught up as far as inference: releasing now cannot drop a frame that would have been restored.
            self._release(behind=False)
        elif depth >= st.lowest + st.slack or time.monotonic() >= st.caught_up_by:
            self._release(behind=True)
        else:
            st.lowest = min(st.lowest, depth)

    def _hold(self, item: _Frame) -> None:
        st = self._startup
        rate = float(self.source.rate) if self.source.rate else 25.0
        held = self.q_dec.capacity + max(1, round(rate * _STARTUP_HOLD_S))
        st.first_id, st.caught_up_by, st.lowest = item.id, None, held
        st.slack = max(2, round(rate * _FALLING_BEHIND_S))
        # The held frames, the one being uploaded, the one being decoded and the batch each own a buffer.
        self.in_ring.resize(held + self.batch + 2)
        self.q_up.hold(None, STARTUP)  # upload waits for inference, so the backlog stays here, counted
        self.q_dec.hold(held, STARTUP)
        logger.debug("live start-up from frame %d: holding up to %d frames", item.id, held)

    def _release(self, behind: bool) -> None:
        st = self._startup
        cut = self.q_dec.release(OVERLOAD)
        self.q_up.release(OVERLOAD)
        self.in_ring.resize(self.q_dec.capacity + self.batch + 2)
        logger.debug("live start-up from frame %d over%s", st.first_id,
                     f": behind the source, {cut} frames dropped" if behind else "")
        st.first_id, st.caught_up_by = None, None

    def _first_frame(self, sf: SourceFrame) -> None:
        """Decide the frame layout and colour conversion from the first frame."""
        payload = sf.payload
        if isinstance(payload, torch.Tensor) or not hasattr(payload, "format"):
            self.kind = "rgb"
            height = payload.shape[0]
            self.spec = None
        else:
            fmt = payload.format.name
            self.kind = "rgb" if fmt in _RGB_FORMATS else "yuv"
            height = payload.height
            self.rotation = round(getattr(payload, "rotation", 0) or 0) % 360
            if self.kind == "yuv":
                self.spec = spec_for(payload.colorspace, payload.color_range, fmt, height,
                                     payload.color_primaries, payload.color_trc)
                logger.debug("input colour: %s (%s)", self.spec.describe(), fmt)
        if not self.sink.wants_rgb:
            self.out_spec = self.spec if self.spec is not None else rgb_output_spec(height)
            self.sink.spec = self.out_spec
            self.sink.rotation = self.rotation

    def _to_host(self, sf: SourceFrame) -> _Frame:
        import numpy as np

        if self.kind is None:
            self._first_frame(sf)
        payload = sf.payload
        if isinstance(payload, np.ndarray):
            h, w = payload.shape[:2]
            key = ("rgb", h, w)
            host = self.in_ring.acquire(key, self.wait)
            host["rgb"].numpy()[...] = payload
        elif self.kind == "rgb":
            rgb = payload.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            key = ("rgb", h, w)
            host = self.in_ring.acquire(key, self.wait)
            host["rgb"].numpy()[...] = rgb
        else:
            if payload.format.name not in _YUV_FORMATS:
                payload = payload.reformat(format="yuv420p")
            h, w = payload.height, payload.width
            key = ("yuv", h, w)
            host = self.in_ring.acquire(key, self.wait)
            for plane, name in zip(payload.planes, ("y", "u", "v")):
                dst = host[name].numpy()
                rows, cols = dst.shape
                src = np.frombuffer(plane, np.uint8, count=plane.line_size * rows).reshape(rows, plane.line_size)
                dst[...] = src[:, :cols]
        self._next_id += 1
        return _Frame(self._next_id - 1, sf.pts, sf.time_base, sf.arrival, sf.name, key, host,
                      connection=self.source.reconnections)

    # -- stage 2: upload and convert to float RGB -----------------------------------------------
    def _upload(self) -> None:
        if not self.cuda:
            one_cpu_thread()
        carry = None
        while True:
            first = carry if carry is not None else self.q_dec.get(self.wait)
            carry = None
            if first is EOS:
                return
            items = [first]
            ended = False
            while len(items) < self.batch:
                nxt = self.q_dec.get(self.wait)
                if nxt is EOS:
                    ended = True
                    break
                if nxt.key != first.key:
                    carry = nxt  # another size: it starts the next batch
                    break
                items.append(nxt)
            t0 = time.perf_counter()
            batch = self._upload_batch(items)
            self.busy["upload"] += time.perf_counter() - t0
            self.q_up.put(batch, self.wait)
            if ended:
                return

    def _upload_batch(self, items: list[_Frame]) -> _Batch:
        key = items[0].key
        names = _plane_names(key)
        ready = None
        if self.cuda:
            with torch.cuda.stream(self.s_up):
                planes = []
                for name in names:
                    shape = items[0].host[name].shape
                    dev = torch.empty((len(items), *shape), dtype=torch.uint8, device=self.device)
                    for i, item in enumerate(items):
                        dev[i].copy_(item.host[name], non_blocking=True)
                    planes.append(dev)
                copied = torch.cuda.Event()
                copied.record(self.s_up)
                tensor = self._to_float(key, planes)
                ready = torch.cuda.Event()
                ready.record(self.s_up)
            copied.synchronize()  # the pinned buffers may be reused once their copies are done
        else:
            planes = [torch.stack([item.host[name] for item in items]) for name in names]
        for item in items:
            self._release_frame(item)
        if not self.cuda:
            tensor = self._to_float(key, planes)
        return _Batch(items, tensor, ready)

    def _to_float(self, key: tuple, planes: list[torch.Tensor]) -> torch.Tensor:
        if key[0] == "rgb":
            return rgb8_to_float(planes[0])
        return yuv420_to_rgb(planes[0], planes[1], planes[2], self.spec)

    # -- stage 3: inference ----------------------------------------------------------------------
    def _infer(self) -> None:
        while True:
            batch = self.q_up.get(self.wait)
            if batch is EOS:
                return
            t0 = time.perf_counter()
            if self.cuda:
                with torch.cuda.stream(self.s_inf):
                    self.s_inf.wait_event(batch.ready)
                    batch.tensor.record_stream(self.s_inf)
                    out = self._restore(batch.tensor, batch.frames)
                    batch.ready = torch.cuda.Event()
                    batch.ready.record(self.s_inf)
            else:
                out = self._restore(batch.tensor, batch.frames)
            batch.tensor = out
            self.busy["infer"] += time.perf_counter() - t0
            self.q_inf.put(batch, self.wait)

    def _restore(self, x: torch.Tensor, frames: list[_Frame]) -> torch.Tensor:
        # The network sees the picture upright (rain falls down), as the viewer does.
        k = (self.rotation // 90) % 4
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
        with torch.inference_mode():
            out = self._blend(x, self.temporal(self._network(x, frames)))
            if self.config.side_by_side:
                out = torch.cat([x, out.to(x.dtype)], dim=-1)
        if k:
            out = torch.rot90(out, -k, dims=(-2, -1))
        return out

    def _network(self, x: torch.Tensor, frames: list[_Frame]) -> torch.Tensor:
        """The engine's output for a batch; a video network's state is emptied where the stream broke."""
        if not self.session.stateful:
            return self.session(x)
        outs = []
        start = 0
        for i, frame in enumerate(frames):
            reason = self._continuity.check(frame)
            if reason is None:
                continue
            if i > start:
                outs.append(self.session(x[start:i]))
                start = i
            logger.debug("frame %d: the video state is reset (%s)", frame.id, reason)
            self.session.reset(reason)
        outs.append(self.session(x[start:]))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _blend(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """--strength, then --mask: out = s * out + (1 - s) * in, then mask * in + (1 - mask) * out.

        Written as sums rather than `lerp`, so that strength 0 and white mask pixels give the input
        exactly, bit for bit.
        """
        strength = self.config.strength
        if strength >= 1.0 and self.mask is None:
            return out
        out = out.to(x.dtype)
        if strength < 1.0:
            out = strength * out + (1.0 - strength) * x
        if self.mask is not None:
            m = self._mask_for(x)
            out = m * x + (1.0 - m) * out
        return out

    def _mask_for(self, x: torch.Tensor) -> torch.Tensor:
        """The mask at the size of `x` (N, 3, H, W), as (1, 1, H, W) on its device (resized once per size)."""
        from unweather.stream.mask import fit_mask

        height, width = x.shape[-2:]
        mask = self._masks.get((height, width))
        if mask is None:
            fitted = fit_mask(self.mask, width, height, str(self.config.mask))
            mask = torch.from_numpy(fitted).to(device=x.device, dtype=x.dtype)[None, None]
            self._masks[(height, width)] = mask
        return mask

    # -- stage 4: convert back and download ------------------------------------------------------
    def _download(self) -> None:
        if not self.cuda:
            one_cpu_thread()
        while True:
            batch = self.q_inf.get(self.wait)
            if batch is EOS:
                return
            t0 = time.perf_counter()
            outs = self._download_batch(batch)
            self.busy["download"] += time.perf_counter() - t0
            for out in outs:
                self.q_enc.put(out, self.wait)

    def _download_batch(self, batch: _Batch) -> list[_Out]:
        n, _, h, w = batch.tensor.shape
        key = ("rgb" if self.sink.wants_rgb else "yuv", h, w)
        names = _plane_names(key)
        if self.cuda:
            with torch.cuda.stream(self.s_down):
                self.s_down.wait_event(batch.ready)
                batch.tensor.record_stream(self.s_down)
                planes = self._from_float(key, batch.tensor)
                hosts = [self.out_ring.acquire(key, self.wait) for _ in range(n)]
                for i, host in enumerate(hosts):
                    for name, plane in zip(names, planes):
                        host[name].copy_(plane[i], non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.s_down)
            done.synchronize()
        else:
            planes = self._from_float(key, batch.tensor)
            hosts = [self.out_ring.acquire(key, self.wait) for _ in range(n)]
            for i, host in enumerate(hosts):
                for name, plane in zip(names, planes):
                    host[name].copy_(plane[i])
        return [_Out(frame, key, host) for frame, host in zip(batch.frames, hosts)]

    def _from_float(self, key: tuple, rgb: torch.Tensor) -> list[torch.Tensor]:
        if key[0] == "rgb":
            return [float_to_rgb8(rgb)]
        return list(rgb_to_yuv420(rgb, self.out_spec))

    # -- stage 5: encode and mux -----------------------------------------------------------------
    def _encode(self) -> None:
        try:
            while True:
                out = self.q_enc.get(self.wait)
                if out is EOS:
                    return
                if out.frame.warm:
                    self.out_ring.release(out.key, out.host)
                    self.warmed += 1
                    continue
                t0 = time.perf_counter()
                planes = tuple(out.host[name].numpy() for name in _plane_names(out.key))
                frame = out.frame
                if self.announce is not None:
                    logger.info("writing %s", self.announce)
                    self.announce = None
                self.sink.write(planes, frame.pts, frame.time_base, frame.name)
                self._last_written = frame.id
                self.out_ring.release(out.key, out.host)
                now = time.monotonic()
                self.busy["encode"] += time.perf_counter() - t0
                self.latency.add(now - frame.arrival)
                self.frames_out += 1
                if self._bar is not None:
                    self._bar.update(1)
        finally:
            if self.sink.frames_written:
                complete = self.source.finished and not (self.interrupted or self.stopped_early)
                t0 = time.perf_counter()
                self.sink.close(complete)
                self.busy["encode"] += time.perf_counter() - t0

    # -- orchestration ---------------------------------------------------------------------------
    def _fail(self, stage: str, exc: BaseException) -> None:
        with self._error_lock:
            if self.error is not None:
                logger.debug("after the first error, %s also failed: %r", stage, exc)
                return
            logger.debug("%s stage failed", stage, exc_info=exc)
            self.error = _as_user_error(stage, exc, self)
            self.state = State.FAILED

    def _stage_main(self, name: str, body: Callable[[], None], upstream: list[Any],
                    outq: FrameQueue | None) -> None:
        failed = False
        try:
            body()
        except Aborted:
            failed = True
        except BaseException as exc:  # noqa: BLE001 - every stage error is reported once, by run()
            failed = True
            self._fail(name, exc)
        finally:
            if failed:
                # Upstream stops; downstream still finishes what it holds.
                for handle in upstream:
                    handle.abort() if hasattr(handle, "abort") else handle()
            if self.state == State.RUNNING:
                self.state = State.DRAINING
            if outq is not None:
                outq.put_eos()

    def abort(self) -> None:
        """Stop every stage now (queued frames are not finished; the output is still closed)."""
        self.source.stop()
        for handle in (self.q_dec, self.q_up, self.q_inf, self.q_enc, self.in_ring, self.out_ring):
            handle.abort()

    def run(self) -> RunStats:
        """Run to the end of the input (or a stop or error) and return the statistics.

        Raises:
            UnweatherError: the first error of any stage, after the output was closed.
        """
        self._bar = self._progress()
        with _logs_above(self._bar):
            return self._run_stages()

    def _run_stages(self) -> RunStats:
        stages = [
            ("decode", self._decode, [self.source.stop], self.q_dec),
            ("upload", self._upload, [self.q_dec, self.in_ring], self.q_up),
            ("infer", self._infer, [self.q_up], self.q_inf),
            ("download", self._download, [self.q_inf], self.q_enc),
            ("encode", self._encode, [self.q_enc, self.out_ring], None),
        ]
        threads = [threading.Thread(target=self._stage_main, args=stage, name=f"unweather-{stage[0]}", daemon=True)
                   for stage in stages]
        self.state = State.RUNNING
        self._started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:
            # A second Ctrl-C or an error in the caller: stop now, close the output, re-raise.
            self.interrupted = True
            self.abort()
            for thread in threads:
                thread.join(30.0)
            raise
        finally:
            if self._bar is not None:
                self._bar.close()
            elapsed = time.monotonic() - self._started
            if self.state != State.FAILED:
                self.state = State.STOPPED
        return self._stats(elapsed)

    def _progress(self) -> Any:
        if not self.config.progress or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        total = self.source.total
        if total and self.warmup.total:
            total = max(0, total - self.warmup.total)
        if total and self.config.max_frames:
            total = min(total, self.config.max_frames)
        return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True, leave=False,
                    desc=os.path.basename(redact(self.source.description))[:30] or "frames")

    def _stats(self, elapsed: float) -> RunStats:
        queues = {}
        dropped = 0
        drops = {STARTUP: 0, OVERLOAD: 0}
        for q in (self.q_dec, self.q_up, self.q_inf, self.q_enc):
            queues[q.name] = {"capacity": q.capacity, "max_depth": q.max_depth,
                              "mean_depth": round(q.mean_depth, 3), "dropped": q.dropped}
            frames = 1 if q is self.q_dec else self.batch
            dropped += q.dropped * frames
            for cause, count in q.drops.items():
                drops[cause] = drops.get(cause, 0) + count * frames
        expected = self.source.frames_expected
        if expected is not None and self.warmup.total:
            expected = max(0, expected - self.warmup.total)
        if expected is not None and self.config.max_frames is not None:
            expected = min(expected, self.config.max_frames)
        complete = not (self.interrupted or self.stopped_early)
        return RunStats(
            mode="live" if self.live else "offline",
            engine=_describe_engine(self.engine),
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            dropped=dropped,
            drops=drops,
            frames_expected=expected,
            input_truncated=bool(self.source.truncated and complete),
            corrupt_packets=self.source.corrupt_packets,
            elapsed_s=round(elapsed, 4),
            fps=round(self.frames_out / elapsed, 3) if elapsed > 0 else 0.0,
            stage_s={k: round(v, 4) for k, v in self.busy.items()},
            latency_ms=self.latency.percentiles(),
            queues=queues,
            reconnections=self.source.reconnections,
            resets=dict(self.session.resets),
            warmup_frames=self.warmed,
            width=self.source.width,
            height=self.source.height,
            batch=self.batch,
            interrupted=self.interrupted,
            error=str(self.error) if self.error else None,
        )


class _Continuity:
    """Where a stream's history breaks between consecutive frames: a reconnection or a gap in timestamps.

    A frame interval is the median of the last intervals seen, and the source's nominal rate until three
    were seen: a variable frame rate file's average rate, or a network source's missing one, would misjudge it.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.connection: int | None = None
        self.last: float | None = None
        self.intervals: collections.deque[float] = collections.deque(maxlen=15)

    def check(self, frame: _Frame) -> str | None:
        """Why the history is void before `frame` ("reconnection", "gap"), or None; frames come in order."""
        t = float(frame.pts * frame.time_base)
        reason = None
        if self.connection is not None and frame.connection != self.connection:
            reason = "reconnection"
        elif self.last is not None:
            delta = t - self.last
            interval = self._interval()
            if interval is not None and delta > _GAP_INTERVALS * interval:
                reason = "gap"
            elif delta > 0:
                self.intervals.append(delta)
        self.connection, self.last = frame.connection, t
        return reason

    def _interval(self) -> float | None:
        if len(self.intervals) >= 3:
            return sorted(self.intervals)[len(self.intervals) // 2]
        rate = self.source.rate
        return 1.0 / float(rate) if rate else None


@dataclass
class _Startup:
    """Where a live run's start-up stands (decode thread only).

    Attributes:
        connection: the source's reconnection count its frames came with (None before the first).
        first_id: the id of the first frame of the connection starting, None once it has started.
        caught_up_by: once that frame is written, when the backlog must be worked off.
        lowest: the smallest backlog seen since; slack: by how much it may grow again (frames).
    """

    connection: int | None = None
    first_id: int | None = None
    caught_up_by: float | None = None
    lowest: int = 0
    slack: int = 2


def _logs_above(bar: Any) -> contextlib.AbstractContextManager[None]:
    """While `bar` is shown, the package's console log lines are printed above it, not through it.

    Only a console handler already on the "unweather" logger (the command line's) is redirected,
    with its formatter and filters (credentials stay redacted); other set-ups are left alone.
    """
    if bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    package = logging.getLogger("unweather")
    # The test tqdm itself uses to pick the handlers it redirects.
    if not any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
               for h in package.handlers):
        return contextlib.nullcontext()
    return logging_redirect_tqdm(loggers=[package])


def _describe_engine(engine: Engine | EngineClient) -> str:
    describe = getattr(engine, "describe", None)
    return describe() if callable(describe) else type(engine).__name__


def _as_user_error(stage: str, exc: BaseException, pipeline: Pipeline) -> UnweatherError:
    """One sentence for a stage's failure."""
    import av

    if isinstance(exc, UnweatherError):
        return UnweatherError(redact(str(exc)))
    what = redact(pipeline.source.description)
    if stage == "decode" and isinstance(exc, (av.error.FFmpegError, OSError, ValueError)):
        return UnweatherError(f"cannot decode {what}: {redact(getattr(exc, 'strerror', None) or str(exc))}.")
    if stage == "encode" and isinstance(exc, (av.error.FFmpegError, OSError)):
        return UnweatherError(f"cannot write {redact(pipeline.sink.target)}: "
                              f"{redact(getattr(exc, 'strerror', None) or str(exc))}.")
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return UnweatherError(f"out of memory in the {stage} stage ({pipeline.source.width}x"
                              f"{pipeline.source.height} frames, batch {pipeline.batch}): use a smaller --batch "
                              "or a smaller model.")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return UnweatherError(f"the {stage} stage failed: {type(exc).__name__}: {redact(first)}")
