"""Restore video archives on a Ray cluster: chunks through a pool of restorer actors, exactly once.

Only chunk descriptions (paths and packet ranges) travel to the actors; each actor builds one engine
and runs the whole decode -> infer -> encode pipeline on its chunk with `unweather.stream.run`, so
frames never travel through Ray's object store. The actors are plain restartable Ray actors whose
constructor arguments are small and passed inline (never an object-store reference that a restart
could lose), each given one chunk at a time. Inputs, the output folder and its working folder must be on a
file system every node sees (NFS, a shared disk), as with any Ray job that reads and writes files.

A video network (one that carries a state from frame to frame) would start each chunk with no history,
and the boundaries would show: each chunk but the first is decoded from an earlier keyframe, and its
last `ArchiveOptions.warmup_seconds` before the chunk are restored to warm the state, not written.

Exactly once: every chunk and every output is written under a temporary name and renamed when
complete; a retried chunk simply writes again, and a killed worker's temporary files are deleted at
the end. Finished chunks stay in the working folder until their input is joined, so `resume` skips them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from unweather.cluster.chunks import count_video_packets, cut, join, publish, remove_temps, temp_path
from unweather.cluster.planner import Chunk, InputPlan, LeadIn, lead_in, plan_input
from unweather.cluster.ray_connect import require_ray
from unweather.errors import UnweatherError
from unweather.redact import redact
from unweather.sources_file import Source, apply_options, output_path

if TYPE_CHECKING:
    from unweather.engine.base import Engine

log = logging.getLogger(__name__)

WORK_DIR = ".unweather-work"

# runner(input, output, config, engine=..., stop_event=...) -> stats (an object with to_dict(), or a dict)
Runner = Callable[..., Any]


@dataclasses.dataclass
class ArchiveOptions:
    """How an archive run uses the cluster.

    Attributes:
        chunk_seconds: shortest chunk (cuts fall on the next clean keyframe); None: one chunk per file
            up to 5 minutes, 2-minute chunks beyond; 0: always one chunk per file.
        resume: keep finished chunks and outputs from an earlier run and do only what is missing.
        max_failed: stop scheduling new chunks once more than this many inputs have failed (None: never).
        retries: attempts after the first for a chunk that raises, on the same actor.
        actors: restorer actors in the pool; None: one per `gpus_per_actor` share of the cluster's GPUs,
            or half the cluster's CPUs without GPUs.
        gpus_per_actor: GPU share of each actor (0.5 puts two actors on a GPU); None: 1 if the cluster
            has GPUs, else 0.
        cpus_per_actor: CPUs each actor reserves; None: 0 for GPU actors (they wait on the GPU; an actor
            holding CPUs would starve Ray's own tasks, ray-project/ray#44687), 1 otherwise.
        chunk_timeout: seconds one chunk may take before it is stopped and counted as failed.
        start_timeout: seconds to wait for the actor pool to start (no capacity fails, never hangs).
        progress: show a progress bar over chunks and frames.
        keep_chunks: keep the restored chunks after joining.
        warmup_seconds: video networks: seconds before each chunk restored to warm its state and not
            written. The video student's history fades over about 17 frames (its evidence is capped at
            16), so 2 s leaves a few percent of a cold start at 25 fps.
    """

    chunk_seconds: float | None = None
    resume: bool = False
    max_failed: int | None = None
    retries: int = 2
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    chunk_timeout: float = 6 * 3600.0
    start_timeout: float = 300.0
    progress: bool = True
    keep_chunks: bool = False
    warmup_seconds: float = 2.0


def default_runner() -> Runner:
    """`unweather.stream.run`, the single-machine pipeline."""
    from unweather.stream import run

    return run


def worker_config(config: Any) -> Any:
    """`config` as a worker runs it: no stats file of its own and no progress bar (the driver has those)."""
    names = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
    if {"stats_path", "progress"} <= names:
        return dataclasses.replace(config, stats_path=None, progress=False)
    return config


def open_engine(config: Any) -> Engine:
    """Build the engine a config asks for (once per actor): `unweather.stream.open_engine` for a
    RunConfig (files and cameras are videos: its default model is the video student when it is shipped);
    for another config, `unweather.engine.open` with its model/backend/precision/device."""
    import unweather.engine as engine_mod
    from unweather import stream

    if config is not None and isinstance(config, stream.RunConfig):
        return stream.open_engine(config, video=True)
    names = ("model", "backend", "precision", "device")
    kwargs = {n: getattr(config, n) for n in names if config is not None and getattr(config, n, None)}
    return engine_mod.open(**kwargs)


def config_digest(config: Any) -> str:
    """A short digest of a config, so chunks restored with other settings are never reused."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=repr).encode()).hexdigest()[:8]


