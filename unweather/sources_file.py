"""Inputs for many-stream runs: a sources file (YAML or TOML), or files, URLs and folders of videos.

Shared by the single-machine runs (`unweather.stream.multi`) and the Ray runs (`unweather.cluster`),
so it lives below both and imports neither.

A sources file lists one entry per camera or video, with optional defaults for all of them:

    defaults:                       # options for every source (RunConfig fields)
      model: fast
    sources:                        # or "cameras"
      - name: gate                  # unique; names the output and the Ray actor
        url: rtsp://user:pass@10.0.0.5/stream1
        output: recordings/gate/    # a file, or a folder (ends with /) for segments
        options: {device: cuda}
      - name: archive-1
        path: videos/day1.mp4       # relative paths are relative to the sources file
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from unweather.errors import UnweatherError
from unweather.media import VIDEO_EXTENSIONS, is_url, is_video_file, video_output_extension
from unweather.redact import redact

__all__ = ["Source", "apply_options", "expand_inputs", "is_sources_file", "is_url", "load_sources", "output_path",
           "resolve_inputs"]

_ENTRY_KEYS = {"name", "url", "path", "output", "options"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class Source:
    """One stream or file to restore.

    Attributes:
        name: unique name; it names the output file and the camera's Ray actor.
        input: a file path or a stream URL (may hold credentials: redact before logging).
        output: where the result goes (a file, or a folder ending in "/"); None: chosen by the caller.
        options: RunConfig fields that differ from the run's config for this source.
    """

    name: str
    input: str
    output: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_url(self) -> bool:
        """Whether the input is a network URL rather than a local path."""
        return is_url(self.input)


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-") or "source"
    return name[:64]


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}-{seen[name]}"
        seen.setdefault(name, 1)
        out.append(name)
    return out


def expand_inputs(inputs: Iterable[str]) -> list[Source]:
    """Turn command-line inputs (files, folders of videos, URLs) into sources with unique names.

    Folders give their video files (by extension, sorted, not recursive).
    """
    found: list[tuple[str, str]] = []
    for item in inputs:
        if is_url(item):
            tail = item.split("://", 1)[1].split("@")[-1]
            found.append((_safe_name(tail.split("?")[0]), item))
        elif os.path.isdir(item):
            names = sorted(n for n in os.listdir(item) if is_video_file(n))
            if not names:
                raise UnweatherError(f"folder {item} has no video files ({', '.join(VIDEO_EXTENSIONS)})")
            found += [(_safe_name(os.path.splitext(n)[0]), os.path.join(item, n)) for n in names]
        elif os.path.isfile(item):
            found.append((_safe_name(os.path.splitext(os.path.basename(item))[0]), item))
        else:
            raise UnweatherError(f"input {item} is not a file, a folder or a URL")
    names = _unique(name for name, _ in found)
    return [Source(name=name, input=path) for name, (_, path) in zip(names, found)]


def _load_document(path: str) -> Any:
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UnweatherError(f"cannot read sources file {path}: {exc.strerror}") from exc
    if ext == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # the same parser, a dependency on Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UnweatherError(f"sources file {path} is not valid TOML: {exc}") from exc
    if ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise UnweatherError("YAML sources files need the pyyaml package") from exc
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UnweatherError(f"sources file {path} is not valid YAML: {exc}") from exc
    raise UnweatherError(f"sources file {path} must end in .yaml, .yml or .toml")


def load_sources(path: str) -> list[Source]:
    """Read a sources file (YAML or TOML) into sources; every problem is one clear error."""
    doc = _load_document(path)
    if not isinstance(doc, dict):
        raise UnweatherError(f"sources file {path} must be a mapping with a 'sources' list")
    unknown = set(doc) - {"sources", "cameras", "defaults"}
    if unknown:
        raise UnweatherError(f"sources file {path}: unknown top-level key(s) {sorted(unknown)}; "
                             "expected 'sources' (or 'cameras') and optional 'defaults'")
    entries = doc.get("sources", doc.get("cameras"))
    if not isinstance(entries, list) or not entries:
        raise UnweatherError(f"sources file {path} needs a non-empty 'sources' list")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UnweatherError(f"sources file {path}: 'defaults' must be a mapping of options")
    base = os.path.dirname(os.path.abspath(path))
    sources = []
    for i, entry in enumerate(entries):
        where = f"sources file {path}, entry {i + 1}"
        if not isinstance(entry, dict):
            raise UnweatherError(f"{where} must be a mapping with 'name' and 'url' or 'path'")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise UnweatherError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")
        if ("url" in entry) == ("path" in entry):
            raise UnweatherError(f"{where} needs exactly one of 'url' or 'path'")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise UnweatherError(f"{where}: 'name' must be 1-64 letters, digits, '.', '_' or '-', "
                                 f"starting with a letter or digit (got {name!r})")
        if "url" in entry:
            target = str(entry["url"])
            if not is_url(target):
                raise UnweatherError(f"{where}: 'url' {redact(target)} is not a URL (use 'path' for files)")
        else:
            target = os.path.join(base, os.path.expanduser(str(entry["path"])))
        output = entry.get("output")
        if output is not None:
            output = str(output)
            if not is_url(output):
                keep_slash = output.endswith(("/", os.sep))
                output = os.path.join(base, os.path.expanduser(output))
                if keep_slash and not output.endswith(os.sep):
                    output += os.sep
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise UnweatherError(f"{where}: 'options' must be a mapping")
        sources.append(Source(name=name, input=target, output=output, options={**defaults, **options}))
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UnweatherError(f"sources file {path}: duplicate name(s) {duplicates}")
    return sources


def resolve_inputs(inputs: Sequence[str | Source]) -> list[Source]:
    """Sources from `Source`s, sources files (.yaml/.yml/.toml), files, folders and URLs, in order."""
    sources: list[Source] = []
    for item in inputs:
        if isinstance(item, Source):
            sources.append(item)
        elif is_sources_file(str(item)):
            sources += load_sources(str(item))
        else:
            sources += expand_inputs([str(item)])
    return sources


def is_sources_file(path: str) -> bool:
    """Whether `path` names a sources file (by its extension: .yaml, .yml or .toml)."""
    return not is_url(path) and path.lower().endswith((".yaml", ".yml", ".toml"))


def output_path(source: Source, output_dir: str) -> str:
    """Where a source's restored file goes: its own `output`, or `output_dir/NAME.EXT`: the input's EXT
    when the pipeline writes that container, else .mkv (see `unweather.media.video_output_extension`)."""
    if source.output and not source.output.endswith(("/", os.sep)):
        return source.output
    folder = source.output or output_dir
    return os.path.join(folder, source.name + video_output_extension(source.input))


def apply_options(config: Any, options: Mapping[str, Any]) -> Any:
    """A copy of the dataclass `config` with `options` set; unknown names are one clear error."""
    if not options:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UnweatherError(f"unknown option(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(config, **options)
