"""Turn benchmark results into the README's markdown table and a figure (FPS bars, latency boxes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = ("model", "backend", "precision", "resolution", "batch", "engine FPS", "p50 ms", "p95 ms", "p99 ms",
           "x vs torch fp32", "pipeline FPS", "pipeline p50 / p99 ms", "pipeline x", "peak RSS MB")
# Above this share of the CPUs used by other processes, absolute figures are flagged as loaded.
LOADED_OTHERS_PCT = 10.0


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _fps(value: float, per_repeat: list[float], spread: float) -> str:
    return f"{value:.1f} ±{100 * spread / 2:.0f}%" if len(per_repeat) > 1 else f"{value:.1f}"


def _measured(row: dict[str, Any]) -> bool:
    # Rows that timed out after some timed calls keep their figures (see unweather.bench.runner.measured).
    return row.get("status") in ("ok", "timed_out") and "engine" in row


def _table_row(row: dict[str, Any]) -> list[str]:
    eng = row["engine"]
    lat = eng["latency_ms"]
    pipe = row.get("pipeline") or {}
    pipe_ok = "fps" in pipe
    if pipe_ok:
        pipe_fps = _fps(pipe["fps"], pipe["fps_per_repeat"], pipe["fps_spread"])
        if pipe.get("status") == "timed_out":
            pipe_fps += " (timed out)"
        plat = pipe.get("latency_ms") or {}
        pipe_lat = (f"{_ms(plat['p50'])} / {_ms(plat['p99'])}" if "p50" in plat and "p99" in plat else "–")
    else:
        pipe_fps, pipe_lat = pipe.get("status", "not run").replace("timed_out", "timed out"), "–"
    rss = (row.get("resources") or {}).get("rss_peak_mb")
    engine_fps = _fps(eng["fps"], eng["fps_per_repeat"], eng["fps_spread"])
    if eng.get("timed_out"):
        engine_fps += f" (timed out, {len(eng['samples_ms'])} calls)"
    return [row["model"], row["backend_label"], row["precision"], row["resolution"], str(row["batch"]),
            engine_fps,
            _ms(lat["median"]), _ms(lat["p95"]), _ms(lat["p99"]), _fmt(eng.get("x_vs_baseline"), 2, "x"),
            pipe_fps, pipe_lat, _fmt(pipe.get("x_vs_baseline"), 2, "x") if pipe_ok else "–",
            _fmt(rss, 0)]


def machine_line(payload: dict[str, Any]) -> str:
    """One sentence naming the machine (the CPU with its flags), libraries, commit, load and run settings."""
    from unweather.cpu import describe

    machine = payload["machine"]
    cpu = machine["cpu"]
    libs = machine["libraries"]
    gpus = machine.get("gpus") or []
    gpu = ", ".join(f"{g['name']} (driver {g.get('driver') or '?'})" for g in gpus) or "no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in libs.items() if v and k in ("torch", "onnxruntime", "tensorrt"))
    git = machine.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
    cfg = payload["config"]
    load = ""
    if machine.get("load_average_start") and machine.get("load_average_end"):
        load = (f"; load average {machine['load_average_start'][0]:.1f} at start, "
                f"{machine['load_average_end'][0]:.1f} at end")
    share = machine.get("cpu_share_during_run")
    if share:
        load += f"; other processes kept {share['others_pct']:.0f}% of the CPUs busy during the run"
    calls = "call" if cfg["warmup"] == 1 else "calls"
    limit = f", at most {cfg['time_limit_s']:g} s per combination" if cfg.get("time_limit_s") else ""
    return (f"{describe(cpu)}, {cpu['cores']} cores, {cpu['threads']} threads, torch threads "
            f"{cpu['torch_threads']}; {gpu}, device {payload['device']}; {versions}; commit {commit}; "
            f"{cfg['frames']} frames x {cfg['repeats']} repeats after {cfg['warmup']} warm-up {calls}{limit}"
            f"{load}; {machine['timestamp']}.")


def loaded(payload: dict[str, Any]) -> bool:
    """True when other processes used a noticeable share of the CPUs while `payload` was measured."""
    share = payload["machine"].get("cpu_share_during_run") or {}
    return share.get("others_pct", 0.0) > LOADED_OTHERS_PCT


# How a status that is not "ok" reads in the table: a skip is no fault, a failure is an error to look into.
STATUS_WORDS = {"skipped": "skipped (not applicable here)", "failed": "failed (error)", "timed_out": "timed out"}


def markdown_table(payload: dict[str, Any]) -> str:
    """The results as a markdown table, then the failed combinations (errors), the timed-out ones (in
    the table too when they timed some calls) and the skipped ones (not applicable here), each with
    its reason."""
    rows = payload["results"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        if _measured(row):
            lines.append("| " + " | ".join(_table_row(row)) + " |")
    others = [r for r in rows if r["status"] != "ok"]
    order = {"failed": 0, "timed_out": 1}
    if others:
        lines.append("")
        for row in sorted(others, key=lambda r: order.get(r["status"], 2)):
            lines.append(f"- {STATUS_WORDS.get(row['status'], row['status'])}: {row['model']} {row['backend_label']} "
                         f"{row['precision']} {row['resolution']} batch {row['batch']}: {row['reason']}")
    pipe_reasons = {(r["pipeline"]["status"], r["pipeline"]["reason"]) for r in rows
                    if _measured(r) and r.get("pipeline") and "fps" not in r["pipeline"]}
    for status, reason in sorted(pipe_reasons):
        lines.append(f"- pipeline {STATUS_WORDS.get(status, status)}: {reason}")
    lines += live_table(rows)
    return "\n".join(lines) + "\n"


LIVE_COLUMNS = ("model", "backend", "precision", "resolution", "input FPS", "frames in / out / dropped",
                "latency p50 ms", "p95 ms", "p99 ms")


def live_table(rows: list[dict[str, Any]]) -> list[str]:
    """Lines of the live-mode table (`bench --live`): latency percentiles and drops; none without it."""
    live = [r for r in rows if _measured(r) and r.get("live")]
    if not live:
        return []
    lines = ["", "| " + " | ".join(LIVE_COLUMNS) + " |", "|" + "|".join("---" for _ in LIVE_COLUMNS) + "|"]
    for row in live:
        lv = row["live"]
        head = [row["model"], row["backend_label"], row["precision"], row["resolution"]]
        if "latency_ms" not in lv:
            lines.append("| " + " | ".join([*head, "–", f"{lv['status']}: {lv['reason']}", "–", "–", "–"]) + " |")
            continue
        lat = lv["latency_ms"]
        rate = f"{lv['rate']:g}" + (" (timed out)" if lv.get("status") == "timed_out" else "")
        cells = [rate, f"{lv['frames_in']} / {lv['frames_out']} / {lv['dropped']}",
                 *(_ms(lat[k]) if lat.get(k) is not None else "–" for k in ("p50", "p95", "p99"))]
        lines.append("| " + " | ".join([*head, *cells]) + " |")
    return lines


def markdown_report(payload: dict[str, Any]) -> str:
    """The table with the command line that produced it and the machine it ran on."""
    parts = []
    if payload.get("command"):
        parts.append(f"```bash\n{payload['command']}\n```\n")
    parts.append(f"Measured on {machine_line(payload)}\n")
    if loaded(payload):
        parts.append("The machine was shared with other work during this run: absolute figures are lower and "
                     "noisier than on an idle machine; ratios within the run stay comparable.\n")
    parts.append("Engine: the network alone on frames already on the device; latency per call (one batch), "
                 "percentiles over every timed call; FPS is the median of the repetitions (± half their "
                 "range). Pipeline: decode, infer and encode through `unweather.stream.run`, latency per "
                 "frame from decoded to written. x: speed relative to torch fp32 eager on the same frames. "
                 "Peak RSS: the process's resident memory while the combination ran.\n")
    if any(r.get("live") for r in payload["results"]):
        parts.append("Live: the same frames fed to the pipeline in live mode at the input frame rate, as a "
                     "camera delivers them (batch 1; the oldest waiting frame is dropped when inference falls "
                     "behind); latency per frame from its due time to written.\n")
    parts.append(markdown_table(payload))
    return "\n".join(parts)


def write_plot(payload: dict[str, Any], path: str | Path) -> Path:
    """Draw engine FPS per backend and resolution (bars) and the latency distribution (boxes) to `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in payload["results"] if _measured(r)]
    models = list(dict.fromkeys(r["model"] for r in rows)) or ["(nothing ran)"]
    variants = list(dict.fromkeys(f"{r['backend_label']} {r['precision']}" for r in rows))
    fig = Figure(figsize=(max(8.0, 4.0 * len(models)), 9.0), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(models))
    colours = {v: f"C{i % 10}" for i, v in enumerate(variants)}

    for col, model in enumerate(models):
        ax = fig.add_subplot(grid[0, col])
        mine = [r for r in rows if r["model"] == model]
        groups = list(dict.fromkeys((r["resolution"], r["batch"]) for r in mine))
        width = 0.8 / max(1, len(variants))
        for vi, variant in enumerate(variants):
            xs, ys, lo, hi, pipe_x, pipe_y = [], [], [], [], [], []
            for gi, group in enumerate(groups):
                for r in mine:
                    if (r["resolution"], r["batch"]) == group and f"{r['backend_label']} {r['precision']}" == variant:
                        eng = r["engine"]
                        x = gi - 0.4 + width * (vi + 0.5)
                        xs.append(x)
                        ys.append(eng["fps"])
                        lo.append(eng["fps"] - eng["fps_min"])
                        hi.append(eng["fps_max"] - eng["fps"])
                        pipe = r.get("pipeline") or {}
                        if "fps" in pipe:
                            pipe_x.append(x)
                            pipe_y.append(pipe["fps"])
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=colours[variant], label=variant)
            if pipe_x:
                ax.scatter(pipe_x, pipe_y, marker="_", s=200, color="black", zorder=3,
                           label="pipeline FPS" if vi == 0 else None)
        ax.set_xticks(range(len(groups)), [f"{res}\nbatch {b}" for res, b in groups])
        ax.set_title(model)
        ax.set_ylabel("engine FPS (bars), pipeline FPS (dash)")
        if mine and max(r["engine"]["fps"] for r in mine) > 50 * min(r["engine"]["fps"] for r in mine):
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        if col == 0 and variants:
            ax.legend(fontsize="small")

    ax = fig.add_subplot(grid[1, :])
    if rows:
        data = [r["engine"]["samples_ms"] for r in rows]
        labels = [f"{r['model']}\n{r['backend_label']} {r['precision']}\n{r['resolution']} b{r['batch']}"
                  for r in rows]
        # Labels set on the axis: boxplot's own keyword was renamed in matplotlib 3.9.
        parts = ax.boxplot(data, showfliers=True, patch_artist=True)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        for patch, r in zip(parts["boxes"], rows):
            patch.set_facecolor(colours[f"{r['backend_label']} {r['precision']}"])
        ax.tick_params(axis="x", labelsize="x-small", labelrotation=90)
        lat = [v for d in data for v in d]
        if lat and max(lat) > 50 * max(min(lat), 1e-6):
            ax.set_yscale("log")
    ax.set_ylabel("engine latency per batch (ms)")
    ax.set_title("Latency distribution over all timed calls")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"unweather bench on {payload['machine']['cpu']['model']}, device {payload['device']}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