def _torch_threads() -> int:
    # Ray sets OMP_NUM_THREADS to the actor's CPU count (1 when it asks for none): worth seeing in stats.
    import torch

    return torch.get_num_threads()


class ChunkRestorer:
    """A restorer actor's body: one engine, built once, restoring one chunk per call."""

    def __init__(self, config: Any, runner: Runner | None = None, retries: int = 2,
                 chunk_timeout: float = 6 * 3600.0) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self.where = {"node": ctx.get_node_id(), "worker": ctx.get_worker_id(),
                      "actor": ctx.get_actor_id() or "", "host": socket.gethostname(), "pid": os.getpid(),
                      "gpus": ",".join(str(g) for g in ray.get_gpu_ids()),
                      "threads": _torch_threads()}
        # Chunks must not each write the run's stats file or draw a progress bar.
        self.config = config = worker_config(config)
        self.runner = runner or default_runner()
        self.retries = retries
        self.chunk_timeout = chunk_timeout
        self.engine = None
        self.engine_error = ""
        try:
            self.engine = open_engine(config)
        except Exception as exc:  # noqa: BLE001 - reported per chunk: a dead actor would be retried forever
            self.engine_error = f"cannot build the engine: {type(exc).__name__}: {redact(str(exc))}"

    def ready(self) -> dict[str, Any]:
        """Where this actor runs, once it is placed and its engine is built."""
        return self.where

    def restore(self, row: dict[str, Any]) -> dict[str, Any]:
        """Restore one chunk into `row["chunk_path"]`; never raises (errors are returned)."""
        chunk = Chunk(input=row["input"], index=row["index"], count=row["count"], key_pts=row["key_pts"],
                      first_packet=row["first_packet"], frames=row["frames"], start=row["start"],
                      end=row["end"])
        lead = LeadIn(**row["lead"]) if row.get("lead") else None
        final = row["chunk_path"]
        began = time.monotonic()
        error = ""
        attempts = 0
        if self.engine_error:
            error = self.engine_error
        # A retry after this worker was killed past the rename finds the chunk done.
        elif not _complete(final, chunk.frames):
            for attempts in range(1, self.retries + 2):
                error = self._attempt(chunk, final, lead)
                if not error:
                    break
                log.warning("%s chunk %d attempt %d failed: %s", redact(chunk.input), chunk.index,
                            attempts, error)
        return {"name": row["name"], "index": chunk.index, "status": "failed" if error else "done",
                "frames": 0 if error else chunk.frames, "seconds": time.monotonic() - began,
                "attempts": attempts, "error": error, **self.where}

    def _attempt(self, chunk: Chunk, final: str, lead: LeadIn | None = None) -> str:
        tmp = temp_path(final)
        stop = threading.Event()
        timer = threading.Timer(self.chunk_timeout, stop.set)
        timer.daemon = True
        try:
            timer.start()
            run_chunk(chunk, tmp, self.runner, self.config, self.engine, stop, lead)
            if stop.is_set():
                return f"timed out after {self.chunk_timeout:g} s"
            frames = count_video_packets(tmp)
            if frames != chunk.frames:
                return f"restored {frames} frames of {chunk.frames}"
            publish(tmp, final)
            return ""
        except Exception as exc:  # noqa: BLE001 - a chunk's failure is retried, then reported, never fatal
            return f"{type(exc).__name__}: {redact(str(exc))}"
        finally:
            timer.cancel()
            if os.path.exists(tmp):
                os.remove(tmp)


