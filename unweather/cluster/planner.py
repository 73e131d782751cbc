"""Split video files into chunks at clean keyframes, from the demuxer alone (no decoding).

A chunk is a run of video packets in decode order that starts at a keyframe and that a decoder can
decode on its own: every packet before the cut is shown before every packet after it (a closed GOP).
Open-GOP keyframes, whose leading B-frames reference the previous GOP, are never used as cuts, so a
chunk always decodes to exactly as many frames as it has packets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from fractions import Fraction

from unweather.errors import UnweatherError

# Files up to this long go through as one chunk when no chunk length is given.
WHOLE_FILE_SECONDS = 300.0
# The chunk length used for longer files when no chunk length is given.
AUTO_CHUNK_SECONDS = 120.0


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One piece of one input: `frames` video packets in decode order from the keyframe at `key_pts`.

    Attributes:
        input: path of the source file.
        index: position of the chunk in its input, from 0.
        count: number of chunks of the input.
        key_pts: pts of the chunk's first packet (a keyframe), in the video stream's time base.
        first_packet: decode-order index of the first packet in the input's video stream.
        frames: number of video packets (= decoded frames) in the chunk.
        start: presentation time of the first frame, in seconds.
        end: presentation time just past the last frame, in seconds.
    """

    input: str
    index: int
    count: int
    key_pts: int
    first_packet: int
    frames: int
    start: float
    end: float

    @property
    def whole(self) -> bool:
        """True when the chunk is the whole input (it can be read in place, without cutting)."""
        return self.count == 1


@dataclasses.dataclass
class InputPlan:
    """The video packets of one input and how they are cut into chunks.

    Attributes:
        input: path of the source file.
        key: a stable name for the input's working folder (file name, size, mtime and path hash).
        time_base: the video stream's time base.
        pts: pts of every video packet, in decode order.
        keyframes: decode-order indices of the clean cut points (always includes 0).
        chunks: the chunks, in order.
        has_audio: whether the input has at least one audio stream.
        duration: seconds from the first frame's presentation to the end of the last.
    """

    input: str
    key: str
    time_base: Fraction
    pts: list[int]
    keyframes: list[int]
    chunks: list[Chunk]
    has_audio: bool
    duration: float

    @property
    def frames(self) -> int:
        """Number of video frames in the input."""
        return len(self.pts)

    def chunk_pts(self, chunk: Chunk) -> list[int]:
        """The original pts of the chunk's frames, in presentation order."""
        return sorted(self.pts[chunk.first_packet:chunk.first_packet + chunk.frames])


@dataclasses.dataclass(frozen=True)
class LeadIn:
    """The frames before a chunk that warm a video network's state (restored, not written).

    Attributes:
        key_pts: pts of the clean keyframe the lead-in is decoded from.
        first_packet: that keyframe's decode-order index.
        skip: frames from the keyframe that are only decoded (they lead the decoder to the rest).
        frames: the frames after those, up to the chunk, that are restored to warm the state.
    """

    key_pts: int
    first_packet: int
    skip: int
    frames: int


def lead_in(plan: InputPlan, chunk: Chunk, seconds: float) -> LeadIn | None:
    """The lead-in of `chunk`: its last `seconds` before the chunk, decoded from the clean keyframe before them.

    None for the first chunk (an unchunked run starts there with no history too) and for `seconds` <= 0.
    """
    if chunk.first_packet == 0 or seconds <= 0:
        return None
    tb = float(plan.time_base)
    start = min(plan.pts[chunk.first_packet:chunk.first_packet + chunk.frames]) - seconds / tb
    # Clean cuts: every frame from the cut on is shown after every frame before it, so the pts of the
    # cut is the least from there on, and the frames between it and the chunk are all shown before the chunk.
    earlier = [k for k in plan.keyframes if k < chunk.first_packet]
    first = max((k for k in earlier if plan.pts[k] <= start), default=earlier[0])
    shown = sorted(plan.pts[first:chunk.first_packet])
    frames = max(1, sum(1 for p in shown if p >= start))
    return LeadIn(plan.pts[first], first, len(shown) - frames, frames)


