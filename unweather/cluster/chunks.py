"""Cut a chunk out of a video file and join restored chunks back into one output, exactly once.

Cutting and joining move packets without decoding. The joined output gets the original presentation
timestamps of every frame (restored chunk frames are matched to them by rank, so a chunk may come back
in any time base) and the input's audio packets, copied untouched.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import uuid
from collections.abc import Iterator
from fractions import Fraction

from unweather.cluster.planner import Chunk, InputPlan
from unweather.errors import UnweatherError

PART_MARK = ".part"


def temp_path(final: str) -> str:
    """A unique temporary name beside `final` that keeps its extension (the muxer is chosen by it).

    The name carries the host and pid of the writer, so leftovers of a killed worker can be traced,
    and a mark `remove_temps` finds them by: a worker killed by Ray never runs the cleanup that
    `unweather.fileio` (the package's atomic writes for everything else) relies on.
    """
    folder, name = os.path.split(final)
    stem, ext = os.path.splitext(name)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return os.path.join(folder, f".{stem}.{tag}{PART_MARK}{ext}")


def is_temp(name: str) -> bool:
    """Whether a file name is one of `temp_path`'s."""
    base = os.path.basename(name)
    stem = os.path.splitext(base)[0]
    return base.startswith(".") and stem.endswith(PART_MARK)


def publish(tmp: str, final: str) -> None:
    """Make a completely written `tmp` visible as `final` in one step (same folder, atomic rename).

    Flushed to the disk first: chunks live on storage other nodes read (NFS), where a rename can
    otherwise become visible before the data.
    """
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def remove_temps(folder: str) -> list[str]:
    """Delete the temporary files `temp_path` made in `folder` (not recursive); return their paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if is_temp(name):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def count_video_packets(path: str) -> int:
    """Number of non-empty packets in the first video stream of `path` (no decoding)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)


def cut(chunk: Chunk, dst: str) -> None:
    """Copy the chunk's video packets from its input into `dst` (usually .mkv), without decoding.

    Written under a temporary name and renamed when complete.
    """
    import av

    tmp = temp_path(dst)
    try:
        with av.open(chunk.input) as src, av.open(tmp, "w") as out:
            vin = src.streams.video[0]
            vout = out.add_stream_from_template(vin)
            written = 0
            for packet in _packets_from(src, vin, chunk.key_pts):
                if written == chunk.frames:
                    break
                packet.stream = vout
                out.mux(packet)
                written += 1
        if written != chunk.frames:
            raise UnweatherError(f"{chunk.input}: chunk {chunk.index} has {written} frames, expected "
                                 f"{chunk.frames} (was the file changed?)")
        publish(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _packets_from(container, stream, key_pts: int) -> Iterator:
    """Video packets in decode order from the keyframe whose pts is `key_pts` on."""
    if key_pts != 0:
        # Seeking is only a shortcut: if it lands past the keyframe, read from the start instead.
        container.seek(key_pts, stream=stream, backward=True, any_frame=False)
    found = False
    restarted = key_pts == 0
    while True:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            if not found:
                if packet.pts == key_pts and packet.is_keyframe:
                    found = True
                elif packet.pts is not None and packet.pts > key_pts and packet.is_keyframe and not restarted:
                    break
                else:
                    continue
            yield packet
        if found or restarted:
            return
        container.seek(0, stream=stream, backward=True, any_frame=False)
        restarted = True


def join(plan: InputPlan, chunk_files: list[str], dst: str) -> dict:
    """Join restored chunks into `dst` with the original timestamps and the input's audio.

    Written under a temporary name and renamed when complete.

    Returns:
        {"frames": video frames written, "audio_packets": audio packets copied}.
    """
    import av

    if len(chunk_files) != len(plan.chunks):
        raise UnweatherError(f"{plan.input}: {len(chunk_files)} restored chunks for {len(plan.chunks)} planned")
    tb = plan.time_base
    new_pts: list[list[int]] = []
    for chunk, path in zip(plan.chunks, chunk_files):
        out_pts = _video_pts(path)
        if len(out_pts) != chunk.frames:
            raise UnweatherError(f"{plan.input}: chunk {chunk.index} came back with {len(out_pts)} frames, "
                                 f"expected {chunk.frames}")
        original = plan.chunk_pts(chunk)
        rank = {p: r for r, p in enumerate(sorted(out_pts))}
        if len(rank) != len(out_pts):
            raise UnweatherError(f"{plan.input}: chunk {chunk.index} came back with repeated timestamps")
        new_pts.append([original[rank[p]] for p in out_pts])
    shown = sorted(plan.pts)
    flat = [p for pts in new_pts for p in pts]
    # Decode times: the i-th smallest pts moved back by the largest reordering delay, so they rise
    # strictly and never pass their packet's pts (what an encoder's own dts look like).
    delay = max(s - p for s, p in zip(shown, flat))
    gaps = {p: (q - p) for p, q in itertools.pairwise(shown)}
    last_gap = shown[-1] - shown[-2] if len(shown) > 1 else max(1, int(Fraction(1, 25) / tb))
    gaps[shown[-1]] = last_gap

    tmp = temp_path(dst)
    try:
        with av.open(plan.input) as src, av.open(tmp, "w") as out:
            with av.open(chunk_files[0]) as first:
                vout = out.add_stream_from_template(first.streams.video[0])
            vout.time_base = tb
            audio = []
            for stream in src.streams.audio:
                aout = out.add_stream_from_template(stream)
                aout.time_base = stream.time_base
                audio.append((stream.index, aout))
            sources = [_video_packets(chunk_files, new_pts, shown, delay, gaps, tb, vout)]
            sources += [_audio_packets(plan.input, index, aout) for index, aout in audio]
            frames = audio_packets = 0
            for *_, packet in heapq.merge(*sources):
                out.mux(packet)
                if packet.stream is vout:
                    frames += 1
                else:
                    audio_packets += 1
        publish(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"frames": frames, "audio_packets": audio_packets}


def _video_pts(path: str) -> list[int]:
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            return [int(p.pts) for p in container.demux(stream) if p.size and p.pts is not None]
    except (av.FFmpegError, IndexError) as exc:
        raise UnweatherError(f"cannot read restored chunk {path}: {exc}") from exc


def _video_packets(files: list[str], new_pts: list[list[int]], shown: list[int], delay: int,
                   gaps: dict[int, int], tb: Fraction, vout) -> Iterator[tuple[Fraction, int, int, object]]:
    import av

    i = 0
    for path, pts in zip(files, new_pts):
        with av.open(path) as container:
            stream = container.streams.video[0]
            packets = (p for p in container.demux(stream) if p.size and p.pts is not None)
            for packet, p in zip(packets, pts):
                dts = shown[i] - delay
                packet.stream = vout
                packet.time_base = tb
                packet.pts = p
                packet.dts = dts
                packet.duration = gaps[p]
                # Ties go to video (0), then to the lower stream; the counter keeps each stream's order.
                yield dts * tb, 0, i, packet
                i += 1


def _audio_packets(path: str, index: int, aout) -> Iterator[tuple[Fraction, int, int, object]]:
    import av

    with av.open(path) as container:
        stream = container.streams[index]
        seq = 0
        last = None
        for packet in container.demux(stream):
            if not packet.size:
                continue
            ts = packet.dts if packet.dts is not None else packet.pts
            key = ts * stream.time_base if ts is not None else last
            last = key if key is not None else Fraction(0)
            packet.stream = aout
            seq += 1
            yield last, 1 + index, seq, packet