def run_chunk(chunk: Chunk, output: str, runner: Runner, config: Any, engine: Engine,
              stop_event: threading.Event | None = None, lead: LeadIn | None = None) -> None:
    """Restore one chunk into `output` with `runner`, cutting it out of its input unless it is the whole input.

    A video network (`engine.stateful`) also gets the chunk's `lead`: the input is cut from the lead-in's
    keyframe, and the frames before the chunk are handed to the runner as a `WarmUp` (restored, not written),
    so the chunk starts with about the history an unchunked run has there.
    """
    cut_path = None
    kwargs: dict[str, Any] = {}
    try:
        source = chunk.input
        if not chunk.whole:
            piece = chunk
            if lead is not None and getattr(engine, "stateful", False):
                from unweather.stream.config import WarmUp

                piece = dataclasses.replace(chunk, key_pts=lead.key_pts, first_packet=lead.first_packet,
                                            frames=chunk.frames + chunk.first_packet - lead.first_packet)
                kwargs["warmup"] = WarmUp(skip=lead.skip, frames=lead.frames)
            cut_path = temp_path(os.path.join(os.path.dirname(output), f"chunk-{chunk.index:05d}-input.mkv"))
            cut(piece, cut_path)
            source = cut_path
        runner(source, output, config, engine=engine, stop_event=stop_event, **kwargs)
    finally:
        if cut_path and os.path.exists(cut_path):
            os.remove(cut_path)


def _complete(path: str, frames: int) -> bool:
    try:
        return os.path.exists(path) and count_video_packets(path) == frames
    except Exception:  # noqa: BLE001 - an unreadable chunk is redone
        return False


@dataclasses.dataclass
class _Job:
    source: Source
    output: str
    config: Any
    plan: InputPlan | None = None
    work: str = ""
    chunk_paths: list[str] = dataclasses.field(default_factory=list)
    done: set[int] = dataclasses.field(default_factory=set)
    status: str = "pending"
    error: str = ""
    frames: int = 0
    audio_packets: int = 0