def input_key(path: str) -> str:
    """A name for the input's working folder that changes when the file does."""
    st = os.stat(path)
    ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(path))[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:60]
    return f"{safe}-{digest}"


def read_video_packets(path: str) -> tuple[Fraction, list[int], list[bool], list[int], bool]:
    """Demux the first video stream of `path` without decoding.

    Returns:
        (time base, pts per packet, keyframe flag per packet, duration per packet, has audio), packets in
        decode order, empty packets skipped.
    """
    import av

    from unweather.media import open_video

    with open_video(path) as (container, stream):
        has_audio = bool(container.streams.audio)
        pts: list[int] = []
        keys: list[bool] = []
        durations: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream flush packet
                if packet.pts is None:
                    raise UnweatherError(f"{path} has video packets without timestamps; remux it first")
                pts.append(int(packet.pts))
                keys.append(bool(packet.is_keyframe))
                durations.append(int(packet.duration or 0))
        except av.FFmpegError as exc:
            raise UnweatherError(f"cannot read {path}: {exc}") from exc
        if not pts:
            raise UnweatherError(f"{path} has no video frames")
        return Fraction(stream.time_base), pts, keys, durations, has_audio


def clean_cuts(pts: list[int], keys: list[bool]) -> list[int]:
    """Decode-order indices of keyframes that start a closed GOP.

    Every packet before the cut is shown before the keyframe, and the keyframe is shown first among the
    packets from it on: no leading B-frame after it refers back across the cut (an open GOP).
    """
    n = len(pts)
    suffix_min = [0] * n
    low = pts[-1]
    for i in range(n - 1, -1, -1):
        low = min(low, pts[i])
        suffix_min[i] = low
    cuts = [0]
    high = pts[0]
    for i in range(1, n):
        if keys[i] and high < pts[i] == suffix_min[i]:
            cuts.append(i)
        high = max(high, pts[i])
    return cuts


def plan_input(path: str, chunk_seconds: float | None = None) -> InputPlan:
    """Plan the chunks of one video file.

    Args:
        path: the file.
        chunk_seconds: the shortest chunk wanted; a chunk ends at the first clean keyframe at least this
            long after its start. None: one chunk for files up to `WHOLE_FILE_SECONDS`, else
            `AUTO_CHUNK_SECONDS`. 0 or less: one chunk per file.
    """
    time_base, pts, keys, durations, has_audio = read_video_packets(path)
    order = sorted(pts)
    last = order[-1] + (durations[pts.index(order[-1])] or (order[-1] - order[-2] if len(order) > 1 else 0))
    duration = float((last - order[0]) * time_base)
    if chunk_seconds is None:
        chunk_seconds = 0.0 if duration <= WHOLE_FILE_SECONDS else AUTO_CHUNK_SECONDS
    cuts = clean_cuts(pts, keys)
    starts = [0]
    if chunk_seconds > 0:
        step = chunk_seconds / float(time_base)
        for cut in cuts[1:]:
            # A trailing piece shorter than a quarter chunk stays with the chunk before it.
            if pts[cut] - pts[starts[-1]] >= step and last - pts[cut] >= step / 4:
                starts.append(cut)
    bounds = starts + [len(pts)]
    chunks = []
    for index, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        end = last if hi == len(pts) else min(pts[hi:])
        chunks.append(Chunk(input=path, index=index, count=len(starts), key_pts=pts[lo], first_packet=lo,
                            frames=hi - lo, start=float(min(pts[lo:hi]) * time_base),
                            end=float(end * time_base)))
    return InputPlan(input=path, key=input_key(path), time_base=time_base, pts=pts, keyframes=cuts,
                     chunks=chunks, has_audio=has_audio, duration=duration)