def _pool_shape(options: ArchiveOptions, resources: dict[str, float], n_chunks: int) -> tuple[int, float, float]:
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 0))
    share = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if options.actors:
        actors = options.actors
    elif share > 0:
        actors = max(1, int(gpus / share + 1e-9))
    else:
        actors = max(1, int(cpus // 2))
    actors = max(1, min(actors, n_chunks))
    cpu_share = options.cpus_per_actor if options.cpus_per_actor is not None else (0.0 if share > 0 else 1.0)
    return actors, share, cpu_share


def run_archive(sources: Sequence[Source], output_dir: str, config: Any = None,
                options: ArchiveOptions | None = None, runner: Runner | None = None) -> dict:
    """Restore files on the Ray cluster this process is connected to (see `connect`).

    Args:
        sources: the files; each one's `options` override `config`.
        output_dir: the folder for outputs (and the hidden working folder for chunks).
        config: a `unweather.stream.RunConfig` (None: its defaults).
        options: how to chunk, retry, resume and size the actor pool.
        runner: the pipeline run on each chunk (default `unweather.stream.run`).

    Returns:
        Stats: per input (output, status, frames, error, the nodes and workers that restored it), per
        chunk (node, worker, pid, seconds, attempts, error) and totals.
    """
    ray = require_ray()
    options = options or ArchiveOptions()
    if config is None:
        from unweather.stream import RunConfig

        config = RunConfig()
    outputs = [os.path.abspath(output_path(s, output_dir)) for s in sources]
    clashes = sorted({o for o in outputs if outputs.count(o) > 1})
    if clashes:
        raise UnweatherError(f"several inputs would write {clashes[0]}; give them distinct names or outputs")
    began = time.monotonic()
    os.makedirs(output_dir, exist_ok=True)
    work_root = os.path.join(output_dir, WORK_DIR)
    # Planning reads every input's packets (no decoding): a few files at a time, mostly waiting on disk.
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(sources)))) as pool:
        jobs = list(pool.map(lambda s: _prepare(s, output_dir, work_root, config, options), sources))
    chunk_rows: list[dict] = []
    for job in jobs:
        if job.status == "skipped":
            continue
        if job.status == "failed" or job.plan is None:
            continue
        for chunk, path in zip(job.plan.chunks, job.chunk_paths):
            if chunk.index in job.done:
                continue
            lead = lead_in(job.plan, chunk, options.warmup_seconds)
            chunk_rows.append({"name": job.source.name, "input": chunk.input, "index": chunk.index,
                               "count": chunk.count, "key_pts": chunk.key_pts,
                               "first_packet": chunk.first_packet, "frames": chunk.frames,
                               "start": chunk.start, "end": chunk.end, "chunk_path": path,
                               "lead": dataclasses.asdict(lead) if lead is not None else None})
    by_name = {job.source.name: job for job in jobs}
    chunk_stats: list[dict] = []
    failed = sum(1 for job in jobs if job.status == "failed")
    stopped = options.max_failed is not None and failed > options.max_failed
    # Inputs whose chunks all exist already (resume) are joined before anything is scheduled.
    for job in jobs:
        if job.status == "pending" and len(job.done) == len(job.plan.chunks):
            _finish(job, options)
    resources = ray.cluster_resources()
    pool = {"actors": 0, "gpus_per_actor": 0.0, "cpus_per_actor": 0.0}
    if chunk_rows and not stopped:
        total_frames = sum(r["frames"] for r in chunk_rows)
        from tqdm import tqdm

        bar = tqdm(total=len(chunk_rows), unit="chunk", disable=not options.progress, desc="chunks",
                   dynamic_ncols=True)
        frames_done = 0
        for rows in _group_by_config(chunk_rows, by_name).values():
            if stopped:
                break
            actors, share, cpu_share = _pool_shape(options, resources, len(rows))
            pool = {"actors": actors, "gpus_per_actor": share, "cpus_per_actor": cpu_share}
            results = contextlib.closing(_execute(ray, rows, by_name[rows[0]["name"]].config, runner, options,
                                                  actors, share, cpu_share))
            with results as chunk_results:
                for result in chunk_results:
                    chunk_stats.append({"input": redact(by_name[result["name"]].source.input), **result})
                    job = by_name[result["name"]]
                    bar.update(1)
                    if result["status"] == "done":
                        frames_done += result["frames"]
                        job.done.add(result["index"])
                        if len(job.done) == len(job.plan.chunks) and job.status == "pending":
                            _finish(job, options)
                    elif job.status == "pending":
                        job.status = "failed"
                        job.error = f"chunk {result['index']}: {result['error']}"
                        log.error("%s failed: %s", job.source.name, job.error)
                    if job.status == "failed" and result["status"] == "failed":
                        failed = sum(1 for j in jobs if j.status == "failed")
                        if options.max_failed is not None and failed > options.max_failed:
                            log.error("more than %d input(s) failed: stopping", options.max_failed)
                            stopped = True
                            break
                    bar.set_postfix_str(f"frames {frames_done}/{total_frames}")
        bar.close()
    for job in jobs:
        if job.status == "pending":
            job.status = "not run" if stopped else "failed"
            job.error = job.error or ("stopped after too many failures" if stopped else "chunks missing")
        if job.work and os.path.isdir(job.work):
            remove_temps(job.work)
    remove_temps(output_dir)
    for folder in {os.path.dirname(job.output) for job in jobs}:
        remove_temps(folder)
    if os.path.isdir(work_root) and not os.listdir(work_root):
        os.rmdir(work_root)
    seconds = time.monotonic() - began
    ok = [job for job in jobs if job.status == "done"]
    frames = sum(job.frames for job in ok)
    return {
        "ray": {"version": ray.__version__, "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                "resources": {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")}},
        "pool": pool,
        "inputs": [{"name": job.source.name, "input": redact(job.source.input), "output": job.output,
                    "status": job.status, "frames": job.frames, "audio_packets": job.audio_packets,
                    "chunks": len(job.plan.chunks) if job.plan else 0, "error": job.error,
                    **_placement(c for c in chunk_stats if c["name"] == job.source.name)} for job in jobs],
        "chunks": chunk_stats,
        "totals": {"inputs": len(jobs), "done": len(ok),
                   "failed": sum(1 for j in jobs if j.status == "failed"),
                   "skipped": sum(1 for j in jobs if j.status == "skipped"),
                   "not_run": sum(1 for j in jobs if j.status == "not run"),
                   "chunks_restored": sum(1 for c in chunk_stats if c["status"] == "done"),
                   "chunks_failed": sum(1 for c in chunk_stats if c["status"] == "failed"),
                   "frames": frames, "seconds": seconds,
                   "files_per_minute": 60.0 * len(ok) / seconds if seconds else 0.0,
                   "fps": frames / seconds if seconds else 0.0},
    }


def _placement(chunks: Iterator[dict[str, Any]]) -> dict[str, list[str]]:
    """The distinct nodes and workers that restored an input's chunks in this run, in order."""
    nodes: dict[str, None] = {}
    workers: dict[str, None] = {}
    for chunk in chunks:
        if chunk.get("node"):
            nodes[chunk["node"]] = None
        if chunk.get("worker"):
            workers[chunk["worker"]] = None
    return {"nodes": list(nodes), "workers": list(workers)}


def _prepare(source: Source, output_dir: str, work_root: str, config: Any, options: ArchiveOptions) -> _Job:
    job = _Job(source=source, output=output_path(source, output_dir), config=config)
    if options.resume and os.path.exists(job.output):
        job.status = "skipped"
        return job
    try:
        job.config = apply_options(config, source.options)
        if source.is_url:
            raise UnweatherError("archive runs take files; run live streams as a fleet")
        job.plan = plan_input(source.input, options.chunk_seconds)
    except UnweatherError as exc:
        job.status, job.error = "failed", redact(str(exc))
        log.error("%s failed: %s", source.name, job.error)
        return job
    job.work = os.path.join(work_root, f"{job.plan.key}-{config_digest(job.config)}")
    if not options.resume and os.path.isdir(job.work):
        shutil.rmtree(job.work)
    os.makedirs(job.work, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(job.output)), exist_ok=True)
    remove_temps(job.work)
    # One plan per chunking: chunks of another chunk length are never mixed in.
    tag = "whole" if len(job.plan.chunks) == 1 else f"{job.plan.chunks[1].first_packet}"
    job.chunk_paths = [os.path.join(job.work, f"chunk-{tag}-{c.index:05d}.mkv") for c in job.plan.chunks]
    job.done = {i for i, path in enumerate(job.chunk_paths) if os.path.exists(path)}
    return job


def _finish(job: _Job, options: ArchiveOptions) -> None:
    import av

    try:
        result = join(job.plan, job.chunk_paths, job.output)
    except (UnweatherError, av.FFmpegError, OSError, ValueError) as exc:
        job.status, job.error = "failed", redact(str(exc))
        log.error("%s failed: %s", job.source.name, job.error)
        return
    job.status = "done"
    job.frames = result["frames"]
    job.audio_packets = result["audio_packets"]
    if not options.keep_chunks:
        shutil.rmtree(job.work, ignore_errors=True)


def _group_by_config(rows: list[dict], by_name: dict[str, _Job]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(config_digest(by_name[row["name"]].config), []).append(row)
    return groups


def _execute(ray, rows: list[dict], config: Any, runner: Runner | None, options: ArchiveOptions, actors: int,
             gpus: float, cpus: float) -> Iterator[dict[str, Any]]:
    """Yield one result per chunk as the actor pool finishes them.

    Each actor gets one chunk at a time. An actor whose process or node dies is restarted by Ray and
    its chunk run again (the chunk's temporary files make that safe); closing the generator early
    kills the pool.
    """
    remote = ray.remote(ChunkRestorer).options(num_gpus=gpus, num_cpus=cpus, max_restarts=-1,
                                               max_task_retries=-1)
    pool = [remote.remote(config, runner, options.retries, options.chunk_timeout) for _ in range(actors)]
    try:
        starting = {actor.ready.remote(): actor for actor in pool}
        ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=options.start_timeout)
        idle = [starting[ref] for ref in ready]
        if not idle:
            raise UnweatherError(f"the Ray cluster has no room for {actors} restorer actor(s) "
                                 f"({gpus:g} GPU, {cpus:g} CPU each) within {options.start_timeout:g} s")
        if len(idle) < actors:
            log.warning("only %d of %d restorer actors found room on the cluster within %g s; going on with them",
                        len(idle), actors, options.start_timeout)
        waiting = collections.deque(rows)
        running: dict[Any, tuple[Any, dict]] = {}
        while waiting or running:
            while idle and waiting:
                actor, row = idle.pop(), waiting.popleft()
                running[actor.restore.remote(row)] = (actor, row)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, row = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                result = {"name": row["name"], "index": row["index"], "status": "failed", "frames": 0,
                          "seconds": 0.0, "attempts": 0, "error": f"the Ray job failed: {redact(first)}",
                          "node": "", "worker": "", "actor": "", "host": "", "pid": 0, "gpus": "", "threads": 0}
            idle.append(actor)
            yield result
    finally:
        for actor in pool:
            ray.kill(actor, no_restart=True)
